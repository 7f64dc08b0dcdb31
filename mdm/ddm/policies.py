"""iOS patch policies: the validated settings, and the service that creates, edits, deletes and binds them.

Every caller (CLI, UI, API) goes through ``validate_settings`` and the service functions here, so the
same error messages appear everywhere. Each error carries the field (the ``PolicySettings`` attribute,
for placing it next to its input and for the API's ``field`` key) and a message in the form's own words
(``FIELD_LABELS``, ``ACTION_LABELS``), e.g. "Install OS updates can't be Always On while Download is
User Controlled". Services audit (an update records only the changed fields, see
``mdm.models.audit_update``), hand the devices the change reaches to the DDM spine (``changes.replan``),
and end with ``unit_of_work.finish()`` (a flush under an edge; the edge commits once).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, fields
from typing import Iterable, Mapping

from ..extensions import db
from ..models import Device, DeviceGroup, audit, audit_update, group_members, utcnow
from ..unit_of_work import finish
from . import changes
from .models import DevicePatchTarget, PatchPolicy, PolicyBinding, PolicyGroup
from .targets import ANCHOR_FIRST_MISSED, DEADLINE_ANCHORS

DEFAULT_NAME = "iOS patch policy"
MAX_DEFERRAL_DAYS = 90        # softwareupdate.settings.yaml: Deferrals.CombinedPeriodInDays range 1-90
MAX_GRACE_DAYS = 365
DEFAULT_GRACE_DAYS = 30

# Apple's rangelist values (softwareupdate.settings.yaml: AutomaticActions.*, Beta.ProgramEnrollment).
ACTION_VALUES = ("Allowed", "AlwaysOn", "AlwaysOff")
CADENCES = ("All", "Oldest", "Newest")         # RecommendedCadence rangelist
_ALIASES = {"usercontrolled": "Allowed", "user": "Allowed", "allowed": "Allowed", "userallowed": "Allowed",
            "alwayson": "AlwaysOn", "on": "AlwaysOn", "alwaysoff": "AlwaysOff", "off": "AlwaysOff"}

# The policy form's words for each setting and value: every error message speaks them, so the form, the
# API and the CLI say the same thing the admin sees on screen.
FIELD_LABELS = {
    "name": "Name", "deferral_days": "Defer OS updates", "enforce": "Enforce automatic updates",
    "grace_days": "Grace period", "local_time": "Local device time", "details_url": "Details URL",
    "notifications_all": "Notifications", "cadence": "Recommended cadence",
    "auto_download": "Download", "auto_install_os": "Install OS updates",
    "auto_install_security": "Install security responses and system files",
    "rsr_offer": "Offer Rapid Security Responses", "rsr_rollback": "Allow rollback",
    "beta_enrollment": "Beta program enrollment", "beta_programs": "Offered beta programs",
    "stay_on_major": "Major upgrades",
    "deadline_anchor": "Deadline counted from",
    "exploited_grace_days": "Grace period for actively exploited vulnerabilities",
}
ACTION_LABELS = {"Allowed": "User Controlled", "AlwaysOn": "Always On", "AlwaysOff": "Always Off"}
BETA_LABELS = {"Allowed": "User Allowed", "AlwaysOn": "Always On", "AlwaysOff": "Always Off"}
CADENCE_LABELS = {"All": "All versions", "Oldest": "Oldest only", "Newest": "Newest only"}
ANCHOR_LABELS = {"first_missed": "The first release the device missed",
                 "newest": "The newest release (restarts with each release)"}
_ANCHOR_ALIASES = {"firstmissed": "first_missed", "first": "first_missed", "anchored": "first_missed",
                   "newest": "newest", "restart": "newest", "latest": "newest"}
# Settings Apple defines for macOS only (softwareupdate.settings.yaml: AutomaticActions.InstallSecurityUpdate
# has ``supportedOS: iOS: introduced: n/a``). An iOS policy may only leave them at Apple's default.
MACOS_ONLY_SETTINGS = {"auto_install_security": "Allowed"}

# Download/install pairs that devices refuse with "Invalid global settings declaration".
INVALID_ACTION_PAIRS = {
    ("Allowed", "AlwaysOn"): "installs cannot be forced on while the user controls downloads. "
                             "Set Download to Always On",
    ("AlwaysOff", "Allowed"): "the user cannot be offered automatic installs while downloads are always off. "
                              "Set Install OS updates to Always Off, or allow downloads",
    ("AlwaysOff", "AlwaysOn"): "installs cannot be always on while downloads are always off. "
                               "Set Download to Always On",
}


@dataclass(frozen=True)
class PolicySettings:
    name: str
    deferral_days: int = 0                 # 0 = none, else 1-90
    enforce: bool = False
    grace_days: int = DEFAULT_GRACE_DAYS   # 0-365
    local_time: str | None = None          # "HH:MM", required when enforcing
    details_url: str | None = None
    notifications_all: bool = True         # False = notify one hour before the deadline only
    cadence: str = "All"
    auto_download: str = "Allowed"
    auto_install_os: str = "Allowed"
    auto_install_security: str = "Allowed"  # macOS-only key in Apple's schema: stored, never sent to iOS
    rsr_offer: bool = True
    rsr_rollback: bool = True
    beta_enrollment: str = "Allowed"
    beta_programs: tuple = ()              # ((description, token), ...)
    stay_on_major: bool = False
    # targets.py: which release's deferral end starts the grace period. New policies anchor on the first
    # release a device missed; policies created before anchoring existed were migrated to "newest".
    deadline_anchor: str = ANCHOR_FIRST_MISSED
    exploited_grace_days: int | None = None   # shorter grace when a missed release fixes an exploited CVE

    def to_dict(self, *, redact_tokens: bool = False) -> dict:
        data = asdict(self)
        data["beta_programs"] = [[d, "***" if redact_tokens else t] for d, t in self.beta_programs]
        return data

    def digest(self) -> str:
        """Changes whenever anything a device receives could change."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


