"""Software Update Enforcement policies (iOS & iPadOS): install one specific version by a set date and
device-local time. Validation, the service (create, edit, delete, bind, unbind), results per
(policy, device) and the preview. CLI (``flask mdm enforcement``), UI and API call these functions.

Fields (``FIELDS``): name, target_version, target_build (optional), enforce_at ("YYYY-MM-DDTHH:MM",
device-local), details_url (optional). Each error names the field (``policies.FieldError``) and is
raised as ``policies.PolicyError``, so every caller reports it the way patch-policy errors are reported.

Rules: the date and time is in the future (on create, and whenever it changes); the version (and build)
is in Apple's catalog, unexpired, for at least one model in scope (the iOS/iPadOS devices the bindings
reach; with no bindings yet, any iPhone or iPad model). Models in scope without it get a warning and
their devices are "Not applicable". A device at or above the version is Compliant and gets no declaration.

Services flush and audit (only changed fields on edit); the caller commits. Devices whose declarations
change are handed to ``spine.refresh`` (sets, DeclarativeManagement sync, results); the edge commits.
The emitted declaration and "which wins" live in ``enforcement_scope.py``.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from ..extensions import db
from ..models import Device, audit, audit_update, utcnow
from . import catalog
from . import enforcement_scope as scope
from . import results as patch_results
from . import spine
from .declarations import with_server_token
from .enforcement_models import EnforcementBinding, EnforcementPolicy, EnforcementResult
from .policies import FieldError, PolicyError, binding_devices, resolve_targets, target_label
from .state_models import DeclarationSet, DeviceStatus
from .status import item
from .sync import plan_for
from .targets import deadline_instant_utc, deadline_passed_everywhere, version_key, zone_named

FIELDS = ("name", "target_version", "target_build", "enforce_at", "details_url")
LABELS = {"name": "Name", "target_version": "Target OS version", "target_build": "Target build",
          "enforce_at": "Enforcement date and time", "details_url": "Details URL"}
AT_FORMAT = "%Y-%m-%dT%H:%M"

_VERSION = re.compile(r"^\d{1,3}(\.\d{1,3}){0,2}$")
_BUILD = re.compile(r"^[0-9]{2}[A-Z][0-9]{1,5}[a-z]?$")
_AT = re.compile(r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2})(:00)?$")


@dataclass(frozen=True)
class EnforcementSettings:
    name: str
    target_version: str
    target_build: str | None
    enforce_at: str
    details_url: str | None

    def to_dict(self) -> dict:
        return {f: getattr(self, f) for f in FIELDS}


def settings_of(policy: EnforcementPolicy) -> EnforcementSettings:
    return EnforcementSettings(**{f: getattr(policy, f) for f in FIELDS})


# ---- validation ------------------------------------------------------------------------------------

def _text(data: Mapping, name: str, errors: list, *, required: bool, limit: int) -> str | None:
    value = data.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            errors.append(FieldError(name, f"{LABELS[name]} is required"))
        return None
    if not isinstance(value, str):
        errors.append(FieldError(name, f"{LABELS[name]} must be text, got {value!r}"))
        return None
    value = value.strip()
    if len(value) > limit:
        errors.append(FieldError(name, f"{LABELS[name]} must be at most {limit} characters"))
        return None
    return value


def parse_at(value: str) -> str | None:
    """"2026-12-24T18:00" (also with a space, or with ":00" seconds) -> "2026-12-24T18:00"; None if not."""
    match = _AT.match(value or "")
    if not match:
        return None
    text = f"{match.group(1)}T{match.group(2)}"
    try:
        dt.datetime.strptime(text, AT_FORMAT)
    except ValueError:
        return None
    return text


def validate(data: Mapping, *, base: EnforcementSettings | None = None, exclude_policy_id: int | None = None,
             scope_device_ids: Iterable[int] = (), now: dt.datetime | None = None
             ) -> tuple[EnforcementSettings | None, list[FieldError], list[str]]:
    """Parse ``data`` over ``base`` (edit) and check every rule. Returns (settings, [], warnings) or
    (None, errors, warnings). ``scope_device_ids``: the devices the policy's bindings reach."""
    now = now or utcnow()
    errors: list[FieldError] = [FieldError(k, f"{k} is not a field of an enforcement policy (unknown field)")
                                for k in sorted(set(data) - set(FIELDS))]
    values = base.to_dict() if base else {}
    given = {k: data[k] for k in FIELDS if k in data}
    merged = {**values, **given}
    name = _text(merged, "name", errors, required=True, limit=255)
    version = _text(merged, "target_version", errors, required=True, limit=32)
    build = _text(merged, "target_build", errors, required=False, limit=32)
    at_text = _text(merged, "enforce_at", errors, required=True, limit=32)
    url = _text(merged, "details_url", errors, required=False, limit=1024)
    if version is not None and not _VERSION.match(version):
        errors.append(FieldError("target_version", f"Target OS version must be a version number such as 18.6 or "
                                                   f"18.6.2, got {version!r}"))
        version = None
    if build is not None and not _BUILD.match(build):
        errors.append(FieldError("target_build", f"Target build must be an Apple build number such as 22G86, "
                                                 f"got {build!r}"))
        build = None
    at = None
    if at_text is not None:
        at = parse_at(at_text)
        if at is None:
            errors.append(FieldError("enforce_at", f"Enforcement date and time must be YYYY-MM-DDTHH:MM (24-hour, "
                                                   f"device-local), got {at_text!r}"))
        elif (base is None or at != base.enforce_at) and dt.datetime.strptime(at, AT_FORMAT) <= now:
            errors.append(FieldError("enforce_at", f"Enforcement date and time must be in the future: {at} has "
                                                   f"already passed (now {now:%Y-%m-%dT%H:%M} UTC)"))
    if url is not None and not re.match(r"^https?://[^\s/]+", url, re.IGNORECASE):
        errors.append(FieldError("details_url", f"Details URL must start with http:// or https:// and name a host, "
                                                f"got {url!r}"))
    if name is not None:
        clash = EnforcementPolicy.query.filter(db.func.lower(EnforcementPolicy.name) == name.lower())
        if exclude_policy_id is not None:
            clash = clash.filter(EnforcementPolicy.id != exclude_policy_id)
        if clash.first() is not None:
            errors.insert(0, FieldError("name", f"An enforcement policy named {name!r} already exists; choose "
                                                f"another name"))
    warnings: list[str] = []
    if version is not None:
        problem, warnings = check_catalog(version, build, scope_device_ids, now)
        if problem:
            errors.append(problem)
    if errors:
        return None, errors, warnings
    return EnforcementSettings(name, version, build, at, url), [], warnings


