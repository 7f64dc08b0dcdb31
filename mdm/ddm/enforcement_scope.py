"""Which Software Update Enforcement policies reach which devices, the declaration each one becomes, and
which enforcement a device acts on first when it holds several.

Apple's schema (declarative/declarations/configurations/softwareupdate.enforcement.specific.yaml):
iOS 17.0+, ``apply: multiple``; payload TargetOSVersion (required), TargetBuildVersion,
TargetLocalDateTime ("yyyy-mm-ddThh:mm:ss", device-local, required), DetailsURL.

A policy applies to a bound iOS/iPadOS device whose model Apple's catalog (gdmf) lists the target
version for, unexpired (Apple only enforces what gdmf still lists). Mixed groups: other platforms are
"Not applicable". The declaration is left out (notes say why) below iOS 17 and once the device is at or
above the target: it is then Compliant, and the device would reject a target that is not newer.

Which wins (docs/patch-policies.md, "Several enforcements on one device"): the device holds every
enforcement declaration; each forces its own version at its own time, so the one with the earliest
TargetLocalDateTime acts first (the same time: the higher version). ``effective_order`` ranks a
device's enforcements, this module's and the patch policy's alike.

Pure functions take the data they need; ``for_devices`` is the one that reads the database.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Iterable

from sqlalchemy import select

from ..extensions import db
from ..models import Device, DeviceGroup, group_members, utcnow
from . import declarations as decl
from .enforcement_models import EnforcementBinding, EnforcementPolicy
from .plan import release_index   # catalog releases per model, cached per generation
from .targets import ReleaseIndex, version_key

IDENTIFIER_PREFIX = "mdm.enforce."
NOT_IOS = "not an iOS or iPadOS device"
MODEL_UNKNOWN = "model unknown (the device has not reported its model yet)"
_CHUNK = 500


def identifier(policy_id: int) -> str:
    return f"{IDENTIFIER_PREFIX}{policy_id}"


def policy_id_of(declaration_identifier: str) -> int | None:
    match = re.fullmatch(re.escape(IDENTIFIER_PREFIX) + r"(\d+)", declaration_identifier or "")
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class Enforcement:
    """One enforcement policy as it reaches one device (hashable: declaration sets are cached on it)."""
    policy_id: int
    name: str
    target_version: str
    target_build: str | None
    enforce_at: str               # "YYYY-MM-DDTHH:MM", device-local
    details_url: str | None
    binding: str                  # "device" or "group:<name>"
    applicable: bool
    reason: str | None = None     # why not applicable

    @property
    def target_local(self) -> str:
        """TargetLocalDateTime: "yyyy-mm-ddThh:mm:ss"."""
        return f"{self.enforce_at}:00"


# ---- the catalog, per model --------------------------------------------------------------------------

def availability(index: ReleaseIndex, model: str, version: str, build: str | None,
                 now: dt.datetime) -> str | None:
    """None when Apple lists ``version`` (and ``build``) for ``model`` and it has not expired; else why not."""
    wanted = version_key(version)
    for release in index.releases_for(model):
        if release.key != wanted:
            continue
        if release.expired(now):
            return f"{version} expired for {model} on {release.expires.isoformat()} (Apple no longer signs it)"
        if build and build not in release.builds:
            return f"{version} for {model} is build {', '.join(release.builds)}, not {build}"
        return None
    return f"{version} is not in Apple's catalog for {model}"


# ---- who is reached ----------------------------------------------------------------------------------

def _policy_rows() -> dict[int, EnforcementPolicy]:
    return {p.id: p for p in EnforcementPolicy.query.filter(EnforcementPolicy.platform == "iOS")}


def reach(device_ids: Iterable[int] | None = None, policy_id: int | None = None) -> dict[int, list[tuple[int, str]]]:
    """{device id: [(policy id, binding label)]}: direct bindings first, then groups by name."""
    wanted = None if device_ids is None else set(device_ids)
    query = select(EnforcementBinding.policy_id, EnforcementBinding.device_id, EnforcementBinding.group_id)
    if policy_id is not None:
        query = query.where(EnforcementBinding.policy_id == policy_id)
    out: dict[int, list[tuple[int, str]]] = {}
    groups: dict[int, list[int]] = {}
    for pid, device_id, group_id in db.session.execute(query):
        if device_id is not None:
            if wanted is None or device_id in wanted:
                out.setdefault(device_id, []).append((pid, "device"))
        else:
            groups.setdefault(group_id, []).append(pid)
    if groups:
        names = dict(db.session.execute(select(DeviceGroup.id, DeviceGroup.name)
                                        .where(DeviceGroup.id.in_(list(groups)))).all())
        members = select(group_members.c.device_id, group_members.c.group_id).where(
            group_members.c.group_id.in_(list(groups)))
        if wanted is None:
            rows = db.session.execute(members).all()
        else:       # a device's sync reads its own memberships, not every member of a large group
            ids = sorted(wanted)
            rows = [r for start in range(0, len(ids), _CHUNK) for r in db.session.execute(
                members.where(group_members.c.device_id.in_(ids[start:start + _CHUNK])))]
        for device_id, group_id in rows:
            for pid in groups[group_id]:
                seen = {p for p, _ in out.get(device_id, ())}
                if pid not in seen:
                    out.setdefault(device_id, []).append((pid, f"group:{names.get(group_id, group_id)}"))
    return out


def devices_reached(policy_id: int) -> set[int]:
    return set(reach(policy_id=policy_id))


def for_devices(device_ids: Iterable[int], now: dt.datetime | None = None) -> dict[int, tuple[Enforcement, ...]]:
    """The enforcements reaching each of these devices (devices reached by none are absent)."""
    ids = sorted({int(i) for i in device_ids})
    if not ids or db.session.query(EnforcementBinding.id).first() is None:
        return {}
    now = now or utcnow()
    policies = _policy_rows()
    reached = reach(ids)
    if not reached:
        return {}
    index = release_index()
    facts = {}
    columns = (Device.id, Device.product_name, Device.model_name, Device.software_update_device_id)
    wanted = sorted(reached)
    for start in range(0, len(wanted), _CHUNK):
        for row in db.session.execute(select(*columns).where(Device.id.in_(wanted[start:start + _CHUNK]))):
            facts[row[0]] = row[1:]
    out: dict[int, tuple[Enforcement, ...]] = {}
    cache: dict[tuple, Enforcement] = {}
    for device_id, pairs in reached.items():
        if device_id not in facts:
            continue
        product_name, model_name, su_id = facts[device_id]
        specs = []
        for pid, binding in sorted(pairs, key=lambda p: p[0]):
            policy = policies.get(pid)
            if policy is None:
                continue
            key = (pid, binding, product_name, model_name, su_id)
            spec = cache.get(key)
            if spec is None:
                spec = cache[key] = _spec(policy, binding, product_name, model_name, su_id, index, now)
            specs.append(spec)
        if specs:
            out[device_id] = tuple(specs)
    return out


def for_device(device) -> tuple[Enforcement, ...]:
    return for_devices([device.id]).get(device.id, ())


def _spec(policy, binding, product_name, model_name, su_id, index, now) -> Enforcement:
    platform = Device.platform.fget(_Facts(product_name, model_name))
    reason = None
    if platform == "unknown":
        reason = MODEL_UNKNOWN
    elif platform not in ("iOS", "iPadOS"):
        reason = NOT_IOS
    else:
        model = index.model_for(su_id, product_name)
        if model is None:
            reason = f"{product_name or model_name or 'this model'} is not in Apple's catalog"
        else:
            reason = availability(index, model, policy.target_version, policy.target_build, now)
    return Enforcement(policy.id, policy.name, policy.target_version, policy.target_build, policy.enforce_at,
                       policy.details_url, binding, reason is None, reason)


@dataclass
class _Facts:
    product_name: str | None
    model_name: str | None


# ---- the declaration ---------------------------------------------------------------------------------

def declaration(device, spec: Enforcement) -> decl.Built:
    """SoftwareUpdateEnforcementSpecific for one policy on one device, or None with a note saying why."""
    label = f"enforcement policy {spec.name!r}"
    if not spec.applicable:
        return decl.Built(None, [f"{label}: not applicable ({spec.reason})"])
    if not device.runs_ios:
        return decl.Built(None, [f"{label}: {NOT_IOS}"])
    installed = version_key(device.os_version)
    if decl.version_tuple(device.os_version) < decl.ENFORCEMENT_MIN_IOS:
        return decl.Built(None, [f"{label}: needs iOS 17"])
    if installed >= version_key(spec.target_version):
        return decl.Built(None, [f"{label}: device is compliant (on {device.os_version})"])
    payload = {"TargetOSVersion": spec.target_version, "TargetLocalDateTime": spec.target_local}
    if spec.target_build:
        payload["TargetBuildVersion"] = spec.target_build
    if spec.details_url:
        payload["DetailsURL"] = spec.details_url
    return decl.Built({"Type": decl.TYPE_ENFORCEMENT, "Identifier": identifier(spec.policy_id), "Payload": payload})


# ---- which enforcement acts first --------------------------------------------------------------------

@dataclass(frozen=True)
class Pending:
    """One enforcement a device holds and has not yet satisfied."""
    label: str                    # 'enforcement policy "X"' or 'patch policy "Y"'
    target_version: str
    deadline_local: str           # "yyyy-mm-ddThh:mm:ss"
    kind: str                     # "enforcement" or "patch"
    policy_id: int


def pending_enforcements(device, specs: Iterable[Enforcement], plan=None) -> list[Pending]:
    """The enforcements the device holds that still force something, in the order the device acts on
    them: earliest TargetLocalDateTime first; at the same time, the higher version first."""
    installed = version_key(device.os_version)
    out = []
    for spec in specs:
        if spec.applicable and installed < version_key(spec.target_version):
            out.append(Pending(f"enforcement policy {spec.name!r}", spec.target_version, spec.target_local,
                               "enforcement", spec.policy_id))
    if plan is not None and plan.settings.enforce and plan.target_version and plan.deadline_local \
            and not plan.compliant and installed < version_key(plan.target_version):
        out.append(Pending(f"patch policy {plan.policy_name!r}", plan.target_version, plan.deadline_local,
                           "patch", plan.policy_id))
    return effective_order(out)


def effective_order(pending: list[Pending]) -> list[Pending]:
    return sorted(pending, key=lambda p: (p.deadline_local, tuple(-n for n in version_key(p.target_version))))


def which_wins(device, specs: Iterable[Enforcement], plan=None) -> str | None:
    """A sentence for results and preview when the device holds more than one enforcement."""
    order = pending_enforcements(device, specs, plan)
    if len(order) < 2:
        return None
    first, *rest = order
    later = "; ".join(f"then {p.label} ({p.target_version} by {p.deadline_local})" for p in rest)
    return f"acts first on {first.label}: {first.target_version} by {first.deadline_local}; {later}"


def served_order_note(declarations: list[dict], patch_policy_id: int) -> str | None:
    """For a patch result: where the patch policy's enforcement stands among the enforcement declarations
    the device is served (pure: reads only the served set). None when it holds no other enforcement."""
    patch_identifier = decl.enforcement_identifier(patch_policy_id)
    held = [Pending(d["Identifier"], d["Payload"]["TargetOSVersion"], d["Payload"]["TargetLocalDateTime"],
                    "patch" if d["Identifier"] == patch_identifier else "enforcement", policy_id_of(d["Identifier"]) or 0)
            for d in declarations or () if d.get("Type") == decl.TYPE_ENFORCEMENT]
    if len(held) < 2 or not any(p.kind == "patch" for p in held):
        return None
    first, *rest = effective_order(held)
    if first.kind == "patch":
        others = ", ".join(f"enforcement policy #{p.policy_id} ({p.target_version} by {p.deadline_local})"
                           for p in rest if p.kind == "enforcement")
        return f"acts first; then {others}"
    return f"enforcement policy #{first.policy_id} acts first: {first.target_version} by {first.deadline_local}"
