"""Per-device declaration sets, their tokens, and telling devices when their set changed.

``compute_set`` is the one function that turns "what this device should have" into the declarations
and the DeclarationsToken; every endpoint and every refresh goes through it. The DeclarationsToken is
a hash over the (identifier, ServerToken) pairs, so it changes exactly when the set changes.

Two stages of the DDM spine (mdm/ddm/spine.py) live here, each returning what the next needs:
``compute_sets`` (sets and tokens for a chunk, reads only) -> ``store_sets`` (sets written, commands
queued; returns the devices to wake) -> ``notify`` (one push request; returns the devices that got a new
one, which the results stage then need not read back). Nothing here commits. The large INSERTs go through
``bulk.insert_rows`` (a set shared by many devices is JSON-encoded once per chunk, not once per device).
"""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import os
import plistlib
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Iterable

from flask import current_app
from sqlalchemy import Text, bindparam, select, type_coerce, update

from ..protocol import commands
from ..bulk import insert_rows
from ..extensions import db
from ..models import Command, Device, utcnow
from ..plistio import dumps
from ..push.apns import request_push_new_rows
from ..unit_of_work import finish
from . import changes
from . import declarations as decl
from . import enforcement_scope
from .models import DevicePatchTarget, PatchPolicy
from .plan import PatchPlan, patch_plan_for_device
from .policies import settings_of
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
        return patch_plan_for_device(device), None
    except Exception as exc:  # policy state must never break a device's sync
        log.exception("patch plan for device %s could not be computed", device.id)
        return None, f"patch plan could not be computed: {type(exc).__name__}"


def compute_set(device) -> ComputedSet:
    """Everything this device should have: status subscriptions, the patch declarations its plan and
    OS allow, one enforcement declaration per Software Update Enforcement policy reaching it, and an
    activation referencing all configurations. Missing pieces become notes."""
    notes: list[str] = []
    plan = None
    if device.runs_ios:
        plan, why = plan_for(device)
        if why:
            notes.append(why)
    enforcements, why = enforcements_for([device.id])
    if why:
        notes.append(why)
    return build_set(device, plan, notes, enforcements.get(device.id, ()))


def enforcements_for(device_ids) -> tuple[dict, str | None]:
    """The enforcement policies reaching these devices, or ({}, why) when they cannot be had. Never raises."""
    try:
        return enforcement_scope.for_devices(device_ids), None
    except Exception as exc:  # policy state must never break a device's sync
        log.exception("enforcement policies for devices could not be read")
        return {}, f"enforcement policies could not be read: {type(exc).__name__}"


def build_set(device, plan, notes: list[str] | None = None, enforcements: tuple = ()) -> ComputedSet:
    """The set for this device, its plan and its enforcement policies (pure: reads only its arguments)."""
    notes = list(notes or ())
    configurations = [decl.status_subscriptions(device)]
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
    for spec in enforcements:
        try:
            configurations.append(enforcement_scope.declaration(device, spec))
        except Exception as exc:  # one bad policy still leaves the device a valid set
            log.exception("enforcement policy %s for device %s failed", spec.policy_id, device.id)
            configurations.append(decl.Built(None, [f"enforcement policy {spec.name!r}: could not be built "
                                                    f"({type(exc).__name__})"]))
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
    db.session.execute(_locked(select(Device.id).where(Device.id == device.id)))   # see _locked
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


@dataclass
class ChunkSets:
    """What ``compute_sets`` decided for one chunk of devices, before anything is written: the set rows,
    the commands to queue (profile and DeclarativeManagement), and what ``results`` needs next."""
    device_ids: list[int]
    changed: set[int] = field(default_factory=set)        # devices whose DeclarationsToken changed
    set_inserts: list[dict] = field(default_factory=list)
    set_updates: list[tuple[int, dict]] = field(default_factory=list)
    profile_wanted: dict[int, int | None] = field(default_factory=dict)
    sync_wanted: dict[int, tuple[str, dt.datetime]] = field(default_factory=dict)
    result_inputs: list[tuple] = field(default_factory=list)   # (device facts, plan, declarations, changed_at)