SETTING_FIELDS = tuple(f.name for f in fields(PolicySettings))
OPTIONAL_FIELDS = ("local_time", "details_url", "exploited_grace_days")   # None is a value, not "unparsed"


@dataclass(frozen=True)
class FieldError:
    """``field`` is the setting's id (where the form shows it); ``message`` is a whole sentence for a person."""
    field: str
    message: str

    def __str__(self):
        return f"{self.field}: {self.message}"


class PolicyError(ValueError):
    """Invalid input or a refused operation. ``errors`` name the field; the HTTP layer answers 400/404/409."""

    def __init__(self, errors: Iterable[FieldError] | str, field: str = "policy"):
        self.errors = [FieldError(field, errors)] if isinstance(errors, str) else list(errors)
        super().__init__("; ".join(str(e) for e in self.errors))


# ---- parsing and validation -------------------------------------------------------------------------

_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_TRUE = {"true", "1", "yes", "on", "y"}
_FALSE = {"false", "0", "no", "off", "n"}


def label(field: str) -> str:
    """The form's name for a setting (the id itself for a field the form does not have)."""
    return FIELD_LABELS.get(field, field)


def _choice_words(field: str, allowed) -> str:
    """"User Controlled, Always On or Always Off (Allowed, AlwaysOn, AlwaysOff)": the form's words, then the
    values the API and CLI take."""
    words = {"cadence": CADENCE_LABELS, "beta_enrollment": BETA_LABELS,
             "deadline_anchor": ANCHOR_LABELS}.get(field, ACTION_LABELS)
    shown = [words.get(v, v) for v in allowed]
    return f"{', '.join(shown[:-1])} or {shown[-1]} ({', '.join(allowed)})"


def _as_int(value, field, errors):
    if isinstance(value, bool):
        errors.append(FieldError(field, f"{label(field)} must be a whole number of days"))
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    errors.append(FieldError(field, f"{label(field)} must be a whole number of days, got {value!r}"))
    return None


def _as_bool(value, field, errors):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    errors.append(FieldError(field, f"{label(field)} must be true or false, got {value!r}"))
    return None


def _as_choice(value, field, errors, allowed, aliases=None):
    if isinstance(value, str):
        for choice in allowed:
            if value.strip().lower() == choice.lower():
                return choice
        key = re.sub(r"[\s_-]", "", value).lower()
        if aliases and key in aliases:
            return aliases[key]
    errors.append(FieldError(field, f"{label(field)} must be {_choice_words(field, allowed)}, got {value!r}"))
    return None


