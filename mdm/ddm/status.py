"""Status intake: validate a DDM status report, merge it into the device's stored status, update facts.

Rules (declarative/protocol/statusreport.yaml and declarative/status/*.yaml):
- StatusItems is a nested dictionary; "device.operating-system.version" is StatusItems.device.
  operating-system.version. Known items are type-checked; unknown items are kept but ignored.
- Incremental reports replace the items they contain. Array items merge element by element (by
  ``identifier``); an element with ``_removed: true`` is deleted. ``FullReport: true`` replaces everything.
- A report that cannot be read as a whole (no Data, not JSON, not a JSON object, nested too deep,
  StatusItems not a dictionary) raises StatusReportError before anything is stored (the endpoint answers
  400). Anything smaller that is malformed - one known item of the wrong shape, one bad declaration entry,
  one bad Errors entry, a non-boolean FullReport - is left out and logged, and the rest of the report is
  stored: one odd item must not throw away the device's whole status.
- A report naming one of our declarations that the device was never given is refused (403). "Given"
  means: in its current set, in the last declaration-items manifest it fetched (``served_identifiers``:
  the set it held before the set changed), or already in its stored status.
"""
from __future__ import annotations

import copy
import json
import logging
import re
from dataclasses import dataclass
from itertools import accumulate

from flask import current_app

from ..extensions import db
from ..models import utcnow
from ..signals import device_facts_changed
from .state_models import DeclarationSet, DeviceStatus, StatusReport

log = logging.getLogger(__name__)

DEFAULT_REPORTS_KEPT = 20
DECLARATION_KINDS = ("activations", "configurations", "assets", "management")
VALID_STATES = ("unknown", "invalid", "valid")
# Devices also send a user-channel push token in status; it is a secret and is not stored.
_SECRET_PATHS = {"management.push-token"}
# Real reports nest about 8 levels (StatusItems > management > declarations > kind > entry > reasons > ...).
MAX_JSON_DEPTH = 32
# Every declaration this server builds has an identifier in this namespace (mdm/ddm/declarations.py).
OUR_IDENTIFIER_PREFIX = "mdm."
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_BRACKET_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class StatusReportError(ValueError):
    """The report is malformed; the message says why."""


class ForeignDeclarationError(StatusReportError):
    """The report names a declaration of ours that this device was never given (HTTP 403)."""


def json_depth(data: bytes) -> int:
    """The deepest [ / { nesting of a JSON text, counted without parsing (no recursion): strings are cut
    out first so brackets inside them do not count."""
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    return max(accumulate(_BRACKET_STEP[b] for b in brackets))


# ---- known item validators ------------------------------------------------------------------------
def _string(name, value):
    if not isinstance(value, str):
        raise StatusReportError(f"{name} must be a string")


def _dict_with(required: dict, optional: dict | None = None):
    def check(name, value):
        if not isinstance(value, dict):
            raise StatusReportError(f"{name} must be a dictionary")
        for key, kind in required.items():
            if key not in value:
                raise StatusReportError(f"{name} is missing {key}")
        for key, kind in {**required, **(optional or {})}.items():
            if key in value and not _is(value[key], kind):
                raise StatusReportError(f"{name}.{key} must be {kind.__name__}")
    return check


def _is(value, kind) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _install_reason(name, value):
    _dict_with({"reason": list}, {"declaration-id": str})(name, value)
    if not all(isinstance(r, str) for r in value["reason"]):
        raise StatusReportError(f"{name}.reason must be a list of strings")


