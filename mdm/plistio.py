"""Strict parsing of the XML property lists devices send.

Devices send XML plists. We refuse, before parsing: empty bodies, binary plists, anything with a
DOCTYPE carrying an internal subset or entity declarations (billion-laughs and XXE), and bodies
over the size limit (checked by the caller on Content-Length and on the bytes read).
"""
from __future__ import annotations

import plistlib
import re

MAX_DEPTH = 64

# Apple's own header is allowed; any internal subset ("[") or ENTITY declaration is not.
_DOCTYPE = re.compile(rb"<!DOCTYPE[^>\[]*(\[|>)", re.IGNORECASE)


class PlistError(ValueError):
    """The body is not an acceptable plist. The message says why, for the 400 answer and the log."""


def loads_xml(body: bytes) -> dict:
    if not body or not body.strip():
        raise PlistError("empty body")
    if body.startswith(b"bplist"):
        raise PlistError("binary plist where an XML plist is expected")
    head = body.lstrip()[:1]
    if head != b"<":
        raise PlistError("not an XML property list")
    if b"<!ENTITY" in body.upper():
        raise PlistError("entity declarations are not allowed")
    for match in _DOCTYPE.finditer(body):
        if match.group(1) == b"[":
            raise PlistError("DOCTYPE with an internal subset is not allowed")
    try:
        value = plistlib.loads(body, fmt=plistlib.FMT_XML)
    except RecursionError:
        raise PlistError("plist nested too deeply") from None
    except Exception as exc:  # plistlib raises several types (ExpatError, ValueError, ...)
        raise PlistError(f"malformed plist: {exc}") from None
    if not isinstance(value, dict):
        raise PlistError("top level of the plist must be a dictionary")
    _check_depth(value, 0)
    return value


def _check_depth(value, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise PlistError("plist nested too deeply")
    if isinstance(value, dict):
        for item in value.values():
            _check_depth(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_depth(item, depth + 1)


def dumps(value: dict) -> bytes:
    return plistlib.dumps(value, fmt=plistlib.FMT_XML, sort_keys=True)


def require(message: dict, key: str, kind: type | tuple = str):
    """A required key of the given type, or PlistError naming it."""
    if key not in message:
        raise PlistError(f"missing key {key}")
    value = message[key]
    if not isinstance(value, kind) or (kind is str and not value) or (isinstance(value, bool) and kind is int):
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise PlistError(f"key {key} must be a non-empty {name}" if kind is str else f"key {key} must be {name}")
    return value


def optional(message: dict, key: str, kind: type | tuple = str):
    if key not in message:
        return None
    return require(message, key, kind)