def new_run(now: dt.datetime | None = None) -> "_RefreshRun":
    """One refresh: what it computes once and shares between chunks (policies, plans, sets, command bodies).
    The caller's pending changes (device facts) are flushed first: they are what the run reads."""
    db.session.flush()
    return _RefreshRun(now or utcnow())


def chunks(device_ids: Iterable[int]) -> list[list[int]]:
    """Device ids in refresh order, cut into rounds of BULK_CHUNK."""
    ids = sorted({int(i) for i in device_ids})
    return [ids[start:start + BULK_CHUNK] for start in range(0, len(ids), BULK_CHUNK)]


def compute_sets(run: "_RefreshRun", chunk: list[int]) -> ChunkSets:
    """Sets and tokens for one chunk (reads only): for each enrolled device whose DeclarationsToken changed,
    one DeclarativeManagement command carrying the new SyncTokens is wanted; the iOS 17 deferral profile is
    wanted when its delay changed.

    Bulk on purpose (a policy edit can touch every device): per chunk a handful of queries read facts,
    plans and stored sets; sets are computed once per distinct (device facts, plan)."""
    devices = run.devices(chunk)
    plans = run.plans(chunk)
    enforcements, why = enforcements_for(chunk)
    stored = _stored_sets(chunk)
    out = ChunkSets(device_ids=[d.id for d in devices])
    for device in devices:
        plan = plans.get(device.id) if device.runs_ios else None
        computed = run.computed_set(device, plan, enforcements.get(device.id, ()), why)
        old = stored.get(device.id)
        enrolled = device.enrollment_status == "enrolled"
        values: dict = {}
        if old is None:
            did_change, changed_at = True, run.now
            values = {"declarations_token": computed.token, "declarations": computed.declarations,
                      "notes": computed.notes, "changed_at": changed_at}
            old_days = None
        else:
            did_change = old["declarations_token"] != computed.token
            changed_at = run.now if did_change else old["changed_at"]
            if old["notes"] != computed.notes:
                values["notes"] = computed.notes
            if did_change:
                values.update(declarations_token=computed.token, declarations=computed.declarations,
                              changed_at=changed_at)
            old_days = old["restrictions_delay_days"]
        if enrolled and computed.restrictions_delay_days != old_days:
            out.profile_wanted[device.id] = computed.restrictions_delay_days
            values["restrictions_delay_days"] = computed.restrictions_delay_days
        if did_change:
            out.changed.add(device.id)
            if enrolled:
                out.sync_wanted[device.id] = (computed.token, changed_at)
                values.update(command_token=computed.token, command_queued_at=run.now)
        if old is None:
            out.set_inserts.append({"device_id": device.id, "restrictions_delay_days": None, "command_token": None,
                                    "command_queued_at": None, **values})
        elif values:
            out.set_updates.append((device.id, values))
        out.result_inputs.append((device, plan, computed.declarations, changed_at))
    return out


def store_sets(run: "_RefreshRun", sets: ChunkSets) -> list[int]:
    """Write the chunk's sets and queue its commands (a still-queued DeclarativeManagement command is
    rewritten rather than piled up). Flushes nothing else, commits nothing. Returns the devices to push."""
    _write_sets(sets.set_inserts, sets.set_updates)
    return _write_commands(run, sets.device_ids, sets.profile_wanted, sets.sync_wanted)


def refresh_devices(device_ids: Iterable[int]) -> set[int]:
    """For callers that hold only this module: ``spine.refresh`` through the spine's inbox (this module
    sits below the spine), then ``unit_of_work.finish``. Returns the ids whose DeclarationsToken changed."""
    changed = changes.refresh(device_ids)
    finish()
    return changed


def notify(device_ids: list[int]) -> set[int]:
    """Wake these devices (one push request covers them; sent after the edge commits). Returns those that
    got a new pending push request (``apns.request_push_new_rows``): what ``results`` need not read back."""
    return request_push_new_rows(device_ids)[1]


BULK_CHUNK = 2000                 # devices per round; IN lists are cut to CHUNK ids
_UUID_PLACEHOLDER = "@@COMMAND-UUID@@"
_UUID_PLACEHOLDER_BYTES = _UUID_PLACEHOLDER.encode()


@functools.lru_cache(maxsize=4096)
def _platform_of(product_name: str | None, model_name: str | None) -> str:
    """``Device.platform`` of a device with these names (a refresh asks it several times per device)."""
    return Device.platform.fget(SimpleNamespace(product_name=product_name, model_name=model_name))


