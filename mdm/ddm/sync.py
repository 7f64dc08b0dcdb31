"""Per-device declaration sets, their tokens, and telling devices when their set changed.

``compute_set`` is the one function that turns "what this device should have" into the declarations
and the DeclarationsToken; every endpoint and every refresh goes through it. The DeclarationsToken is
a hash over the (identifier, ServerToken) pairs, so it changes exactly when the set changes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import plistlib
from dataclasses import dataclass, field
from typing import Iterable

from ..extensions import db
from ..models import Command, Device, utcnow
from . import declarations as decl
from .state_models import DeclarationSet

log = logging.getLogger(__name__)

CHUNK = 500

# Manifest section per declaration type prefix (declarationitemsresponse.yaml).
_SECTIONS = (("com.apple.activation.", "Activations"), ("com.apple.configuration.", "Configurations"),
             ("com.apple.asset.", "Assets"), ("com.apple.management.", "Management"))


@dataclass
class ComputedSet:
    declarations: list[dict]                 # each with ServerToken, sorted by Identifier
    token: str
    notes: list[str] = field(default_factory=list)
    restrictions_delay_days: int | None = None
    plan: object = None


def declarations_token(declarations: list[dict]) -> str:
    pairs = sorted((d["Identifier"], d["ServerToken"]) for d in declarations)
    return hashlib.sha256(json.dumps(pairs, separators=(",", ":")).encode()).hexdigest()[:40]


def plan_for(device):
    """The device's stored patch plan, or (None, why) when it cannot be had. Never raises."""
    try:
        from .plan import patch_plan_for_device
    except ModuleNotFoundError as exc:
        if exc.name in ("mdm.ddm.plan",):
            return None, None          # the policy engine is not installed: no policies reach anyone
        raise
    try:
        return patch_plan_for_device(device), None
    except Exception as exc:  # policy state must never break a device's sync
        log.exception("patch plan for device %s could not be computed", device.id)
        return None, f"patch plan could not be computed: {type(exc).__name__}"


def compute_set(device) -> ComputedSet:
    """Everything this device should have: status subscriptions, the patch declarations its plan and
    OS allow, and an activation referencing all configurations. Missing pieces become notes."""
    notes: list[str] = []
    configurations = [decl.status_subscriptions(device)]
    plan = None
    if device.runs_ios:
        plan, why = plan_for(device)
        if why:
            notes.append(why)
    if plan is not None:
        for build in (decl.software_update_settings, decl.enforcement_specific):
            try:
                built = build(device, plan)
            except Exception as exc:  # a half-valid plan still leaves the device a valid set
                log.exception("%s for device %s failed", build.__name__, device.id)
                built = decl.Built(None, [f"{build.__name__}: could not be built ({type(exc).__name__})"])
            configurations.append(built)
        if plan.conflicts:
            notes.append("also reached by: " + ", ".join(plan.conflicts))
    items = []
    for built in configurations:
        notes.extend(built.notes)
        if built.declaration is not None:
            items.append(decl.with_server_token(built.declaration))
    items.append(decl.with_server_token(decl.activation([d["Identifier"] for d in items]).declaration))
    items.sort(key=lambda d: d["Identifier"])
    return ComputedSet(items, declarations_token(items), notes,
                       decl.restrictions_delay_days(device, plan), plan)


def _store(device, computed: ComputedSet, row: DeclarationSet | None) -> tuple[DeclarationSet, bool]:
    if row is None:
        row = DeclarationSet(device_id=device.id, declarations_token=computed.token,
                             declarations=computed.declarations, notes=computed.notes, changed_at=utcnow())
        db.session.add(row)
        return row, True
    if row.notes != computed.notes:
        row.notes = computed.notes
    if row.declarations_token == computed.token:
        return row, False
    row.declarations_token = computed.token
    row.declarations = computed.declarations
    row.changed_at = utcnow()
    return row, True


def current_set(device) -> DeclarationSet:
    """Recompute and store the device's set (the caller commits). Used when the device asks for tokens."""
    row = db.session.get(DeclarationSet, device.id)
    row, _ = _store(device, compute_set(device), row)
    return row


def stored_set(device) -> DeclarationSet:
    return db.session.get(DeclarationSet, device.id) or current_set(device)


def sync_tokens(row: DeclarationSet) -> dict:
    return {"DeclarationsToken": row.declarations_token,
            "Timestamp": row.changed_at.replace(microsecond=0).isoformat() + "Z"}


def manifest(row: DeclarationSet) -> dict:
    """The declaration-items response body."""
    sections = {name: [] for _, name in _SECTIONS}
    for item in row.declarations:
        for prefix, name in _SECTIONS:
            if item["Type"].startswith(prefix):
                sections[name].append({"Identifier": item["Identifier"], "ServerToken": item["ServerToken"]})
                break
    return {"Declarations": sections, "DeclarationsToken": row.declarations_token}


