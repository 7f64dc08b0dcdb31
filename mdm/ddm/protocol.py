"""The DeclarativeManagement check-in endpoints, called by the check-in handler with the decoded Data.

tokens -> TokensResponse; declaration-items -> DeclarationItemsResponse; declaration/<type>/<identifier>
-> the declaration (404 when it is not in this device's set); status -> status intake, 200 empty body
(400 when unreadable as a whole, 403 when it names another device's declarations; malformed items are
left out and the rest stored, mdm/ddm/status.py). Status refusals are audited (``ddm.status_refused``).
declaration-items also records the identifiers it served (``served_identifiers``): the set the device
holds, whose status it may still report after the set changes.
``serve_unchanged`` is the read path of tokens and declaration-items: when serving would store nothing
(the stored set equals the one computed now, notes included, and for declaration-items the served
identifiers are already recorded) it answers from the stored set inside the caller's read transaction;
otherwise it returns None and the caller takes the write path above, which decides again and stores.
Policy state never causes a 4xx/5xx here: the set is computed without what cannot be computed.
A status report's changed facts go to the DDM spine (``spine.status_received``). The check-in
(mdm/protocol/views.py, the edge) commits once after the reply is decided; nothing here commits except the
audit of a refused status report, which must outlive the intake's rollback. The DDM room registers
``handle_declarative_management`` and ``serve_unchanged`` with the core in its ``init_app``.
"""
from __future__ import annotations

import json
import logging
from types import SimpleNamespace

from sqlalchemy import bindparam, exists, select

from ..extensions import db
from ..models import Device, audit, group_members
from . import spine, sync
from . import status as status_intake
from .enforcement_models import EnforcementBinding
from .models import DevicePatchTarget, PatchPolicy
from .plan import PatchPlan
from .policies import SETTING_FIELDS, PolicySettings
from .state_models import DeclarationSet

log = logging.getLogger(__name__)

JSON = "application/json"


def _json(value: dict) -> tuple[int, bytes, str]:
    return 200, json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode(), JSON


def _refuse(code: int, device, endpoint: str, reason: str) -> tuple[int, bytes, str]:
    log.warning("DeclarativeManagement %s from device %s refused (%d): %s", endpoint[:80], device.id, code, reason)
    return code, reason.encode(), "text/plain; charset=utf-8"


def _audit_status_refusal(device, code: int, reason: str) -> None:
    audit("ddm.status_refused", actor="device", object_type="device", object_id=device.udid,
          detail=f"{code}: {reason[:500]}")
    db.session.commit()


READ_PATH_ENDPOINTS = ("tokens", "declaration-items")

# One statement for the read path: the device's facts the set depends on and its last-seen time, the stored
# set, and the stored plan (its target row and policy), as ``compute_set`` would read them one by one.
_devices, _sets = Device.__table__, DeclarationSet.__table__
_targets, _policies = DevicePatchTarget.__table__, PatchPolicy.__table__
_FACTS = tuple(_devices.c[name] for name in sync._DeviceFacts.__slots__)
_TARGET_FIELDS = ("policy_id", "binding", "target_version", "target_build", "deadline_local", "deadline_utc",
                  "reason", "compliant", "conflicts", "deadline_anchor_version", "deadline_note")
_SET_FIELDS = ("declarations_token", "notes", "declarations", "changed_at", "served_identifiers")
# Whether a Software Update Enforcement policy is bound to the device, directly or through one of its
# groups: only then are its enforcements read (``sync.enforcements_for``), so the usual device costs one query.
_bindings = EnforcementBinding.__table__
_ENFORCED = exists(select(_bindings.c.id).where(
    (_bindings.c.device_id == _devices.c.id)
    | _bindings.c.group_id.in_(select(group_members.c.group_id).where(group_members.c.device_id == _devices.c.id))))
_READ = (select(*_FACTS, _devices.c.last_seen_at, *(_sets.c[f] for f in _SET_FIELDS),
                *(_targets.c[f] for f in _TARGET_FIELDS), _policies.c.name.label("policy_name"),
                _policies.c.beta_programs, *(_policies.c[f] for f in SETTING_FIELDS if f != "beta_programs"),
                _ENFORCED.label("enforced"))
         .select_from(_devices.join(_sets, _sets.c.device_id == _devices.c.id)
                      .outerjoin(_targets, _targets.c.device_id == _devices.c.id)
                      .outerjoin(_policies, _policies.c.id == _targets.c.policy_id))
         .where(_devices.c.id == bindparam("device_id"), _devices.c.udid == bindparam("udid")))

# (device facts, plan, enforcements) -> (DeclarationsToken, notes): ``sync.build_set`` is a function of exactly these
# (the bulk refresh shares sets on the same key), so an unchanged device never rebuilds its declarations.
_SET_CACHE_SIZE = 4096
_set_cache: dict[tuple, tuple[str, list[str]]] = {}