def _as_programs(value, errors):
    """[(description, token)], [[d, t]], [{"description": d, "token": t}] or ["description=token"]."""
    if value in (None, ""):
        return ()
    if not isinstance(value, (list, tuple)):
        errors.append(FieldError("beta_programs", "Offered beta programs must be a list of (description, token) "
                                                  "pairs"))
        return None
    programs = []
    for i, item in enumerate(value):
        if isinstance(item, Mapping):
            pair = (item.get("description", item.get("Description")), item.get("token", item.get("Token")))
        elif isinstance(item, str) and "=" in item:
            pair = tuple(part.strip() for part in item.split("=", 1))
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            pair = tuple(item)
        else:
            errors.append(FieldError("beta_programs", f"Beta program {i + 1} must be a description and a token"))
            return None
        description, token = pair
        if not isinstance(description, str) or not description.strip():
            errors.append(FieldError("beta_programs", f"Beta program {i + 1} needs a description"))
            return None
        if not isinstance(token, str) or not token.strip():
            errors.append(FieldError("beta_programs", f"Beta program {i + 1} ({description}) needs a seeding-service "
                                                      f"token"))
            return None
        programs.append((description.strip(), token.strip()))
    tokens = [t for _, t in programs]
    if len(set(tokens)) != len(tokens):
        errors.append(FieldError("beta_programs", "Offered beta programs: the same token is offered twice"))
        return None
    return tuple(programs)


def _parse_field(field: str, value, errors):
    if field == "name":
        if not isinstance(value, str) or not value.strip():
            errors.append(FieldError("name", "Name must not be empty"))
            return None
        if len(value.strip()) > 255:
            errors.append(FieldError("name", "Name must be at most 255 characters"))
            return None
        return value.strip()
    if field in ("deferral_days", "grace_days"):
        return _as_int(value, field, errors)
    if field in ("enforce", "notifications_all", "rsr_offer", "rsr_rollback", "stay_on_major"):
        return _as_bool(value, field, errors)
    if field in ("local_time", "details_url"):
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if not isinstance(value, str):
            errors.append(FieldError(field, f"{label(field)} must be text, got {value!r}"))
            return None
        return value.strip()
    if field == "cadence":
        return _as_choice(value, field, errors, CADENCES)
    if field in ("auto_download", "auto_install_os", "auto_install_security", "beta_enrollment"):
        return _as_choice(value, field, errors, ACTION_VALUES, _ALIASES)
    if field == "beta_programs":
        return _as_programs(value, errors)
    if field == "deadline_anchor":
        return _as_choice(value, field, errors, DEADLINE_ANCHORS, _ANCHOR_ALIASES)
    if field == "exploited_grace_days":
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "off", "none", "null")):
            return None
        return _as_int(value, field, errors)
    raise KeyError(field)


def check_rules(s: PolicySettings) -> list[FieldError]:
    """Rules between fields and ranges; every message says, in the form's words, what to change."""
    errors = []
    if not (s.deferral_days == 0 or 1 <= s.deferral_days <= MAX_DEFERRAL_DAYS):
        errors.append(FieldError("deferral_days", f"Defer OS updates must be 0 (no deferral) or between 1 and "
                                                  f"{MAX_DEFERRAL_DAYS} days, got {s.deferral_days}"))
    if not 0 <= s.grace_days <= MAX_GRACE_DAYS:
        errors.append(FieldError("grace_days", f"Grace period must be between 0 and {MAX_GRACE_DAYS} days, "
                                               f"got {s.grace_days}"))
    if s.exploited_grace_days is not None and not 0 <= s.exploited_grace_days <= s.grace_days:
        errors.append(FieldError("exploited_grace_days", f"Grace period for actively exploited vulnerabilities must "
                                                         f"be between 0 and the Grace period ({s.grace_days} days), "
                                                         f"or off; got {s.exploited_grace_days}"))
    if s.local_time is not None and not _TIME.match(s.local_time):
        errors.append(FieldError("local_time", f"Local device time must be a 24-hour time HH:MM (e.g. 18:00), "
                                               f"got {s.local_time!r}"))
    elif s.enforce and s.local_time is None:
        errors.append(FieldError("local_time", "Local device time is required when enforcement is on (HH:MM, "
                                               "device-local time)"))
    if s.details_url is not None and not re.match(r"^https?://[^\s/]+", s.details_url, re.IGNORECASE):
        errors.append(FieldError("details_url", f"Details URL must start with http:// or https:// and name a "
                                                f"host, got {s.details_url!r}"))
    # Only the OS install pairs with the download setting on iOS: InstallSecurityUpdate is a macOS-only key
    # (softwareupdate.settings.yaml), so auto_install_security is stored but never sent to an iOS device.
    why = INVALID_ACTION_PAIRS.get((s.auto_download, s.auto_install_os))
    if why:
        errors.append(FieldError("auto_install_os", f"Install OS updates can't be {ACTION_LABELS[s.auto_install_os]} "
                                                    f"while Download is {ACTION_LABELS[s.auto_download]}: devices "
                                                    f"reject it (\"Invalid global settings declaration\"); "
                                                    f"{why}."))
    # softwareupdate.settings.yaml, Beta.OfferPrograms: "must only be present if the ProgramEnrollment
    # key is set to Allowed or AlwaysOn".
    if s.beta_programs and s.beta_enrollment == "AlwaysOff":
        errors.append(FieldError("beta_programs", "Offered beta programs can't be set while Beta program enrollment "
                                                  "is Always Off (AlwaysOff): Apple takes OfferPrograms only with "
                                                  "Allowed or AlwaysOn. Remove the programs or allow enrollment."))
    return errors