def check_catalog(version: str, build: str | None, device_ids: Iterable[int],
                  now: dt.datetime | None = None) -> tuple[FieldError | None, list[str]]:
    """(error or None, warnings): the version must be in Apple's catalog for at least one model in scope."""
    now = now or utcnow()
    catalog.ensure_catalog(now)
    index = scope.release_index()
    models = models_in_scope(device_ids, index)
    field_name = "target_build" if build else "target_version"
    what = f"{version} ({build})" if build else version
    if not models:
        if any(scope.availability(index, m, version, build, now) is None for m in index.by_model):
            return None, []
        return FieldError(field_name, f"{LABELS[field_name]}: iOS {what} is not in Apple's catalog (gdmf) for any "
                                      f"iPhone or iPad model, or it has expired; choose a version the catalog "
                                      f"lists"), []
    warnings, available = [], 0
    for model, count in sorted(models.items()):
        why = scope.availability(index, model, version, build, now) if model in index else \
            f"{model} is not in Apple's catalog"
        if why is None:
            available += 1
        else:
            warnings.append(f"{model}: {why}; its {count} device(s) are Not applicable")
    if not available:
        return FieldError(field_name, f"{LABELS[field_name]}: iOS {what} is not in Apple's catalog for any model in "
                                      f"scope ({', '.join(sorted(models))}); choose a version these models can "
                                      f"install"), warnings
    return None, warnings


