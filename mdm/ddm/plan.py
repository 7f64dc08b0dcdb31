"""Per-device patch plans: which policy reaches each device, its target and deadline, stored as facts.

``plan_devices`` is the one place plans are computed: the first stage of the DDM spine
(``mdm/ddm/spine.py``). It is incremental: it loads the devices in bulk, computes each distinct (model,
OS version, policy) once, writes only rows that changed, and returns the changed devices; the spine
hands them to the next stage (declaration sets). It flushes; the edge commits.

The deadline follows the policy's ``deadline_anchor`` and ``exploited_grace_days`` (``targets.plan_deadline``,
with SOFA's CVE facts carried by the release index); the plan stores the anchor release and a sentence
saying why the deadline falls where it does (``deadline_anchor_version``, ``deadline_note``).

Conflicts: a direct device binding beats a group binding. Within the same kind the strictest
policy wins: enforcement on before off, then the shortest deferral, then the shortest grace period,
then the oldest policy. The losers are listed in ``PatchPlan.conflicts``.
"""
from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import operator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Iterable

from sqlalchemy import Text, bindparam, delete, func, insert, select, type_coerce, update

from ..bulk import collector_paused, insert_rows
from ..extensions import db
from ..models import Device, DeviceGroup, group_members, utcnow
from ..unit_of_work import finish
from . import catalog, changes, sofa
from .models import CatalogRelease, DevicePatchTarget, PatchPolicy, PolicyBinding, RecomputeRequest
from .policies import PolicySettings, settings_of
from .targets import REASON_MODEL_UNKNOWN, ReleaseIndex, build_release_index, choose_target, deadline_instant_utc, \
    plan_deadline

log = logging.getLogger(__name__)

_CHUNK = 500      # ids per IN (...) clause: well under SQLite's variable limit


@dataclass(frozen=True)
class PatchPlan:
    policy_id: int
    policy_name: str
    binding: str                  # "device" or "group:<group name>"
    settings: PolicySettings
    target_version: str | None
    target_build: str | None
    deadline_local: str | None    # "yyyy-mm-ddThh:mm:ss", device-local, no offset (TargetLocalDateTime)
    deadline_utc: dt.datetime | None  # the instant in the device's zone; None when the zone is unknown
    reason: str | None            # why no enforcement: "compliant", "model unknown", "no candidate release", ...
    compliant: bool
    conflicts: tuple[str, ...]
    deadline_anchor_version: str | None = None   # the release the deadline counts from (targets.Deadline)
    deadline_note: str | None = None             # "deadline counted from iOS 18.1 (first release ...)"


def patch_plan_for_device(device) -> PatchPlan | None:
    """The STORED plan (as of the last recompute); None when no iOS patch policy reaches the device."""
    device_id = device if isinstance(device, int) else device.id
    row = db.session.get(DevicePatchTarget, device_id)
    if row is None or row.policy_id is None:
        return None
    policy = db.session.get(PatchPolicy, row.policy_id)
    if policy is None:
        return None
    return PatchPlan(policy_id=policy.id, policy_name=policy.name, binding=row.binding,
                     settings=settings_of(policy), target_version=row.target_version,
                     target_build=row.target_build, deadline_local=row.deadline_local,
                     deadline_utc=row.deadline_utc, reason=row.reason, compliant=bool(row.compliant),
                     conflicts=tuple(row.conflicts or ()), deadline_anchor_version=row.deadline_anchor_version,
                     deadline_note=row.deadline_note)


def hypothetical_plan(device, settings: PolicySettings, *, policy_id: int | None = None,
                      now: dt.datetime | None = None) -> PatchPlan:
    """The plan ``settings`` would give ``device`` now, computed as ``plan_devices`` computes it (the same
    ``_plan_row``) and stored nowhere: the policy form's preview. ``policy_id`` names the saved policy the
    settings edit, whose grace period keeps counting from when it started applying to the device."""
    now = now or utcnow()
    stored = db.session.get(DevicePatchTarget, device.id)
    applied_at = (stored.applied_at if stored is not None and policy_id and stored.policy_id == policy_id
                  and stored.applied_at else now)
    row = (device.id, device.product_name, device.model_name, device.software_update_device_id,
           device.os_version, device.enrollment_status, device.time_zone)
    key = policy_id or 0
    values = _plan_row(row, key, {key: settings}, release_index(), {}, applied_at, now)
    fields = PatchPlan.__dataclass_fields__
    return PatchPlan(policy_id=key, policy_name=settings.name, binding="preview", settings=settings, conflicts=(),
                     **{k: v for k, v in values.items() if k in fields})