def check_platform(data: Mapping, settings: PolicySettings, platform: str | None,
                   base: PolicySettings | None) -> list[FieldError]:
    """Refuse a macOS-only setting given for an iOS policy (iOS covers iPadOS). A value equal to Apple's
    default, or unchanged from what is stored, is accepted so a read-modify-write round trip still works."""
    if platform != "iOS":
        return []
    errors = []
    for field, default in MACOS_ONLY_SETTINGS.items():
        value = getattr(settings, field)
        if field in data and value != default and (base is None or value != getattr(base, field)):
            errors.append(FieldError(field, f"{label(field)} is macOS only: iOS and iPadOS devices have no such "
                                            f"setting (Apple's InstallSecurityUpdate). Leave it "
                                            f"{ACTION_LABELS[default]} ({default}) for an iOS & iPadOS policy."))
    return errors


def validate_settings(data: Mapping, *, base: PolicySettings | None = None,
                      exclude_policy_id: int | None = None,
                      platform: str | None = None) -> tuple[PolicySettings | None, list[FieldError]]:
    """Parse ``data`` (strings from forms/CLI or JSON values) over ``base`` (the current settings for an
    edit, defaults for a new policy). With ``platform`` ("iOS"), settings that platform lacks are refused.
    Returns (settings, []) or (None, errors)."""
    errors: list[FieldError] = []
    unknown = sorted(set(data) - set(SETTING_FIELDS))
    for name in unknown:
        errors.append(FieldError(name, f"{name} is not a policy setting (unknown field)"))
    values = asdict(base) if base else {}
    if base:
        values["beta_programs"] = base.beta_programs
    for field in SETTING_FIELDS:
        if field in data:
            parsed = _parse_field(field, data[field], errors)
            if parsed is not None or field in OPTIONAL_FIELDS:
                values[field] = parsed
    if "name" not in values or values["name"] is None:
        if "name" in data:
            return None, errors
        values["name"] = default_policy_name()
    if errors:
        return None, errors
    settings = PolicySettings(**values)
    errors = check_rules(settings) + check_platform(data, settings, platform, base)
    clash = PatchPolicy.query.filter(db.func.lower(PatchPolicy.name) == settings.name.lower())
    if exclude_policy_id is not None:
        clash = clash.filter(PatchPolicy.id != exclude_policy_id)
    if clash.first() is not None:
        errors.insert(0, FieldError("name", f"A policy named {settings.name!r} already exists; choose another "
                                            f"name"))
    return (None, errors) if errors else (settings, [])


def default_policy_name() -> str:
    taken = {n.lower() for (n,) in db.session.query(PatchPolicy.name)}
    name, n = DEFAULT_NAME, 1
    while name.lower() in taken:
        n += 1
        name = f"{DEFAULT_NAME} {n}"
    return name


def settings_of(policy: PatchPolicy) -> PolicySettings:
    values = {f: getattr(policy, f) for f in SETTING_FIELDS}
    values["beta_programs"] = tuple(tuple(p) for p in (policy.beta_programs or ()))
    return PolicySettings(**values)


def _store(policy: PatchPolicy, settings: PolicySettings) -> None:
    for field in SETTING_FIELDS:
        setattr(policy, field, getattr(settings, field))
    policy.beta_programs = [list(p) for p in settings.beta_programs]


# ---- lookups ----------------------------------------------------------------------------------------

