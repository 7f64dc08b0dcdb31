"""Validate what the server emits against Apple's own YAML schemas in ../shared/apple-schema.

Checks: unknown keys, required keys, types, rangelist, range, and per-OS support of each key
(introduced 'n/a' or later than the device's OS, and supervised-only keys on unsupervised devices).
Returns a list of human-readable problems; an empty list means valid.
"""
from __future__ import annotations

import datetime as dt
import functools
from pathlib import Path

import yaml

SCHEMA_ROOT = Path(__file__).resolve().parents[3] / "shared" / "apple-schema"


@functools.lru_cache(maxsize=None)
def load(relative: str) -> dict:
    return yaml.safe_load((SCHEMA_ROOT / relative).read_text())


_TYPES = {
    "<string>": str, "<integer>": int, "<boolean>": bool, "<real>": (int, float),
    "<date>": (dt.datetime, str), "<data>": bytes, "<dictionary>": dict, "<array>": list,
}


def _version_tuple(v: str) -> tuple:
    return tuple(int(p) for p in str(v).split(".") if p.isdigit())


class Context:
    def __init__(self, os_name="iOS", os_version="18.0", supervised=True, declaration=False):
        self.os_name, self.os_version, self.supervised, self.declaration = os_name, os_version, supervised, declaration


def _supported(spec: dict, ctx: Context) -> str | None:
    """Why this key may not be sent to this device, or None when it may."""
    os_spec = (spec.get("supportedOS") or {}).get(ctx.os_name)
    if not os_spec:
        return None
    introduced = os_spec.get("introduced")
    if introduced == "n/a":
        return f"not supported on {ctx.os_name}"
    if introduced and _version_tuple(ctx.os_version) < _version_tuple(introduced):
        return f"needs {ctx.os_name} {introduced}"
    if not ctx.supervised:
        if os_spec.get("supervised") is True:
            return "supervised devices only"
        enrollments = os_spec.get("allowed-enrollments")
        if ctx.declaration and enrollments is not None and "device" not in enrollments:
            return "supervised devices only"
    return None


def validate_keys(value, keys: list, ctx: Context, path: str = "") -> list[str]:
    problems = []
    if not isinstance(value, dict):
        return [f"{path or '<root>'}: expected a dictionary"]
    specs = {k["key"]: k for k in keys}
    wildcard = specs.get("ANY")
    for name, item in value.items():
        spec = specs.get(name) or wildcard
        where = f"{path}.{name}" if path else name
        if spec is None:
            problems.append(f"{where}: key not in Apple's schema")
            continue
        if spec is not wildcard:
            why = _supported(spec, ctx)
            if why:
                problems.append(f"{where}: {why}")
        problems += validate_value(item, spec, ctx, where)
    for spec in keys:
        if spec.get("presence") == "required" and spec["key"] != "ANY" and spec["key"] not in value:
            if _supported(spec, ctx) is None:
                problems.append(f"{path + '.' if path else ''}{spec['key']}: required key missing")
    return problems


def validate_value(item, spec: dict, ctx: Context, where: str) -> list[str]:
    kind = spec.get("type", "<any>")
    expected = _TYPES.get(kind)
    if expected is not None:
        if isinstance(item, bool) and kind in ("<integer>", "<real>"):
            return [f"{where}: expected {kind}, got boolean"]
        if not isinstance(item, expected):
            return [f"{where}: expected {kind}, got {type(item).__name__}"]
    problems = []
    if "rangelist" in spec and not isinstance(item, (list, dict)) and item not in spec["rangelist"]:
        problems.append(f"{where}: {item!r} not in {spec['rangelist']}")
    rng = spec.get("range") or {}
    if isinstance(item, (int, float)) and not isinstance(item, bool):
        if "min" in rng and item < rng["min"]:
            problems.append(f"{where}: {item} below minimum {rng['min']}")
        if "max" in rng and item > rng["max"]:
            problems.append(f"{where}: {item} above maximum {rng['max']}")
    subkeys = spec.get("subkeys")
    if kind == "<dictionary>" and subkeys:
        problems += validate_keys(item, subkeys, ctx, where)
    elif kind == "<array>" and subkeys:
        element = subkeys[0]
        for i, element_value in enumerate(item):
            if "rangelist" in spec and element_value not in spec["rangelist"]:
                problems.append(f"{where}[{i}]: {element_value!r} not in {spec['rangelist']}")
            problems += validate_value(element_value, element, ctx, f"{where}[{i}]")
    return problems