def models_in_scope(device_ids: Iterable[int], index=None) -> dict[str, int]:
    """{catalog model: device count} for the iOS/iPadOS devices among ``device_ids`` with a known model."""
    index = index or scope.release_index()
    ids = sorted(set(device_ids))
    models: dict[str, int] = {}
    for start in range(0, len(ids), 500):
        for device in Device.query.filter(Device.id.in_(ids[start:start + 500])):
            if not device.runs_ios:
                continue
            model = index.model_for(device.software_update_device_id, device.product_name) or device.product_name
            if model:
                models[model] = models.get(model, 0) + 1
    return models


# ---- lookups ---------------------------------------------------------------------------------------

def get_policy(ref) -> EnforcementPolicy | None:
    if isinstance(ref, EnforcementPolicy):
        return ref
    text = str(ref).strip()
    if text.isdigit():
        policy = db.session.get(EnforcementPolicy, int(text))
        if policy is not None:
            return policy
    return EnforcementPolicy.query.filter(db.func.lower(EnforcementPolicy.name) == text.lower()).first()


def require_policy(ref) -> EnforcementPolicy:
    policy = get_policy(ref)
    if policy is None:
        raise PolicyError(f"no enforcement policy {ref!r}", field="policy")
    return policy


def list_policies() -> list[EnforcementPolicy]:
    return EnforcementPolicy.query.order_by(EnforcementPolicy.id).all()


def _refresh(device_ids: set[int]) -> set[int]:
    db.session.flush()
    if not device_ids:
        return set()
    return spine.refresh(device_ids)


# ---- service ---------------------------------------------------------------------------------------

def create_policy(data: Mapping, *, actor: str = "system", source: str | None = None) -> EnforcementPolicy:
    settings, errors, _warnings = validate(data)
    if errors:
        raise PolicyError(errors)
    policy = EnforcementPolicy(platform="iOS", **settings.to_dict())
    db.session.add(policy)
    db.session.flush()
    audit("enforcement_policy.create", actor=actor, source=source, object_type="enforcement_policy",
          object_id=policy.id, after=settings.to_dict())
    return policy


def update_policy(ref, changes: Mapping, *, actor: str = "system", source: str | None = None) -> EnforcementPolicy:
    policy = require_policy(ref)
    before = settings_of(policy)
    reached = scope.devices_reached(policy.id)
    settings, errors, _warnings = validate(changes, base=before, exclude_policy_id=policy.id,
                                           scope_device_ids=reached)
    if errors:
        raise PolicyError(errors)
    if settings == before:
        return policy
    for name, value in settings.to_dict().items():
        setattr(policy, name, value)
    policy.updated_at = utcnow()
    audit_update("enforcement_policy.update", name=settings.name, actor=actor, source=source,
                 object_type="enforcement_policy", object_id=policy.id, before=before.to_dict(),
                 after=settings.to_dict())
    _refresh(reached)
    return policy


def delete_policy(ref, *, actor: str = "system", source: str | None = None) -> set[int]:
    """Delete the policy and its bindings; its declaration leaves every device on their next sync."""
    policy = require_policy(ref)
    reached = scope.devices_reached(policy.id)
    audit("enforcement_policy.delete", actor=actor, source=source, object_type="enforcement_policy",
          object_id=policy.id, before=settings_of(policy).to_dict())
    db.session.delete(policy)
    return _refresh(reached)