# ---- the candidate index, cached per catalog generation --------------------------------------------

_index_cache: dict[str, tuple[tuple[int, int], ReleaseIndex]] = {}


def release_index() -> ReleaseIndex:
    """Catalog releases per model, with SOFA's CVE facts per version (cached per generation of both)."""
    key = str(db.engine.url)
    generation = (catalog.generation(), sofa.generation())
    cached = _index_cache.get(key)
    if cached and cached[0] == generation:
        return cached[1]
    index = build_release_index(CatalogRelease.query.filter(CatalogRelease.kind == "os").all(),
                                sofa.security_by_version())
    _index_cache[key] = (generation, index)
    return index


# ---- recomputation ----------------------------------------------------------------------------------

def _chunks(ids: list[int]):
    for i in range(0, len(ids), _CHUNK):
        yield ids[i:i + _CHUNK]


@functools.lru_cache(maxsize=1024)
def _runs_ios_or_unknown(product_name, model_name) -> bool:
    """Mixed groups apply the policy to iOS/iPadOS members only; a device that has not told us its
    model yet stays in, so its result can say "model unknown"."""
    platform = Device.platform.fget(SimpleNamespace(product_name=product_name, model_name=model_name))
    return platform in ("iOS", "iPadOS", "unknown")


def _strictness(policy: PatchPolicy) -> tuple:
    return (0 if policy.enforce else 1, policy.deferral_days, policy.grace_days, policy.created_at, policy.id)


_FIELDS = ("policy_id", "binding", "target_version", "target_build", "deadline_local", "deadline_utc", "reason",
           "compliant", "conflicts", "settings_digest", "deadline_anchor_version", "deadline_note", "applied_at")
_COMPARED = _FIELDS[:-1]
_compared = operator.itemgetter(*_COMPARED)   # a stored plan and a new one differ when these values do


def plan_devices(device_ids: Iterable[int] | None = None, *, now: dt.datetime | None = None) -> set[int]:
    """Recompute and store plans for ``device_ids`` (None = every device), and take them off the recompute
    queue. Flushes. Returns the ids whose plan changed (the spine refreshes their declarations). Runs with
    the cyclic garbage collector paused (``bulk.collector_paused``)."""
    with collector_paused():
        return _plan_devices(device_ids, now)


def _plan_devices(device_ids: Iterable[int] | None, now: dt.datetime | None) -> set[int]:
    started = utcnow()
    now = now or started
    catalog.ensure_catalog(now)
    index = release_index()
    wanted = None if device_ids is None else sorted(set(device_ids))

    policies = {p.id: p for p in PatchPolicy.query.filter(PatchPolicy.platform == "iOS")}
    settings = {pid: settings_of(p) for pid, p in policies.items()}
    digests = {pid: s.digest() for pid, s in settings.items()}
    direct, via_group, group_names = _load_reach(policies, wanted)

    stored = _load_rows(DevicePatchTarget, wanted)
    candidates = set(direct) | set(via_group) | set(stored)
    devices = {row[0]: row for row in _load_devices(None if wanted is None
                                                    else [i for i in wanted if i in candidates])}

    strictness = {pid: _strictness(p) for pid, p in policies.items()}
    winner_cache: dict[tuple, tuple] = {}
    plan_cache: dict[tuple, dict] = {}
    inserts, updates, deletes = [], [], []
    for device_id in sorted(candidates):
        old = stored.get(device_id)
        device = devices.get(device_id)
        if device is None or device[5] == "unenrolled" or not _runs_ios_or_unknown(device[1], device[2]):
            if old is not None:
                deletes.append(device_id)
            continue
        reach = (tuple(direct.get(device_id, ())), tuple(via_group.get(device_id, ())))
        if not reach[0] and not reach[1]:
            if old is not None:
                deletes.append(device_id)
            continue
        won = winner_cache.get(reach)
        if won is None:
            won = winner_cache[reach] = _winner(*reach, policies, strictness, group_names)
        winner_id, binding, conflicts = won
        applied_at = old["applied_at"] if old and old["policy_id"] == winner_id and old["applied_at"] else now
        new = {"policy_id": winner_id, "binding": binding, "conflicts": conflicts,
               "settings_digest": digests[winner_id], "applied_at": applied_at,
               **_plan_row(device, winner_id, settings, index, plan_cache, applied_at, now)}
        if old is None:
            inserts.append({"device_id": device_id, "changed_at": now, **new})
        elif _compared(old) != _compared(new):
            updates.append({"b_device_id": device_id, "changed_at": now, **new})

    _store_plans(inserts, updates, deletes)
    _dequeue(wanted, started)
    db.session.flush()
    db.session.expire_all()   # bulk statements bypass the identity map

    changed = {r["device_id"] for r in inserts} | {r["b_device_id"] for r in updates} | set(deletes)
    log.info("recompute: %d devices considered, %d changed (%d new, %d updated, %d removed)",
             len(candidates), len(changed), len(inserts), len(updates), len(deletes))
    return changed