class _DeviceFacts:
    """The device columns declarations and results read, without loading the ORM object."""
    __slots__ = ("id", "udid", "product_name", "model_name", "os_version", "is_supervised", "enrollment_status",
                 "device_name", "build_version")
    runs_ios = property(Device.runs_ios.fget)

    def __init__(self, row):
        # the columns of __slots__, in that order (one unpacking instead of a setattr per column)
        (self.id, self.udid, self.product_name, self.model_name, self.os_version, self.is_supervised,
         self.enrollment_status, self.device_name, self.build_version) = row

    @property
    def platform(self) -> str:
        return _platform_of(self.product_name, self.model_name)

    def facts_key(self) -> tuple:
        return (_platform_of(self.product_name, self.model_name), self.os_version, bool(self.is_supervised))


class _RefreshRun:
    """What one refresh computes once and shares between devices: policies, plans, sets, command bodies."""

    def __init__(self, now: dt.datetime):
        self.now = now
        self._policies: dict | None = None
        self._plans: dict[tuple, object] = {}
        self._sets: dict[tuple, ComputedSet] = {}
        self._templates: dict[tuple, bytes] = {}
        self._sync_templates: dict[tuple[str, dt.datetime], bytes] = {}
        self._uuids: list[str] = []
        self.organization = None

    def devices(self, ids: list[int]) -> list[_DeviceFacts]:
        columns = [Device.__table__.c[name] for name in _DeviceFacts.__slots__]
        out = []
        for part in _parts(ids):
            out += [_DeviceFacts(r) for r in db.session.execute(_locked(
                select(*columns).where(Device.id.in_(part)).order_by(Device.id)))]
        return sorted(out, key=lambda d: d.id)

    def plans(self, ids: list[int]) -> dict[int, object]:
        """The stored patch plans of these devices (as ``patch_plan_for_device`` builds them), one object per
        distinct plan."""
        if self._policies is None:
            self._policies = {p.id: (p.name, settings_of(p)) for p in PatchPolicy.query}
        table = DevicePatchTarget.__table__
        fields = ("policy_id", "binding", "target_version", "target_build", "deadline_local", "deadline_utc",
                  "reason", "compliant", "deadline_anchor_version", "deadline_note", "conflicts")
        # conflicts read as raw JSON text, decoded once per distinct plan (PostgreSQL's driver decodes it anyway)
        columns = [table.c[f] if f != "conflicts" else type_coerce(table.c[f], Text) for f in fields]
        plans = {}
        for part in _parts(ids):
            query = select(table.c.device_id, *columns).where(table.c.device_id.in_(part),
                                                               table.c.policy_id.is_not(None))
            for device_id, *values in db.session.execute(query):
                if isinstance(values[-1], list):
                    values[-1] = tuple(values[-1])
                key = tuple(values)
                plan = self._plans.get(key)
                if plan is None:
                    row = dict(zip(fields, values))
                    policy = self._policies.get(row["policy_id"])
                    if policy is None:
                        continue
                    conflicts = row["conflicts"]
                    conflicts = tuple((json.loads(conflicts) if isinstance(conflicts, str) else conflicts) or ())
                    plan = self._plans[key] = PatchPlan(
                        policy_id=row["policy_id"], policy_name=policy[0], binding=row["binding"],
                        settings=policy[1], target_version=row["target_version"], target_build=row["target_build"],
                        deadline_local=row["deadline_local"], deadline_utc=row["deadline_utc"], reason=row["reason"],
                        compliant=bool(row["compliant"]), conflicts=conflicts,
                        deadline_anchor_version=row["deadline_anchor_version"], deadline_note=row["deadline_note"])
                plans[device_id] = plan
        return plans

    def computed_set(self, device: _DeviceFacts, plan, enforcements: tuple = (), why: str | None = None) -> ComputedSet:
        # plans are shared objects, kept alive by self._plans; enforcements are hashable values
        key = (device.facts_key(), id(plan), enforcements, why)
        computed = self._sets.get(key)
        if computed is None:
            computed = self._sets[key] = build_set(device, plan, [why] if why else [], enforcements)
        return computed

    def command_uuid(self) -> str:
        """A new CommandUUID as ``queue.enqueue`` makes one (``str(uuid.uuid4()).upper()``), drawn from a batch."""
        if not self._uuids:
            self._uuids = _random_uuids(BULK_CHUNK)
        return self._uuids.pop()

    def sync_template(self, token: str, changed_at: dt.datetime) -> bytes:
        """The DeclarativeManagement command carrying these SyncTokens, as ``payload_template`` (devices
        sharing a set share its token and, in one run, its timestamp: built once for all of them)."""
        key = (token, changed_at)
        template = self._sync_templates.get(key)
        if template is None:
            tokens = {"DeclarationsToken": token, "Timestamp": changed_at.replace(microsecond=0).isoformat() + "Z"}
            data = json.dumps({"SyncTokens": tokens}, separators=(",", ":")).encode()
            template = self._sync_templates[key] = self.payload_template("DeclarativeManagement", data=data)
        return template

    def payload_template(self, request_type: str, **params) -> bytes:
        """The command plist with a placeholder CommandUUID: built once, then one bytes.replace per device
        gives exactly what ``queue.enqueue`` would have stored."""
        key = (request_type, tuple(sorted(params.items())))
        template = self._templates.get(key)
        if template is None:
            body = commands.get(request_type).build(**params)
            template = self._templates[key] = dumps({"CommandUUID": _UUID_PLACEHOLDER, "Command": body})
        return template