def get_policy(ref) -> PatchPolicy | None:
    """By id, by name (case-insensitive), or by ring: the iOS policy of the policy group with that name."""
    if isinstance(ref, PatchPolicy):
        return ref
    text = str(ref).strip()
    if text.isdigit():
        policy = db.session.get(PatchPolicy, int(text))
        if policy is not None:
            return policy
    policy = PatchPolicy.query.filter(db.func.lower(PatchPolicy.name) == text.lower()).first()
    if policy is None:
        group = PolicyGroup.query.filter(db.func.lower(PolicyGroup.name) == text.lower()).first()
        ios = [p for p in group.policies if p.platform == "iOS"] if group else []
        policy = ios[0] if len(ios) == 1 else None
    return policy


def require_policy(ref) -> PatchPolicy:
    policy = get_policy(ref)
    if policy is None:
        raise PolicyError(f"no patch policy {ref!r}", field="policy")
    return policy


def list_policies() -> list[PatchPolicy]:
    return PatchPolicy.query.order_by(PatchPolicy.id).all()


def find_device(ref) -> Device | None:
    """By database id, UDID or serial number."""
    if isinstance(ref, Device):
        return ref
    if isinstance(ref, int) and not isinstance(ref, bool):
        return db.session.get(Device, ref)      # callers holding ids (UI, API) mean ids
    text = str(ref).strip()
    device = Device.query.filter((Device.udid == text) | (Device.serial_number == text)).first()
    if device is None and text.isdigit():
        device = db.session.get(Device, int(text))
    return device


def find_group(ref) -> DeviceGroup | None:
    if isinstance(ref, DeviceGroup):
        return ref
    text = str(ref).strip()
    group = DeviceGroup.query.filter(db.func.lower(DeviceGroup.name) == text.lower()).first()
    if group is None and text.isdigit():
        group = db.session.get(DeviceGroup, int(text))
    return group


def devices_reached(policy_id: int) -> set[int]:
    """Devices the policy's bindings reach (any OS) plus devices whose stored plan names it."""
    ids = {d for (d,) in db.session.query(PolicyBinding.device_id)
           .filter(PolicyBinding.policy_id == policy_id, PolicyBinding.device_id.isnot(None))}
    group_ids = [g for (g,) in db.session.query(PolicyBinding.group_id)
                 .filter(PolicyBinding.policy_id == policy_id, PolicyBinding.group_id.isnot(None))]
    if group_ids:
        ids |= {d for (d,) in db.session.query(group_members.c.device_id)
                .filter(group_members.c.group_id.in_(group_ids))}
    ids |= {d for (d,) in db.session.query(DevicePatchTarget.device_id)
            .filter(DevicePatchTarget.policy_id == policy_id)}
    return ids


def _recompute(device_ids: set[int]) -> set[int]:
    """Hand the devices to the DDM spine (plans, sets, results; through its inbox: ``plan`` reads this
    module's settings, so this module sits below the spine)."""
    if not device_ids:
        return set()
    return changes.replan(device_ids)


# ---- service ----------------------------------------------------------------------------------------

def create_policy(data: Mapping, *, policy_group: PolicyGroup | None = None, platform: str = "iOS",
                  actor: str = "system", source: str | None = None) -> PatchPolicy:
    settings, errors = validate_settings(data, platform=platform)
    if errors:
        raise PolicyError(errors)
    policy = PatchPolicy(platform=platform, policy_group=policy_group)
    _store(policy, settings)
    db.session.add(policy)
    db.session.flush()
    audit("patch_policy.create", actor=actor, source=source, object_type="patch_policy", object_id=policy.id,
          after=settings.to_dict(redact_tokens=True))
    finish()
    return policy


def update_policy(ref, changes: Mapping, *, actor: str = "system", source: str | None = None) -> PatchPolicy:
    policy = require_policy(ref)
    before = settings_of(policy)
    settings, errors = validate_settings(changes, base=before, exclude_policy_id=policy.id,
                                         platform=policy.platform)
    if errors:
        raise PolicyError(errors)
    if settings == before:
        return policy
    _store(policy, settings)
    policy.updated_at = utcnow()
    audit_update("patch_policy.update", name=settings.name, actor=actor, source=source, object_type="patch_policy",
                 object_id=policy.id, before=before.to_dict(redact_tokens=True),
                 after=settings.to_dict(redact_tokens=True))
    db.session.flush()
    _recompute(devices_reached(policy.id))
    finish()
    return policy