def manifest_type(declaration_type: str) -> str:
    """"com.apple.configuration.softwareupdate.settings" -> "configuration": what devices put in the
    declaration/<type>/<identifier> endpoint."""
    parts = declaration_type.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["com", "apple"] else ""


def find_declaration(row: DeclarationSet, declaration_type: str, identifier: str) -> dict | None:
    """Devices ask for declaration/<manifest type>/<identifier>; the full Type is accepted too."""
    for item in row.declarations:
        if item["Identifier"] == identifier and declaration_type in (item["Type"], manifest_type(item["Type"])):
            return item
    return None


def refresh_devices(device_ids: Iterable[int]) -> set[int]:
    """Rebuild the sets of these devices. For each enrolled device whose DeclarationsToken changed, leave
    exactly one queued DeclarativeManagement command carrying the new SyncTokens and push it. Also installs
    or removes the iOS 17 deferral profile, and refreshes stored results. Commits. Returns changed ids."""
    from .results import record_device_results
    ids = sorted({int(i) for i in device_ids})
    changed: set[int] = set()
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start:start + CHUNK]
        devices = Device.query.filter(Device.id.in_(chunk)).all()
        rows = {r.device_id: r for r in DeclarationSet.query.filter(DeclarationSet.device_id.in_(chunk))}
        for device in devices:
            computed = compute_set(device)
            row, did_change = _store(device, computed, rows.get(device.id))
            enrolled = device.enrollment_status == "enrolled"
            if enrolled:
                _sync_restrictions_profile(device, row, computed.restrictions_delay_days)
            if did_change:
                changed.add(device.id)
                if enrolled:
                    _queue_sync_command(device, row)
            record_device_results(device, computed.plan, row)
        db.session.commit()
    return changed


# ---- commands -------------------------------------------------------------------------------------
def _enqueue(device, request_type: str, **params) -> Command:
    from ..queue import enqueue
    return enqueue(device, request_type, queued_by="ddm", **params)


def _request_push(device_ids: list[int]) -> None:
    try:
        from ..push import request_push
    except ModuleNotFoundError as exc:
        if exc.name != "mdm.push":
            raise
        return
    request_push(device_ids)


def _queue_sync_command(device, row: DeclarationSet) -> None:
    """One DeclarativeManagement command per device: a still-queued one is rewritten with the new tokens
    instead of piling up another."""
    data = json.dumps({"SyncTokens": sync_tokens(row)}, separators=(",", ":")).encode()
    waiting = (Command.query.filter_by(device_id=device.id, request_type="DeclarativeManagement", status="queued")
               .order_by(Command.id).all())
    if waiting:
        keep, extra = waiting[0], waiting[1:]
        plist = plistlib.loads(keep.payload)
        plist["Command"]["Data"] = data
        keep.payload = plistlib.dumps(plist, fmt=plistlib.FMT_XML, sort_keys=True)
        for command in extra:   # left by an older version or a race: supersede, keep the history
            _supersede(command)
        _request_push([device.id])
    else:
        _enqueue(device, "DeclarativeManagement", data=data)
    row.command_token = row.declarations_token
    row.command_queued_at = utcnow()


def _supersede(command: Command) -> None:
    command.status = "Superseded"
    command.completed_at = utcnow()


def _sync_restrictions_profile(device, row: DeclarationSet, wanted_days: int | None) -> None:
    """Install, update or remove the iOS 17 deferral restrictions profile by MDM command."""
    if wanted_days == row.restrictions_delay_days:
        return
    for command in Command.query.filter(Command.device_id == device.id, Command.status == "queued",
                                        Command.request_type.in_(("InstallProfile", "RemoveProfile"))):
        if _targets_restrictions_profile(command):
            _supersede(command)
    if wanted_days:
        from flask import current_app
        organization = current_app.config.get("ORGANIZATION", "MDM")
        _enqueue(device, "InstallProfile", payload=decl.restrictions_profile(wanted_days, organization))
    else:
        _enqueue(device, "RemoveProfile", identifier=decl.RESTRICTIONS_PROFILE_ID)
    row.restrictions_delay_days = wanted_days


def _targets_restrictions_profile(command: Command) -> bool:
    try:
        body = plistlib.loads(command.payload)["Command"]
    except Exception:
        return False
    if body.get("Identifier") == decl.RESTRICTIONS_PROFILE_ID:
        return True
    payload = body.get("Payload")
    return isinstance(payload, bytes) and decl.RESTRICTIONS_PROFILE_ID.encode() in payload