def serve_unchanged(device_id: int, udid: str, endpoint: str, now, connection=None) -> tuple[int, bytes, str] | None:
    """The answer to ``tokens`` or ``declaration-items`` when giving it would store nothing: the device was
    seen under a minute ago, its stored set equals the one computed now (token and notes) and, for
    declaration-items, the served identifiers are already recorded. None when anything would be stored
    (or for another endpoint, or an unknown device): then take the write path. Reads only, one statement
    (through ``connection``, a Core connection in a read transaction, when given; else the session, which
    the caller runs in ``extensions.read_only``)."""
    if endpoint not in READ_PATH_ENDPOINTS:
        return None
    row = (connection or db.session).execute(_READ, {"device_id": device_id, "udid": udid}).mappings().one_or_none()
    if row is None or Device.seen_is_due(row["last_seen_at"], now):
        return None
    device = sync._DeviceFacts(tuple(row[c.name] for c in _FACTS))
    plan = _stored_plan(row) if device.runs_ios else None
    if plan is False:
        return None
    enforcements, why = sync.enforcements_for([device_id]) if row["enforced"] else ({}, None)
    mine = enforcements.get(device_id, ())
    key = (device.facts_key(), plan, mine, why)
    computed = _set_cache.get(key)
    if computed is None:
        built = sync.build_set(device, plan, [why] if why else [], mine)
        computed = (built.token, built.notes)
        if len(_set_cache) >= _SET_CACHE_SIZE:
            _set_cache.clear()
        _set_cache[key] = computed
    if computed[0] != row["declarations_token"] or computed[1] != row["notes"]:
        return None
    stored = SimpleNamespace(**{f: row[f] for f in _SET_FIELDS})
    if endpoint == "tokens":
        return _json({"SyncTokens": sync.sync_tokens(stored)})
    if stored.served_identifiers != sorted(d["Identifier"] for d in stored.declarations):
        return None
    return _json(sync.manifest(stored))


def _stored_plan(row) -> PatchPlan | None | bool:
    """The stored plan as ``plan.patch_plan_for_device`` builds it (None: no policy reaches the device);
    False when it cannot be built here (the write path then computes it and notes why)."""
    if row["policy_id"] is None or row["policy_name"] is None:
        return None
    try:
        values = {f: row[f] for f in SETTING_FIELDS if f != "beta_programs"}
        values["beta_programs"] = tuple(tuple(p) for p in (row["beta_programs"] or ()))
        plan = PatchPlan(policy_id=row["policy_id"], policy_name=row["policy_name"], binding=row["binding"],
                         settings=PolicySettings(**values), target_version=row["target_version"],
                         target_build=row["target_build"], deadline_local=row["deadline_local"],
                         deadline_utc=row["deadline_utc"], reason=row["reason"], compliant=bool(row["compliant"]),
                         conflicts=tuple(row["conflicts"] or ()),
                         deadline_anchor_version=row["deadline_anchor_version"], deadline_note=row["deadline_note"])
        hash(plan)
        return plan
    except Exception:    # unhashable or unexpected stored values: let the write path decide
        return False


def handle_declarative_management(device, endpoint: str, data: bytes | None) -> tuple[int, bytes, str]:
    """(HTTP status, body, content type) for one DeclarativeManagement check-in. The caller commits."""
    endpoint = endpoint or ""
    if endpoint == "tokens":
        row = sync.current_set(device)
        return _json({"SyncTokens": sync.sync_tokens(row)})
    if endpoint == "declaration-items":
        row = sync.current_set(device)
        identifiers = sorted(d["Identifier"] for d in row.declarations)
        if row.served_identifiers != identifiers:
            row.served_identifiers = identifiers
        return _json(sync.manifest(row))
    if endpoint.startswith("declaration/"):
        parts = endpoint.split("/", 2)
        if len(parts) != 3 or not parts[1] or not parts[2]:
            return _refuse(400, device, endpoint, "declaration endpoint must be declaration/<type>/<identifier>")
        # Serve from the stored set: the one whose manifest the device just fetched.
        row = sync.stored_set(device)
        item = sync.find_declaration(row, parts[1], parts[2])
        if item is None:
            return _refuse(404, device, endpoint, "declaration not in this device's set")
        return _json(item)
    if endpoint == "status":
        try:
            intake = status_intake.ingest(device, data)
        except status_intake.ForeignDeclarationError as exc:
            db.session.rollback()
            _audit_status_refusal(device, 403, str(exc))
            return _refuse(403, device, endpoint, f"status report refused: {exc}")
        except status_intake.StatusReportError as exc:
            db.session.rollback()
            _audit_status_refusal(device, 400, str(exc))
            return _refuse(400, device, endpoint, f"status report refused: {exc}")
        spine.status_received(device, intake.changed_facts)
        return 200, b"", JSON
    return _refuse(400, device, endpoint, "unknown DeclarativeManagement endpoint")