def _store_plans(inserts: list[dict], updates: list[dict], deletes: list[int]) -> None:
    table = DevicePatchTarget.__table__
    if inserts:
        insert_rows(table, inserts)
    if updates:
        db.session.execute(update(table).where(table.c.device_id == bindparam("b_device_id")), updates)
    for chunk in _chunks(deletes):
        db.session.execute(delete(table).where(table.c.device_id.in_(chunk)))


def _dequeue(wanted: list[int] | None, started: dt.datetime) -> None:
    """Take the planned devices off the recompute queue (all of them: what was queued before the start)."""
    queue = RecomputeRequest.__table__
    if wanted is None:
        db.session.execute(delete(queue).where(queue.c.queued_at <= started))
    else:
        for chunk in _chunks(wanted):
            db.session.execute(delete(queue).where(queue.c.device_id.in_(chunk)))


def recompute(device_ids: Iterable[int] | None = None, *, now: dt.datetime | None = None,
              refresh: bool = True) -> set[int]:
    """For callers that hold only this module (scripts, tests): the whole spine for ``device_ids`` (None =
    every device), or only ``plan_devices`` when ``refresh`` is False, then ``unit_of_work.finish``.
    Returns the ids whose plan changed."""
    changed = changes.replan(device_ids, now=now) if refresh else plan_devices(device_ids, now=now)
    finish()
    return changed


def _load_reach(policies: dict, wanted: list[int] | None):
    """Which policies reach which devices: ({device: [policy]} directly, {device: [(policy, group)]} through
    groups, {group id: name}). Limited to ``wanted`` devices when given."""
    wanted_set = None if wanted is None else set(wanted)
    direct: dict[int, list[int]] = {}
    via_group: dict[int, list[tuple[int, int]]] = {}
    bound_groups: dict[int, list[int]] = {}
    for policy_id, device_id, group_id in db.session.execute(
            select(PolicyBinding.policy_id, PolicyBinding.device_id, PolicyBinding.group_id)):
        if policy_id not in policies:
            continue
        if device_id is not None:
            if wanted_set is None or device_id in wanted_set:
                direct.setdefault(device_id, []).append(policy_id)
        else:
            bound_groups.setdefault(group_id, []).append(policy_id)
    if not bound_groups:
        return direct, via_group, {}
    group_names = dict(db.session.execute(select(DeviceGroup.id, DeviceGroup.name)).all())
    query = select(group_members.c.device_id, group_members.c.group_id).where(
        group_members.c.group_id.in_(list(bound_groups)))
    member_rows = (db.session.execute(query).all() if wanted is None else
                   [r for chunk in _chunks(wanted) for r in db.session.execute(
                       query.where(group_members.c.device_id.in_(chunk)))])
    for device_id, group_id in member_rows:
        for policy_id in bound_groups[group_id]:
            via_group.setdefault(device_id, []).append((policy_id, group_id))
    return direct, via_group, group_names


def _load_rows(model, wanted: list[int] | None) -> dict[int, dict]:
    table = model.__table__
    # conflicts read as raw text: decoding 100,000 JSON "[]" values would dominate the hourly run.
    columns = [table.c.device_id] + [type_coerce(table.c[f], Text) if f == "conflicts" else table.c[f]
                                     for f in _FIELDS]
    query = select(*columns)
    rows = (db.session.execute(query).all() if wanted is None else
            [r for chunk in _chunks(wanted) for r in db.session.execute(query.where(table.c.device_id.in_(chunk)))])
    stored = {}
    for r in rows:
        values = dict(zip(_FIELDS, r[1:]))
        raw = values["conflicts"]
        # (PostgreSQL's driver hands JSON columns over decoded whatever the SQL type says.)
        values["conflicts"] = ([] if raw in (None, "[]") else json.loads(raw) if isinstance(raw, str) else raw)
        stored[r[0]] = values
    return stored