def validate_profile(profile: dict, ctx: Context | None = None) -> list[str]:
    """A configuration profile: top-level keys, then each payload against its payload type schema."""
    ctx = ctx or Context()
    top = load("mdm/profiles/TopLevel.yaml")
    problems = validate_keys(profile, top["payloadkeys"], ctx)
    common = load("mdm/profiles/CommonPayloadKeys.yaml")["payloadkeys"]
    for i, payload in enumerate(profile.get("PayloadContent", [])):
        ptype = payload.get("PayloadType")
        path = SCHEMA_ROOT / "mdm" / "profiles" / f"{ptype}.yaml"
        if not path.exists():
            problems.append(f"PayloadContent[{i}]: no schema for payload type {ptype}")
            continue
        schema = load(f"mdm/profiles/{ptype}.yaml")
        specific = {k["key"] for k in schema["payloadkeys"]}
        keys = schema["payloadkeys"] + [k for k in common if k["key"] not in specific]
        problems += validate_keys(payload, keys, ctx, f"PayloadContent[{i}]({ptype})")
    return problems


def _command_schema(request_type: str) -> dict:
    for path in sorted((SCHEMA_ROOT / "mdm" / "commands").glob("*.yaml")):
        schema = load(f"mdm/commands/{path.name}")
        if schema["payload"].get("requesttype") == request_type:
            return schema
    raise KeyError(f"no schema for command {request_type}")


def validate_command(command_plist: dict, ctx: Context | None = None) -> list[str]:
    """A full command plist: {CommandUUID, Command: {RequestType, ...}}."""
    ctx = ctx or Context()
    problems = []
    if set(command_plist) - {"CommandUUID", "Command"}:
        problems.append(f"unexpected top-level keys {set(command_plist) - {'CommandUUID', 'Command'}}")
    if not isinstance(command_plist.get("CommandUUID"), str):
        problems.append("CommandUUID missing")
    command = dict(command_plist.get("Command") or {})
    request_type = command.pop("RequestType", None)
    schema = _command_schema(request_type)
    problems += validate_keys(command, schema.get("payloadkeys") or [], ctx, request_type)
    return problems


def validate_command_response(request_type: str, response: dict, ctx: Context | None = None) -> list[str]:
    ctx = ctx or Context()
    schema = _command_schema(request_type)
    body = {k: v for k, v in response.items()
            if k not in ("UDID", "CommandUUID", "Status", "ErrorChain", "EnrollmentID", "EnrollmentUserID")}
    return validate_keys(body, schema.get("responsekeys") or [], ctx, request_type + " response")


def _declaration_schema(declaration_type: str) -> dict:
    root = SCHEMA_ROOT / "declarative" / "declarations"
    for path in sorted(root.rglob("*.yaml")):
        schema = load(str(path.relative_to(SCHEMA_ROOT)))
        if schema["payload"].get("declarationtype") == declaration_type:
            return schema
    raise KeyError(f"no schema for declaration type {declaration_type}")


def validate_declaration(declaration: dict, os_name="iOS", os_version="18.0", supervised=True) -> list[str]:
    ctx = Context(os_name, os_version, supervised, declaration=True)
    base = load("declarative/declarations/declarationbase.yaml")
    problems = validate_keys(declaration, base["payloadkeys"], ctx)
    dtype = declaration.get("Type")
    schema = _declaration_schema(dtype)
    why = _supported(schema["payload"], ctx)
    if why:
        problems.append(f"{dtype}: {why}")
    problems += validate_keys(declaration.get("Payload", {}), schema.get("payloadkeys") or [], ctx, "Payload")
    return problems


def validate_checkin(message: dict, ctx: Context | None = None) -> list[str]:
    ctx = ctx or Context()
    mtype = message.get("MessageType")
    for path in sorted((SCHEMA_ROOT / "mdm" / "checkin").glob("*.yaml")):
        schema = load(f"mdm/checkin/{path.name}")
        if schema["payload"].get("requesttype") == mtype:
            return validate_keys(message, schema["payloadkeys"], ctx)
    return [f"no schema for check-in message {mtype}"]


def validate_protocol(name: str, value: dict) -> list[str]:
    """DDM protocol documents: tokensresponse, declarationitemsresponse, statusreport."""
    schema = load(f"declarative/protocol/{name}.yaml")
    return validate_keys(value, schema["payloadkeys"], Context(declaration=True))
