"""Strict parsing of the XML property lists devices send.

Devices send XML plists. ``loads_xml`` is our own small plist reader on top of expat (C, streaming),
because the standard library's reader accepts too much and checks nothing while it builds:

- empty bodies, binary plists (which may also be cyclic through their object references) and anything
  that is not XML are refused before parsing;
- a DOCTYPE with an internal subset and any entity declaration are refused (billion laughs, XXE), both by
  a byte scan and by expat handlers (which also catch them in UTF-16 bodies);
- nesting is counted while parsing, iteratively, and refused past ``MAX_DEPTH`` dictionaries/arrays:
  a 100,000-deep body never builds a deep object nor reaches anything recursive;
- values are checked as they are read: integers must fit in 64 bits (anything larger never reaches the
  database), reals must be finite, dates must be complete ISO 8601 UTC dates, ``<data>`` must be strict
  base64, elements outside the plist DTD are refused;
- trailing junk after ``</plist>`` is refused (expat: "junk after document element").

Size limits are checked by the caller on Content-Length and on the bytes read.
"""
from __future__ import annotations

import binascii
import math
import plistlib
import re
from datetime import datetime
from xml.parsers import expat

MAX_DEPTH = 64
# CFNumber holds signed 64-bit integers (and unsigned 64-bit in binary plists); Apple never sends more,
# and our integer columns are signed 64-bit, so that is the range we accept.
MIN_INTEGER, MAX_INTEGER = -(2 ** 63), 2 ** 63 - 1

# Apple's own header is allowed; any internal subset ("[") or ENTITY declaration is not.
_DOCTYPE = re.compile(rb"<!DOCTYPE[^>\[]*(\[|>)", re.IGNORECASE)
_INTEGER = re.compile(r"[+-]?[0-9]{1,20}|0[xX][0-9a-fA-F]{1,16}")
_REAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?")
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})Z")
_BASE64_WHITESPACE = re.compile(r"[ \t\r\n]+")
_CONTAINERS = ("dict", "array")
_SCALARS = ("key", "string", "data", "date", "integer", "real", "true", "false")


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
    value = _Reader().parse(body)
    if not isinstance(value, dict):
        raise PlistError("top level of the plist must be a dictionary")
    return value


class _Reader:
    """Builds the value with an explicit stack of open containers: no recursion, depth known at all times."""

    def __init__(self):
        self.stack: list = []          # open dicts and lists
        self.keys: list = []           # per open dict: the pending key (None when a key is expected)
        self.root = _NOTHING
        self.text: list[str] = []
        self.in_plist = False
        self.scalar: str | None = None

    def parse(self, body: bytes):
        parser = expat.ParserCreate()
        parser.StartDoctypeDeclHandler = self._doctype
        parser.EntityDeclHandler = self._entity
        parser.ExternalEntityRefHandler = self._external_entity
        # An undeclared entity is skipped silently when a DOCTYPE names an external subset: refuse it.
        parser.SkippedEntityHandler = self._skipped_entity
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._characters
        try:
            parser.Parse(body, True)
        except PlistError:
            raise
        except expat.ExpatError as exc:
            raise PlistError(f"malformed plist: {expat.errors.messages.get(exc.code, 'XML error')} "
                             f"at line {exc.lineno}") from None
        if self.root is _NOTHING:
            raise PlistError("malformed plist: no value")
        return self.root

    # -- handlers --------------------------------------------------------------------------------------
    def _doctype(self, name, sysid, pubid, has_internal_subset):
        if has_internal_subset:
            raise PlistError("DOCTYPE with an internal subset is not allowed")

    def _entity(self, *args):
        raise PlistError("entity declarations are not allowed")

    def _external_entity(self, *args):
        raise PlistError("external entities are not allowed")

    def _skipped_entity(self, name, is_parameter_entity):
        raise PlistError("entity references are not allowed")

    def _start(self, name, attributes):
        if self.scalar is not None:
            raise PlistError(f"malformed plist: <{name}> inside <{self.scalar}>")
        if name == "plist":
            if self.in_plist or self.root is not _NOTHING:
                raise PlistError("malformed plist: nested <plist>")
            self.in_plist = True
            return
        if not self.in_plist:
            raise PlistError(f"malformed plist: <{name}> outside <plist>")
        if name in _CONTAINERS:
            if len(self.stack) >= MAX_DEPTH:
                raise PlistError("plist nested too deeply")
            container = {} if name == "dict" else []
            self._add(container)
            self.stack.append(container)
            self.keys.append(None)
        elif name in _SCALARS:
            self.scalar = name
            self.text = []
        else:
            raise PlistError(f"malformed plist: unknown element <{name[:40]}>")

    def _end(self, name):
        if name == "plist":
            self.in_plist = False
            return
        if name in _CONTAINERS:
            if self.stack and isinstance(self.stack[-1], dict) and self.keys[-1] is not None:
                raise PlistError(f"malformed plist: key {self.keys[-1][:80]!r} has no value")
            self.stack.pop()
            self.keys.pop()
            return
        text = "".join(self.text)
        self.scalar = None
        if name == "key":
            if not self.stack or not isinstance(self.stack[-1], dict) or self.keys[-1] is not None:
                raise PlistError("malformed plist: unexpected <key>")
            self.keys[-1] = text
            return
        self._add(_scalar(name, text))

    def _characters(self, data):
        if self.scalar is not None:
            self.text.append(data)
        elif data.strip():
            raise PlistError("malformed plist: text outside a value")

    def _add(self, value):
        if not self.stack:
            if self.root is not _NOTHING:
                raise PlistError("malformed plist: more than one top-level value")
            self.root = value
            return
        parent = self.stack[-1]
        if isinstance(parent, list):
            parent.append(value)
            return
        key = self.keys[-1]
        if key is None:
            raise PlistError("malformed plist: dictionary value without a <key>")
        parent[key] = value
        self.keys[-1] = None


_NOTHING = object()


def _scalar(name: str, text: str):
    if name == "string":
        return text
    if name == "true":
        return True
    if name == "false":
        return False
    if name == "integer":
        text = text.strip()
        if not _INTEGER.fullmatch(text):
            raise PlistError(f"malformed plist: {text[:40]!r} is not an integer")
        value = int(text, 16) if text[:2] in ("0x", "0X") else int(text)
        if not MIN_INTEGER <= value <= MAX_INTEGER:
            raise PlistError("integer out of the 64-bit range")
        return value
    if name == "real":
        text = text.strip()
        if not _REAL.fullmatch(text):
            raise PlistError(f"malformed plist: {text[:40]!r} is not a finite real")
        value = float(text)
        if not math.isfinite(value):
            raise PlistError("real out of range")
        return value
    if name == "date":
        match = _DATE.fullmatch(text.strip())
        if not match:
            raise PlistError(f"invalid date {text[:40]!r}: expected YYYY-MM-DDTHH:MM:SSZ")
        try:
            return datetime(*(int(part) for part in match.groups()))
        except ValueError:
            raise PlistError(f"invalid date {text[:40]!r}") from None
    if name == "data":
        try:
            return binascii.a2b_base64(_BASE64_WHITESPACE.sub("", text).encode("ascii"), strict_mode=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise PlistError("invalid base64 in <data>") from None
    raise PlistError(f"malformed plist: unknown element <{name}>")   # pragma: no cover


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