def _load_devices(ids: list[int] | None):
    """Every device when ``ids`` is None (one scan beats thousands of IN lists), else those."""
    query = select(Device.id, Device.product_name, Device.model_name, Device.software_update_device_id,
                   Device.os_version, Device.enrollment_status, Device.time_zone)
    if ids is None:
        yield from db.session.execute(query)
        return
    for chunk in _chunks(ids):
        yield from db.session.execute(query.where(Device.id.in_(chunk)))


def _winner(direct_ids, group_pairs, policies, strictness, group_names) -> tuple[int, str, list[str]]:
    """(winning policy id, binding label, names of the policies that lost)."""
    if direct_ids:
        winner = min(direct_ids, key=strictness.__getitem__)
        binding = "device"
    else:
        winner = min((p for p, _ in group_pairs), key=strictness.__getitem__)
        group_id = min(g for p, g in group_pairs if p == winner)
        binding = f"group:{group_names.get(group_id, group_id)}"
    losers = {p for p in direct_ids if p != winner} | {p for p, _ in group_pairs if p != winner}
    return winner, binding, sorted(policies[p].name for p in losers)


def _plan_row(device, winner_id, settings, index, cache, applied_at, now) -> dict:
    """Target, deadline and reason for one device; memoised on what they depend on."""
    _device_id, product_name, _model_name, su_device_id, os_version, _status, time_zone = device
    key = (winner_id, su_device_id, product_name, os_version, applied_at, time_zone)
    cached = cache.get(key)
    if cached is not None:
        return cached
    s = settings[winner_id]
    model = index.model_for(su_device_id, product_name)
    row = {"target_version": None, "target_build": None, "deadline_local": None, "deadline_utc": None,
           "deadline_anchor_version": None, "deadline_note": None}
    if model is None:
        row.update(compliant=False, reason=REASON_MODEL_UNKNOWN)
    else:
        choice = choose_target(index.releases_for(model), os_version, deferral_days=s.deferral_days,
                               stay_on_major=s.stay_on_major, now=now)
        row.update(compliant=choice.compliant, reason=choice.reason, target_version=choice.target_version,
                   target_build=choice.target_build)
        if choice.release is not None and s.enforce and s.local_time:
            deadline = plan_deadline(
                index.releases_for(model), os_version, choice.release, deferral_days=s.deferral_days,
                grace_days=s.grace_days, local_time=s.local_time, applied_at=applied_at, now=now,
                anchor_rule=s.deadline_anchor, exploited_grace_days=s.exploited_grace_days,
                security=index.security, stay_on_major=s.stay_on_major)
            row.update(deadline_local=deadline.local, deadline_anchor_version=deadline.anchor.version,
                       deadline_note=deadline.note)
            row["deadline_utc"] = deadline_instant_utc(row["deadline_local"], time_zone)
    cache[key] = row
    return row


# ---- the recompute queue: devices whose facts changed inside someone else's transaction ----------

def queue_recompute(device_ids: Iterable[int]) -> None:
    """Record devices to recompute, in the caller's transaction (cheap; signal receivers call this)."""
    ids = {int(i) for i in device_ids if i is not None}
    if not ids:
        return
    table = RecomputeRequest.__table__
    present = set()
    for chunk in _chunks(sorted(ids)):
        present |= {r for (r,) in db.session.execute(select(table.c.device_id).where(table.c.device_id.in_(chunk)))}
    missing = ids - present
    if missing:
        db.session.execute(insert(table), [{"device_id": i, "queued_at": utcnow()} for i in sorted(missing)])
    db.session.info["ddm_recompute_queued"] = True


def queued_device_ids() -> set[int]:
    """Devices waiting in the recompute queue."""
    return {d for (d,) in db.session.execute(select(RecomputeRequest.device_id))}


def existing_device_ids(device_ids: Iterable[int]) -> set[int]:
    """Those of ``device_ids`` still present (a queued device may have been deleted since)."""
    return {d for chunk in _chunks(sorted(set(device_ids)))
            for (d,) in db.session.execute(select(Device.id).where(Device.id.in_(chunk)))}


def run_queued_recomputes(*, now: dt.datetime | None = None) -> set[int]:
    """For callers that hold only this module: ``spine.run_queued`` through the spine's inbox, then
    ``unit_of_work.finish``."""
    ids = changes.run_queued(now=now)
    finish()
    return ids


def governed_counts() -> dict[int, int]:
    """{policy id: number of devices whose stored plan names it} (the devices it actually governs)."""
    table = DevicePatchTarget.__table__
    rows = db.session.execute(select(table.c.policy_id, func.count()).where(table.c.policy_id.is_not(None))
                              .group_by(table.c.policy_id))
    return dict(rows.all())