def _management_declarations(name, value):
    if not isinstance(value, dict):
        raise StatusReportError(f"{name} must be a dictionary")
    for kind in DECLARATION_KINDS:
        entries = value.get(kind, [])
        if not isinstance(entries, list):
            raise StatusReportError(f"{name}.{kind} must be an array")
        for i, entry in enumerate(entries):
            where = f"{name}.{kind}[{i}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("identifier"), str):
                raise StatusReportError(f"{where} must be a dictionary with a string identifier")
            if entry.get("_removed") is True:
                continue
            if not isinstance(entry.get("server-token"), str):
                raise StatusReportError(f"{where}.server-token must be a string")
            if not isinstance(entry.get("active"), bool):
                raise StatusReportError(f"{where}.active must be a boolean")
            if entry.get("valid") not in VALID_STATES:
                raise StatusReportError(f"{where}.valid must be one of {', '.join(VALID_STATES)}")
            reasons = entry.get("reasons", [])
            if not isinstance(reasons, list) or not all(
                    isinstance(r, dict) and isinstance(r.get("code"), str) for r in reasons):
                raise StatusReportError(f"{where}.reasons must be an array of dictionaries with a code")


KNOWN_ITEMS = {
    "device.model.identifier": _string,
    "device.operating-system.version": _string,
    "device.operating-system.build-version": _string,
    "device.operating-system.supplemental.build-version": _string,
    "device.operating-system.supplemental.extra-version": _string,
    "management.declarations": _management_declarations,
    "softwareupdate.beta-enrollment": _string,
    "softwareupdate.device-id": _string,
    "softwareupdate.install-state": _string,
    "softwareupdate.pending-version": _dict_with({"os-version": str, "build-version": str}),
    "softwareupdate.failure-reason": _dict_with({"count": int}, {"reason": str, "timestamp": str}),
    "softwareupdate.install-reason": _install_reason,
}


# ---- parsing ----------------------------------------------------------------------------------------
def parse_report(data: bytes | None) -> dict:
    """The decoded report with malformed parts left out (see ``read_report``). Raises StatusReportError."""
    return read_report(data)[0]