def bind_policy(ref, *, devices: Iterable = (), groups: Iterable = (), actor: str = "system",
                source: str | None = None) -> list[EnforcementBinding]:
    """Bind to devices (id, UDID, serial) and/or device groups (name or id); existing bindings are kept.
    Refused when no model in the resulting scope can install the target version."""
    policy = require_policy(ref)
    targets = resolve_targets(devices, groups)
    created, affected = [], set()
    new_scope = scope.devices_reached(policy.id)
    for kind, obj in targets:
        new_scope |= binding_devices(kind, obj)
    problem, _warnings = check_catalog(policy.target_version, policy.target_build, new_scope)
    if problem:
        raise PolicyError([problem])
    for kind, obj in targets:
        column = EnforcementBinding.device_id if kind == "device" else EnforcementBinding.group_id
        if EnforcementBinding.query.filter(EnforcementBinding.policy_id == policy.id, column == obj.id).first():
            continue
        binding = EnforcementBinding(policy=policy, **{f"{kind}_id": obj.id})
        db.session.add(binding)
        created.append(binding)
        affected |= binding_devices(kind, obj)
        audit("enforcement_policy.bind", actor=actor, source=source, object_type="enforcement_policy",
              object_id=policy.id, after={kind: obj.id, "name": target_label(kind, obj)})
    _refresh(affected)
    return created


def unbind_policy(ref, *, devices: Iterable = (), groups: Iterable = (), actor: str = "system",
                  source: str | None = None) -> int:
    policy = require_policy(ref)
    removed, affected = 0, set()
    for kind, obj in resolve_targets(devices, groups):
        column = EnforcementBinding.device_id if kind == "device" else EnforcementBinding.group_id
        binding = EnforcementBinding.query.filter(EnforcementBinding.policy_id == policy.id, column == obj.id).first()
        if binding is None:
            continue
        db.session.delete(binding)
        removed += 1
        affected |= binding_devices(kind, obj)
        audit("enforcement_policy.unbind", actor=actor, source=source, object_type="enforcement_policy",
              object_id=policy.id, before={kind: obj.id, "name": target_label(kind, obj)})
    _refresh(affected)
    return removed


def policy_summary(policy: EnforcementPolicy) -> dict:
    bindings = [{"device": b.device.udid, "serial_number": b.device.serial_number} if b.device_id
                else {"group": b.group.name} for b in policy.bindings]
    reached = scope.devices_reached(policy.id)
    _problem, warnings = check_catalog(policy.target_version, policy.target_build, reached)
    return {"id": policy.id, "kind": "enforcement", "platform": policy.platform, **settings_of(policy).to_dict(),
            "target_local_datetime": f"{policy.enforce_at}:00", "bindings": bindings, "devices": len(reached),
            "warnings": warnings, "created_at": policy.created_at.isoformat(),
            "updated_at": policy.updated_at.isoformat()}


# ---- results ---------------------------------------------------------------------------------------

@dataclass
class EnforcementDeviceResult:
    policy_id: int
    policy_name: str
    device_id: int
    udid: str
    serial_number: str | None
    device_name: str | None
    os_version: str | None
    state: str
    detail: str
    target_version: str
    deadline_local: str
    binding: str | None = None
    declared: bool = False             # the declaration is in the device's set
    effective: str | None = None       # which enforcement the device acts on first, when it holds several
    state_since: dt.datetime | None = None
    reported_at: dt.datetime | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        data = {k: v for k, v in self.__dict__.items() if k != "extra"}
        for key, value in data.items():
            if isinstance(value, dt.datetime):
                data[key] = value.isoformat() + "Z"
        return data