def _random_uuids(n: int) -> list[str]:
    """``n`` random (version 4) UUIDs, upper case, as ``str(uuid.uuid4()).upper()`` gives them: one urandom call
    and one hex conversion for all (uuid4 one at a time is a third of the command rows' cost)."""
    raw = bytearray(os.urandom(16 * n))
    raw[6::16] = bytes((b & 0x0F) | 0x40 for b in raw[6::16])     # version 4
    raw[8::16] = bytes((b & 0x3F) | 0x80 for b in raw[8::16])     # RFC 4122 variant
    h = raw.hex().upper()
    return [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-{h[i + 12:i + 16]}-{h[i + 16:i + 20]}-{h[i + 20:i + 32]}"
            for i in range(0, 32 * n, 32)]


def _locked(query):
    """Refreshes of the same device wait for each other (they read the stored set, then write it). SQLite
    transactions already run one at a time (BEGIN IMMEDIATE); elsewhere lock the device rows, in id order."""
    if db.session.get_bind().dialect.name == "sqlite":
        return query
    return query.with_for_update()


def _parts(ids: list[int]):
    for i in range(0, len(ids), CHUNK):
        yield ids[i:i + CHUNK]


def _stored_sets(ids: list[int]) -> dict[int, dict]:
    """The stored sets' bookkeeping (not the declarations themselves: the token says whether they changed)."""
    table = DeclarationSet.__table__
    fields = ("declarations_token", "notes", "restrictions_delay_days", "changed_at")
    out = {}
    for part in _parts(ids):
        for device_id, *values in db.session.execute(
                select(table.c.device_id, *(table.c[f] for f in fields)).where(table.c.device_id.in_(part))):
            out[device_id] = dict(zip(fields, values))
    return out


def _write_sets(inserts: list[dict], updates: list[tuple[int, dict]]) -> None:
    table = DeclarationSet.__table__
    if inserts:
        insert_rows(table, inserts)
    by_columns: dict[tuple, list[dict]] = {}
    for device_id, values in updates:
        by_columns.setdefault(tuple(sorted(values)), []).append({"b_device_id": device_id, **values})
    for columns, rows in by_columns.items():
        db.session.execute(update(table).where(table.c.device_id == bindparam("b_device_id"))
                           .values({c: bindparam(c) for c in columns}), rows)