def read_report(data: bytes | None) -> tuple[dict, list[str]]:
    """(the decoded report with every malformed part left out, why each part was left out). Raises
    StatusReportError only when the report as a whole is unreadable."""
    if not data:
        raise StatusReportError("no Data")
    if not isinstance(data, bytes):
        raise StatusReportError("Data must be bytes")
    # Checked before json.loads, whose C parser recurses: a deep body never reaches it (or _clean_tree).
    if json_depth(data) > MAX_JSON_DEPTH:
        raise StatusReportError(f"Data nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        report = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StatusReportError(f"Data is not JSON ({exc.__class__.__name__})") from None
    except RecursionError:
        raise StatusReportError("Data nested too deeply") from None
    if not isinstance(report, dict):
        raise StatusReportError("report must be a JSON object")
    items = report.get("StatusItems")
    if not isinstance(items, dict):
        raise StatusReportError("StatusItems must be a dictionary")
    dropped: list[str] = []
    report = {**report, "StatusItems": _clean_tree(items, "", dropped), "Errors": _clean_errors(report, dropped)}
    if "FullReport" in report and not isinstance(report["FullReport"], bool):
        dropped.append("FullReport must be a boolean (taken as an incremental report)")
        del report["FullReport"]
    return report, dropped


def _clean_errors(report: dict, dropped: list[str]) -> list:
    errors = report.get("Errors", [])
    if not isinstance(errors, list):
        dropped.append("Errors must be an array")
        return []
    kept = []
    for i, error in enumerate(errors):
        if not isinstance(error, dict) or not isinstance(error.get("StatusItem"), str):
            dropped.append(f"Errors[{i}] must be a dictionary with a StatusItem")
            continue
        reasons = error.get("Reasons", [])
        if not isinstance(reasons, list) or not all(isinstance(r, dict) and isinstance(r.get("Code"), str)
                                                    for r in reasons):
            dropped.append(f"Errors[{i}].Reasons must be an array of dictionaries with a Code")
            continue
        kept.append(error)
    return kept


def _clean_tree(node: dict, prefix: str, dropped: list[str]) -> dict:
    """``node`` without the known items that fail their check (each reason appended to ``dropped``)."""
    out = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if name == "management.declarations":
            value = _clean_declarations(name, value, dropped)
            if value is not None:
                out[key] = value
            continue
        check = KNOWN_ITEMS.get(name)
        if check is not None:
            try:
                check(name, value)
            except StatusReportError as exc:
                dropped.append(str(exc))
                continue
        elif isinstance(value, dict):
            value = _clean_tree(value, name + ".", dropped)
        out[key] = value
    return out


def _clean_declarations(name: str, value, dropped: list[str]) -> dict | None:
    """The declarations item with each malformed entry (or kind) left out; None when it is not a dictionary."""
    if not isinstance(value, dict):
        dropped.append(f"{name} must be a dictionary")
        return None
    out = {key: entries for key, entries in value.items() if key not in DECLARATION_KINDS}
    for kind in DECLARATION_KINDS:
        if kind not in value:
            continue
        entries = value[kind]
        if not isinstance(entries, list):
            dropped.append(f"{name}.{kind} must be an array")
            continue
        kept = []
        for i, entry in enumerate(entries):
            try:
                _management_declarations(name, {kind: [entry]})
            except StatusReportError as exc:
                dropped.append(str(exc).replace(f"{kind}[0]", f"{kind}[{i}]"))
                continue
            kept.append(entry)
        out[kind] = kept
    return out


def _redact(node: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if name in _SECRET_PATHS:
            continue
        out[key] = _redact(value, name + ".") if isinstance(value, dict) and name not in KNOWN_ITEMS else value
    return out


# ---- merging ----------------------------------------------------------------------------------------
def merge(stored: dict, incoming: dict, prefix: str = "") -> dict:
    """Incremental merge: known items are replaced whole; arrays merge by identifier with _removed."""
    result = copy.deepcopy(stored)
    for key, value in incoming.items():
        name = f"{prefix}{key}"
        if name == "management.declarations":
            result[key] = _merge_declarations(result.get(key) or {}, value)
        elif name in KNOWN_ITEMS or not isinstance(value, (dict, list)):
            result[key] = copy.deepcopy(value)
        elif isinstance(value, dict):
            result[key] = merge(result.get(key) if isinstance(result.get(key), dict) else {}, value, name + ".")
        else:
            result[key] = _merge_array(result.get(key) if isinstance(result.get(key), list) else [], value)
    return result


def _merge_declarations(stored: dict, incoming: dict) -> dict:
    result = copy.deepcopy(stored)
    for kind in DECLARATION_KINDS:
        if kind in incoming:
            result[kind] = _merge_array(result.get(kind) or [], incoming[kind])
        result.setdefault(kind, [])
    return result


def _merge_array(stored: list, incoming: list) -> list:
    if not all(isinstance(e, dict) and "identifier" in e for e in incoming):
        return _without_removed(incoming)   # no element identity: the array is replaced
    by_id = {e.get("identifier"): e for e in stored if isinstance(e, dict)}
    for element in incoming:
        if element.get("_removed") is True:
            by_id.pop(element["identifier"], None)
        else:
            by_id[element["identifier"]] = copy.deepcopy(element)
    return list(by_id.values())


def _without_removed(value):
    if isinstance(value, list):
        return [_without_removed(e) for e in value if not (isinstance(e, dict) and e.get("_removed") is True)]
    if isinstance(value, dict):
        return {k: _without_removed(v) for k, v in value.items()}
    return value


def item(tree: dict, name: str):
    """The value of a dotted status item in a StatusItems tree, or None."""
    node = tree
    for part in _split(name):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _split(name: str) -> list[str]:
    # "device.operating-system.supplemental.build-version" -> tree path; "management.declarations" too.
    return name.split(".")


def flatten_declarations(tree: dict, declaration_set: DeclarationSet | None) -> dict:
    """identifier -> {kind, server_token, active, valid, reasons, current}; current = the token the device
    reports is the one in the set we serve it now."""
    ours = {d["Identifier"]: d["ServerToken"] for d in (declaration_set.declarations if declaration_set else [])}
    flat = {}
    for kind in DECLARATION_KINDS:
        for entry in (item(tree, "management.declarations") or {}).get(kind, []):
            identifier = entry["identifier"]
            flat[identifier] = {
                "kind": kind, "server_token": entry.get("server-token"), "active": entry.get("active"),
                "valid": entry.get("valid"), "reasons": entry.get("reasons", []),
                "current": ours.get(identifier) == entry.get("server-token"),
            }
    return flat


# ---- intake -----------------------------------------------------------------------------------------
_FACTS = (("device.operating-system.version", "os_version"),
          ("device.operating-system.build-version", "build_version"),
          ("device.model.identifier", "product_name"),
          ("softwareupdate.device-id", "software_update_device_id"))


@dataclass(frozen=True)
class Intake:
    """What one status report changed: the merged status, and which device facts moved."""
    status: DeviceStatus
    changed_facts: set[str]


def ingest(device, data: bytes | None) -> Intake:
    """Store one status report (raw, bounded) and the merged status; update device facts (sending
    ``device_facts_changed``). Flushes; the caller hands ``changed_facts`` to the DDM spine
    (``spine.status_received``) and the edge commits. Malformed parts are left out and logged
    (``read_report``)."""
    report, dropped = read_report(data)
    for reason in dropped:
        log.warning("status report from device %s: ignored a malformed part: %s", device.id, reason[:300])
    items = _redact(report["StatusItems"])
    full = bool(report.get("FullReport", False))
    now = utcnow()

    status = db.session.get(DeviceStatus, device.id)
    _check_declarations_are_its_own(device, items, status)
    if status is None:
        status = DeviceStatus(device_id=device.id, items={}, errors=[], declarations={}, report_count=0)
        db.session.add(status)
    status.items = _without_removed(items) if full else merge(status.items or {}, items)
    status.errors = report.get("Errors", [])
    status.declarations = flatten_declarations(status.items, db.session.get(DeclarationSet, device.id))
    status.last_report_at = now
    status.report_count = (status.report_count or 0) + 1
    if full:
        status.last_full_report_at = now
    _keep_raw(device, {**report, "StatusItems": items}, full, now)

    changed = set()
    for name, attribute in _FACTS:
        value = item(items, name)
        if isinstance(value, str) and value and getattr(device, attribute) != value:
            setattr(device, attribute, value)
            changed.add(attribute)
    db.session.flush()
    if changed:
        device_facts_changed.send(device, changed=changed)
    return Intake(status, changed)


def _check_declarations_are_its_own(device, items: dict, status: DeviceStatus | None) -> None:
    """Refuse a report naming one of our declarations that is neither in this device's set, nor in the
    manifest it last fetched (the set it held before a change), nor already in its status: that is another
    device's declaration (identifiers are per policy, shared by the devices the policy reaches), and
    storing it would describe declarations this device never had. Foreign identifiers (not ours) and
    removals are harmless and pass."""
    reported = item(items, "management.declarations")
    if not isinstance(reported, dict):
        return
    declaration_set = db.session.get(DeclarationSet, device.id)
    served = {d["Identifier"] for d in (declaration_set.declarations if declaration_set else [])}
    if declaration_set is not None:
        served.update(i for i in (declaration_set.served_identifiers or []) if isinstance(i, str))
    known = set((status.declarations or {}) if status is not None else ())
    for kind in DECLARATION_KINDS:
        for entry in reported.get(kind, []):
            identifier = entry["identifier"]
            if entry.get("_removed") is True or not identifier.startswith(OUR_IDENTIFIER_PREFIX):
                continue
            if identifier not in served and identifier not in known:
                raise ForeignDeclarationError(f"declaration {identifier[:80]!r} was not served to this device")


def _keep_raw(device, report: dict, full: bool, now) -> None:
    db.session.add(StatusReport(device_id=device.id, received_at=now, full_report=full,
                                body=json.dumps(report, separators=(",", ":"), ensure_ascii=False)))
    db.session.flush()
    kept = int(current_app.config.get("DDM_STATUS_REPORTS_KEPT", DEFAULT_REPORTS_KEPT))
    old_ids = [r.id for r in StatusReport.query.with_entities(StatusReport.id)
               .filter_by(device_id=device.id).order_by(StatusReport.id.desc()).offset(kept)]
    if old_ids:
        StatusReport.query.filter(StatusReport.id.in_(old_ids)).delete(synchronize_session=False)