def evaluate(device, spec: scope.Enforcement, declarations: list[dict], status, now: dt.datetime,
             stale_after: dt.timedelta, delivery: str | None = None) -> tuple[str, str]:
    """(state, detail) of one enforcement policy on one device; the same states as patch results."""
    r = patch_results
    if not spec.applicable:
        return r.NOT_APPLICABLE, spec.reason or "not applicable"
    installed = version_key(device.os_version)
    if installed and installed[0] < 17:
        return r.NOT_APPLICABLE, f"iOS {device.os_version} is below 17 (the enforcement declaration needs iOS 17)"
    if not installed:
        return r.UNKNOWN, "the device has not reported its OS version yet"
    if installed >= version_key(spec.target_version):
        return r.COMPLIANT, f"on {device.os_version}, at or above {spec.target_version}"
    ident = scope.identifier(spec.policy_id)
    if ident not in {d["Identifier"] for d in declarations}:
        return r.PENDING, "not yet in the device's declaration set"
    last = status.last_report_at if status else None
    if last is None or now - last > stale_after:
        if last is None:
            return r.PENDING, delivery or "sent; no status report yet"
        return r.UNKNOWN, f"no status report since {last:%Y-%m-%dT%H:%M}Z" + (f"; {delivery}" if delivery else "")
    entry = (status.declarations or {}).get(ident)
    items = status.items or {}
    if entry and entry.get("current") and entry.get("valid") == "invalid":
        codes = [x.get("code", "") for x in entry.get("reasons") or []]
        return r.FAILED, f"declaration {ident} invalid: {', '.join(codes) or 'no reason'}"
    failure = item(items, "softwareupdate.failure-reason") or {}
    if isinstance(failure.get("count"), int) and failure["count"] > 0:
        return r.FAILED, f"update failed {failure['count']} time(s): {failure.get('reason') or 'no reason given'}"
    if entry is None or not entry.get("current"):
        return r.PENDING, delivery or "sent; the device has not reported this declaration yet"
    install_state = item(items, "softwareupdate.install-state")
    if install_state == "failed":
        return r.FAILED, "install-state failed"
    if install_state in ("downloading", "prepared", "installing"):
        pending = item(items, "softwareupdate.pending-version") or {}
        return install_state.capitalize(), f"{install_state} {pending.get('os-version') or spec.target_version}"
    deadline_utc = deadline_instant_utc(spec.target_local, getattr(device, "time_zone", None))
    if (deadline_utc and now > deadline_utc) or (deadline_utc is None and
                                                 deadline_passed_everywhere(spec.target_local, now)):
        return r.OVERDUE, f"deadline {spec.target_local} passed; still on {device.os_version}"
    if entry.get("valid") == "valid" and entry.get("active"):
        zone = "" if zone_named(getattr(device, "time_zone", None)) else " (device time zone unknown)"
        return r.SCHEDULED, f"{spec.target_version} by {spec.target_local} device time{zone}"
    return r.PENDING, f"declaration reported {entry.get('valid')}, active={entry.get('active')}"


def results_for_policy(ref, *, now: dt.datetime | None = None) -> list[EnforcementDeviceResult]:
    """Every device the policy reaches, evaluated now and stored (state_since kept while the state holds).
    Flushes; the caller commits."""
    policy = require_policy(ref)
    now = now or utcnow()
    ids = sorted(scope.devices_reached(policy.id))
    specs = scope.for_devices(ids, now)
    stored = {r.device_id: r for r in EnforcementResult.query.filter_by(policy_id=policy.id)}
    deliveries = patch_results.delivery_notes(ids)
    stale_after = patch_results._stale_after()
    out = []
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        sets = {s.device_id: s for s in DeclarationSet.query.filter(DeclarationSet.device_id.in_(chunk))}
        statuses = {s.device_id: s for s in DeviceStatus.query.filter(DeviceStatus.device_id.in_(chunk))}
        for device in Device.query.filter(Device.id.in_(chunk)).order_by(Device.id):
            device_specs = specs.get(device.id, ())
            mine = next((s for s in device_specs if s.policy_id == policy.id), None)
            if mine is None:
                continue
            served = sets[device.id].declarations if device.id in sets else []
            state, detail = evaluate(device, mine, served, statuses.get(device.id), now, stale_after,
                                     deliveries.get(device.id))
            plan = plan_for(device)[0] if device.runs_ios else None
            effective = scope.which_wins(device, device_specs, plan)
            row = stored.pop(device.id, None)
            if row is None:
                row = EnforcementResult(policy_id=policy.id, device_id=device.id, state=state, state_since=now)
                db.session.add(row)
            elif row.state != state:
                row.state_since = now
            row.state, row.detail, row.effective, row.updated_at = state, detail, effective, now
            status = statuses.get(device.id)
            out.append(EnforcementDeviceResult(
                policy.id, policy.name, device.id, device.udid, device.serial_number, device.device_name,
                device.os_version, state, detail, policy.target_version, f"{policy.enforce_at}:00",
                binding=mine.binding, declared=scope.identifier(policy.id) in {d["Identifier"] for d in served},
                effective=effective, state_since=row.state_since,
                reported_at=status.last_report_at if status else None))
    for gone in stored.values():
        db.session.delete(gone)
    db.session.flush()
    return out