def delete_policy(ref, *, actor: str = "system", source: str | None = None) -> set[int]:
    """Delete the policy and its bindings; its declarations leave every device on their next sync.
    Returns the ids of devices whose plan changed."""
    policy = require_policy(ref)
    affected = devices_reached(policy.id)
    audit("patch_policy.delete", actor=actor, source=source, object_type="patch_policy", object_id=policy.id,
          before=settings_of(policy).to_dict(redact_tokens=True))
    db.session.delete(policy)
    db.session.flush()
    changed = _recompute(affected)
    finish()
    return changed


def bind_policy(ref, *, devices: Iterable = (), groups: Iterable = (), actor: str = "system",
                source: str | None = None) -> list[PolicyBinding]:
    """Bind to devices (id, UDID, serial) and/or device groups (name or id). Existing bindings are kept."""
    policy = require_policy(ref)
    targets = resolve_targets(devices, groups)
    created, affected = [], set()
    for kind, obj in targets:
        column = PolicyBinding.device_id if kind == "device" else PolicyBinding.group_id
        if PolicyBinding.query.filter(PolicyBinding.policy_id == policy.id, column == obj.id).first():
            continue
        binding = PolicyBinding(policy=policy, **{f"{kind}_id": obj.id})
        db.session.add(binding)
        created.append(binding)
        affected |= binding_devices(kind, obj)
        audit("patch_policy.bind", actor=actor, source=source, object_type="patch_policy", object_id=policy.id,
              after={kind: obj.id, "name": target_label(kind, obj)})
    db.session.flush()
    _recompute(affected)
    finish()
    return created


def unbind_policy(ref, *, devices: Iterable = (), groups: Iterable = (), actor: str = "system",
                  source: str | None = None) -> int:
    """Remove bindings; returns how many were removed. Unknown devices/groups are errors, missing
    bindings are not (the end state is what was asked for)."""
    policy = require_policy(ref)
    removed, affected = 0, set()
    for kind, obj in resolve_targets(devices, groups):
        column = PolicyBinding.device_id if kind == "device" else PolicyBinding.group_id
        binding = PolicyBinding.query.filter(PolicyBinding.policy_id == policy.id, column == obj.id).first()
        if binding is None:
            continue
        db.session.delete(binding)
        removed += 1
        affected |= binding_devices(kind, obj)
        audit("patch_policy.unbind", actor=actor, source=source, object_type="patch_policy", object_id=policy.id,
              before={kind: obj.id, "name": target_label(kind, obj)})
    db.session.flush()
    _recompute(affected)
    finish()
    return removed


def resolve_targets(devices, groups) -> list[tuple[str, object]]:
    """("device", Device) / ("group", DeviceGroup) for each reference, or PolicyError naming what is
    unknown; shared by every policy kind that binds to devices and groups."""
    targets, errors = [], []
    for ref in devices:
        device = find_device(ref)
        if device is None:
            errors.append(FieldError("device", f"no device {ref!r} (give an id, UDID or serial number)"))
        else:
            targets.append(("device", device))
    for ref in groups:
        group = find_group(ref)
        if group is None:
            errors.append(FieldError("group", f"no device group {ref!r}"))
        else:
            targets.append(("group", group))
    if errors:
        raise PolicyError(errors)
    if not targets:
        raise PolicyError("give at least one device or group", field="binding")
    return targets


def binding_devices(kind: str, obj) -> set[int]:
    """The device ids a binding target reaches (a device, or a group's members)."""
    if kind == "device":
        return {obj.id}
    return {d for (d,) in db.session.query(group_members.c.device_id).filter(group_members.c.group_id == obj.id)}


def target_label(kind: str, obj) -> str:
    return obj.name if kind == "group" else (obj.serial_number or obj.udid)


def policy_summary(policy: PatchPolicy) -> dict:
    """What ``patch show``/``list`` and the API print (beta tokens redacted)."""
    bindings = [{"device": b.device.udid, "serial_number": b.device.serial_number} if b.device_id
                else {"group": b.group.name} for b in policy.bindings]
    devices = db.session.query(db.func.count(DevicePatchTarget.device_id)).filter(
        DevicePatchTarget.policy_id == policy.id).scalar()
    return {"id": policy.id, "platform": policy.platform,
            "policy_group": policy.policy_group.name if policy.policy_group else None,
            **settings_of(policy).to_dict(redact_tokens=True),
            "bindings": bindings, "devices": devices,
            "created_at": policy.created_at.isoformat(), "updated_at": policy.updated_at.isoformat()}