def _write_commands(run: _RefreshRun, device_ids: list[int], profile_wanted: dict[int, int | None],
                    sync_wanted: dict[int, tuple[str, dt.datetime]]) -> list[int]:
    """The iOS 17 restrictions profile commands, then the DeclarativeManagement commands, in device order
    (what ``_sync_restrictions_profile`` and ``_queue_sync_command`` do one device at a time). Returns the
    devices to push."""
    if not profile_wanted and not sync_wanted:
        return []
    table = Command.__table__
    supersede: list[int] = []
    rewrites: list[dict] = []
    waiting_sync, waiting_profile = _waiting_commands(sorted(set(profile_wanted) | set(sync_wanted)))
    new_commands: list[dict] = []
    pushed: list[int] = []
    for device_id in device_ids:
        if device_id in profile_wanted:
            supersede += [cid for cid, payload in waiting_profile.get(device_id, ())
                          if _payload_targets_restrictions_profile(payload)]
            days = profile_wanted[device_id]
            if days:
                if run.organization is None:
                    run.organization = current_app.config.get("ORGANIZATION", "MDM")
                template = run.payload_template("InstallProfile",
                                                payload=decl.restrictions_profile(days, run.organization))
                new_commands.append(_command_row(run, device_id, "InstallProfile", template))
            else:
                template = run.payload_template("RemoveProfile", identifier=decl.RESTRICTIONS_PROFILE_ID)
                new_commands.append(_command_row(run, device_id, "RemoveProfile", template))
            pushed.append(device_id)
        if device_id in sync_wanted:
            template = run.sync_template(*sync_wanted[device_id])
            waiting = waiting_sync.get(device_id)
            if waiting:
                # A still-queued one is rewritten with the new tokens instead of piling up another.
                (keep_id, keep_uuid), extra = waiting[0], waiting[1:]
                rewrites.append({"b_id": keep_id, "payload": template.replace(
                    _UUID_PLACEHOLDER_BYTES, keep_uuid.encode())})
                supersede += [cid for cid, _ in extra]   # left by an older version or a race
            else:
                new_commands.append(_command_row(run, device_id, "DeclarativeManagement", template))
            if not pushed or pushed[-1] != device_id:
                pushed.append(device_id)
    for part in _parts(supersede):
        db.session.execute(update(table).where(table.c.id.in_(part))
                           .values(status="Superseded", completed_at=run.now))
    if rewrites:
        db.session.execute(update(table).where(table.c.id == bindparam("b_id"))
                           .values(payload=bindparam("payload")), rewrites)
    if new_commands:
        insert_rows(table, new_commands)
        log.info("queued %d commands for %d devices (declarations changed)", len(new_commands), len(pushed))
    return pushed


def _waiting_commands(device_ids: list[int]) -> tuple[dict[int, list[tuple[int, str]]],
                                                     dict[int, list[tuple[int, bytes]]]]:
    """The still-queued DeclarativeManagement commands (id, uuid) and profile commands (id, payload) of
    these devices, oldest first."""
    table = Command.__table__
    waiting_sync: dict[int, list[tuple[int, str]]] = {}
    waiting_profile: dict[int, list[tuple[int, bytes]]] = {}
    for part in _parts(device_ids):
        query = (select(table.c.id, table.c.device_id, table.c.request_type, table.c.uuid, table.c.payload)
                 .where(table.c.device_id.in_(part), table.c.status == "queued",
                        table.c.request_type.in_(("DeclarativeManagement", "InstallProfile", "RemoveProfile")))
                 .order_by(table.c.id))
        for command_id, device_id, request_type, command_uuid, payload in db.session.execute(query):
            if request_type == "DeclarativeManagement":
                waiting_sync.setdefault(device_id, []).append((command_id, command_uuid))
            else:
                waiting_profile.setdefault(device_id, []).append((command_id, payload))
    return waiting_sync, waiting_profile


def _command_row(run: _RefreshRun, device_id: int, request_type: str, template: bytes) -> dict:
    command_uuid = run.command_uuid()
    return {"uuid": command_uuid, "device_id": device_id, "request_type": request_type,
            "payload": template.replace(_UUID_PLACEHOLDER_BYTES, command_uuid.encode()), "status": "queued",
            "not_now_count": 0, "queued_by": "ddm", "queued_at": run.now}


# ---- commands -------------------------------------------------------------------------------------
def _payload_targets_restrictions_profile(payload: bytes) -> bool:
    try:
        body = plistlib.loads(payload)["Command"]
    except Exception:
        return False
    if body.get("Identifier") == decl.RESTRICTIONS_PROFILE_ID:
        return True
    payload = body.get("Payload")
    return isinstance(payload, bytes) and decl.RESTRICTIONS_PROFILE_ID.encode() in payload