def results_for_device(device, *, now: dt.datetime | None = None) -> list[EnforcementDeviceResult]:
    """The Software Update Enforcement policies reaching this device, each evaluated now as the policy's
    Results tab evaluates it (``evaluate``), for the device page. Reads only: the policy's results store."""
    now = now or utcnow()
    specs = scope.for_devices([device.id], now).get(device.id, ())
    policies = {p.id: p for p in EnforcementPolicy.query.filter(
        EnforcementPolicy.id.in_([s.policy_id for s in specs]))} if specs else {}
    if not policies:
        return []
    row = db.session.get(DeclarationSet, device.id)
    served = row.declarations if row is not None else []
    status = db.session.get(DeviceStatus, device.id)
    delivery = patch_results.delivery_notes([device.id]).get(device.id)
    plan = plan_for(device)[0] if device.runs_ios else None
    effective = scope.which_wins(device, specs, plan)
    stored = {r.policy_id: r for r in EnforcementResult.query.filter_by(device_id=device.id)}
    out = []
    for spec in specs:
        policy = policies.get(spec.policy_id)
        if policy is None:
            continue
        state, detail = evaluate(device, spec, served, status, now, patch_results._stale_after(), delivery)
        kept = stored.get(policy.id)
        out.append(EnforcementDeviceResult(
            policy.id, policy.name, device.id, device.udid, device.serial_number, device.device_name,
            device.os_version, state, detail, policy.target_version, f"{policy.enforce_at}:00",
            binding=spec.binding, declared=scope.identifier(policy.id) in {d["Identifier"] for d in served},
            effective=effective, state_since=kept.state_since if kept is not None and kept.state == state else None,
            reported_at=status.last_report_at if status else None))
    return out


def preview(ref, *, now: dt.datetime | None = None) -> dict:
    """What the policy does to each device it reaches, without waiting for devices: whether the
    declaration is sent, why not, and which enforcement each device acts on first."""
    policy = require_policy(ref)
    now = now or utcnow()
    ids = sorted(scope.devices_reached(policy.id))
    specs = scope.for_devices(ids, now)
    _problem, warnings = check_catalog(policy.target_version, policy.target_build, ids, now)
    rows = []
    for device in Device.query.filter(Device.id.in_(ids)).order_by(Device.id) if ids else ():
        device_specs = specs.get(device.id, ())
        mine = next((s for s in device_specs if s.policy_id == policy.id), None)
        if mine is None:
            continue
        built = scope.declaration(device, mine)
        plan = plan_for(device)[0] if device.runs_ios else None
        order = scope.pending_enforcements(device, device_specs, plan)
        rows.append({"device_id": device.id, "udid": device.udid, "serial_number": device.serial_number,
                     "device_name": device.device_name, "model": device.product_name,
                     "os_version": device.os_version, "binding": mine.binding,
                     "sends_declaration": built.declaration is not None,
                     "declaration": with_server_token(built.declaration) if built.declaration else None,
                     "why_not": "; ".join(built.notes) or None,
                     "enforcements": [{"label": p.label, "target_version": p.target_version,
                                       "deadline_local": p.deadline_local} for p in order],
                     "acts_first": order[0].label if order else None,
                     "effective": scope.which_wins(device, device_specs, plan)})
    return {"policy": policy_summary(policy), "warnings": warnings, "devices": rows}
