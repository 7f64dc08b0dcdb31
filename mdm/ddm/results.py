"""Per-device results of iOS patch policies: what state each device is in, from facts we store.

Inputs: the device's stored patch plan (target, deadline), the declaration set we serve it, and the
status it reported. The state is stored per (policy, device) with a history row for every change, so
the UI and the CLI read facts. States, first match wins:

  Not applicable  not iOS, iOS below 17, no target (model unknown, no candidate...), enforcement off
  Compliant       installed version at or above the target
  Unknown         no status report for DDM_STATUS_STALE_HOURS (default 72) or never
  Failed          softwareupdate.failure-reason count > 0, install-state failed, or our declaration invalid
  Pending         declaration sent but the device has not reported this version of it yet; while the
                  DeclarativeManagement command still waits in the queue the detail says "queued — waiting
                  for the device" and why (push certificate, the device's push token, the last push failed)
  Downloading / Prepared / Installing   softwareupdate.install-state
  Overdue         the deadline passed in the device's time zone and the device is not on the target; with
                  the zone unknown, only once the deadline passed in every zone (deadline_utc stays None)
  Scheduled       target and deadline known, the declaration reported valid and active

Each result also carries the plan's ``deadline_note`` ("deadline counted from iOS 18.1 (first release this
device missed)", "deadline shortened: fixes 2 actively exploited vulnerabilities ...").
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Collection

from flask import current_app
from sqlalchemy import bindparam, delete, select, update

from ..push import apns as push
from ..bulk import insert_rows
from ..extensions import db
from ..models import Command, Device, PushRequest, utcnow
from . import declarations as decl
from .enforcement_scope import served_order_note
from .policies import devices_reached
from .sync import plan_for
from .state_models import DeclarationSet, DeviceStatus, PolicyResult, PolicyResultChange
from .status import item
from .targets import LATEST_ZONE_OFFSET, ZONE_UNKNOWN, deadline_passed_everywhere, zone_named

COMPLIANT = "Compliant"
SCHEDULED = "Scheduled"
DOWNLOADING = "Downloading"
PREPARED = "Prepared"
INSTALLING = "Installing"
OVERDUE = "Overdue"
FAILED = "Failed"
NOT_APPLICABLE = "Not applicable"
PENDING = "Pending"
UNKNOWN = "Unknown"

_INSTALL_STATES = {"downloading": DOWNLOADING, "prepared": PREPARED, "installing": INSTALLING}
_UNSET = object()
QUEUED = "queued — waiting for the device"
_CHUNK = 500


@dataclass
class DeviceResult:
    policy_id: int | None
    policy_name: str | None
    device_id: int
    udid: str
    device_name: str | None
    state: str
    detail: str
    target_version: str | None = None
    target_build: str | None = None
    deadline_local: str | None = None
    deadline_utc: datetime | None = None      # None when the device's time zone is unknown
    deadline_note: str | None = None          # "deadline counted from iOS 18.1 (first release this device missed)"
    time_zone: str | None = None              # the device's IANA zone, None when unknown or invalid
    os_version: str | None = None
    build_version: str | None = None
    reported_at: datetime | None = None
    state_since: datetime | None = None
    updated_at: datetime | None = None
    reasons: list[str] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, datetime):
                data[key] = value.isoformat() + "Z"
        for change in data["history"]:
            change["changed_at"] = change["changed_at"].isoformat() + "Z"
        return data


@dataclass(frozen=True)
class Evaluation:
    state: str
    detail: str
    reasons: tuple[str, ...] = ()


def _stale_after() -> timedelta:
    return timedelta(hours=float(current_app.config.get("DDM_STATUS_STALE_HOURS", 72)))


def _reason_codes(entry: dict | None) -> tuple[str, ...]:
    return tuple(r.get("code", "") for r in (entry or {}).get("reasons") or [])


def evaluate(device, plan, declaration_set: DeclarationSet | None, status: DeviceStatus | None,
             now: datetime, delivery: str | None = None) -> Evaluation:
    """The state of one policy's plan on one device (pure: reads only its arguments). ``delivery``: what
    ``delivery_notes`` says when the device's DeclarativeManagement command is still queued."""
    if not device.runs_ios:
        return Evaluation(NOT_APPLICABLE, "not an iOS device")
    installed = decl.version_tuple(device.os_version)
    if installed < decl.ENFORCEMENT_MIN_IOS:
        return Evaluation(NOT_APPLICABLE, f"iOS {device.os_version or 'unknown'} is below 17")
    target = plan.target_version
    if plan.compliant or (target and installed >= decl.version_tuple(target)):
        return Evaluation(COMPLIANT, f"on {device.os_version}" + (f", target {target}" if target else ""))

    served = {d["Identifier"]: d for d in (declaration_set.declarations if declaration_set else [])}
    enforcement_id = decl.enforcement_identifier(plan.policy_id)
    settings_id = decl.settings_identifier(plan.policy_id)
    if enforcement_id not in served:
        if not plan.settings.enforce:
            if not device.is_supervised:
                return Evaluation(NOT_APPLICABLE, "enforcement is off and the policy's settings need a "
                                                  "supervised device")
            return Evaluation(NOT_APPLICABLE, "enforcement is off in the policy")
        return Evaluation(NOT_APPLICABLE, plan.reason or "no target release")

    last = status.last_report_at if status else None
    if last is None or now - last > _stale_after():
        when = f"since {last.isoformat(timespec='minutes')}Z" if last else "yet"
        sent_recently = declaration_set is not None and now - declaration_set.changed_at <= _stale_after()
        if last is None and sent_recently:
            return Evaluation(PENDING, delivery or "sent; no status report yet")
        return Evaluation(UNKNOWN, f"no status report {when}" + (f"; {delivery}" if delivery else ""))

    reported = status.declarations or {}
    entry = reported.get(enforcement_id)
    failure = item(status.items or {}, "softwareupdate.failure-reason") or {}
    if isinstance(failure.get("count"), int) and failure["count"] > 0:
        why = failure.get("reason") or "no reason given"
        return Evaluation(FAILED, f"update failed {failure['count']} time(s): {why}")
    for identifier in (enforcement_id, settings_id):
        seen = reported.get(identifier)
        if identifier in served and seen and seen["current"] and seen["valid"] == "invalid":
            codes = _reason_codes(seen)
            return Evaluation(FAILED, f"declaration {identifier} invalid: {', '.join(codes) or 'no reason'}", codes)
    install_state = item(status.items or {}, "softwareupdate.install-state")
    if install_state == "failed":
        return Evaluation(FAILED, "install-state failed")
    if entry is None or not entry["current"]:
        return Evaluation(PENDING, delivery or "sent; the device has not reported this version of the "
                                               "declaration yet")
    if install_state in _INSTALL_STATES:
        pending = item(status.items or {}, "softwareupdate.pending-version") or {}
        return Evaluation(_INSTALL_STATES[install_state],
                          f"{install_state} {pending.get('os-version') or target}")
    if plan.deadline_utc and now > plan.deadline_utc:
        return Evaluation(OVERDUE, f"deadline {plan.deadline_local} passed; still on {device.os_version}")
    zone_unknown = bool(plan.deadline_local and not plan.deadline_utc)
    if zone_unknown and deadline_passed_everywhere(plan.deadline_local, now):
        return Evaluation(OVERDUE, f"deadline {plan.deadline_local} passed in every time zone ({ZONE_UNKNOWN}); "
                                   f"still on {device.os_version}")
    if entry["valid"] == "valid" and entry["active"]:
        return Evaluation(SCHEDULED, f"{target} by {plan.deadline_local} device time"
                                     + (f" ({ZONE_UNKNOWN})" if zone_unknown else ""))
    return Evaluation(PENDING, f"declaration reported {entry['valid']}, active={entry['active']}")


def record_device_results(device, plan=_UNSET, declaration_set: DeclarationSet | None = None) -> list[PolicyResult]:
    """Recompute and store this device's result for the policy that reaches it; drop results of policies
    that no longer reach it (their history stays). The caller commits."""
    if plan is _UNSET:
        plan, _ = plan_for(device) if device.runs_ios else (None, None)
    now = utcnow()
    rows = {r.policy_id: r for r in PolicyResult.query.filter_by(device_id=device.id)}
    kept = []
    if plan is not None:
        declaration_set = declaration_set or db.session.get(DeclarationSet, device.id)
        evaluation = evaluate(device, plan, declaration_set, db.session.get(DeviceStatus, device.id), now,
                              delivery_notes([device.id]).get(device.id))
        detail = evaluation.detail
        if plan.conflicts:
            detail += f" (won over: {', '.join(plan.conflicts)})"
        detail += _enforcement_note(declaration_set.declarations if declaration_set else (), plan)
        kept.append(_upsert(rows.pop(plan.policy_id, None), device, plan, evaluation.state, detail, now))
    for gone in rows.values():
        _change(gone, "Removed", "the policy no longer reaches this device", now)
        db.session.delete(gone)
    return kept


def _enforcement_note(declarations, plan) -> str:
    """" (…)" when the device also holds Software Update Enforcement declarations: which acts first."""
    note = served_order_note(declarations, plan.policy_id)
    return f" ({note})" if note else ""


def _upsert(row, device, plan, state, detail, now) -> PolicyResult:
    facts = dict(policy_name=plan.policy_name, target_version=plan.target_version, target_build=plan.target_build,
                 deadline_local=plan.deadline_local, deadline_utc=plan.deadline_utc, deadline_note=plan.deadline_note)
    if row is None:
        row = PolicyResult(policy_id=plan.policy_id, device_id=device.id, state=state, detail=detail,
                           state_since=now, updated_at=now, **facts)
        db.session.add(row)
        _change(row, state, detail, now, previous=None)
        return row
    moved = (row.state != state or row.target_version != plan.target_version
             or row.deadline_local != plan.deadline_local)
    if row.state != state:
        row.state_since = now
    if moved:
        _change(row, state, detail, now, previous=row.state, target=plan.target_version,
                deadline=plan.deadline_local)
    row.state, row.detail, row.updated_at = state, detail, now
    for key, value in facts.items():
        setattr(row, key, value)
    return row


def _change(row, state, detail, now, previous=_UNSET, target=_UNSET, deadline=_UNSET) -> None:
    db.session.add(PolicyResultChange(
        policy_id=row.policy_id, device_id=row.device_id, changed_at=now, state=state,
        previous_state=row.state if previous is _UNSET else previous, detail=detail,
        target_version=row.target_version if target is _UNSET else target,
        deadline_local=row.deadline_local if deadline is _UNSET else deadline))


def record_results_bulk(inputs, now: datetime, *, queued: Collection[int] = (), new_pushes: Collection[int] = (),
                        shared: dict | None = None) -> None:
    """``record_device_results`` for many devices at once (the declaration refresh after a policy edit):
    ``inputs`` are (device facts, plan or None, served declarations, set changed_at). Same states, same
    history rows; read with one query per kind, written with executemany. The caller commits.
    ``queued``, ``new_pushes`` and ``shared`` as for ``delivery_notes`` (the refresh's chunks share one
    ``shared``)."""
    if not inputs:
        return
    with_plan = [device.id for device, plan, *_ in inputs if plan is not None]
    stored = _stored_results([device.id for device, *_ in inputs])
    statuses = _stored_statuses(with_plan)
    deliveries = delivery_notes(with_plan, queued=queued, new_pushes=new_pushes, shared=shared)
    # plans and declaration lists are objects shared by many devices and kept alive by the caller: keys by id
    evaluations: dict[tuple, Evaluation] = {}
    finished: dict[tuple, tuple[str, str, dict]] = {}   # (evaluation, plan, set) -> state, detail, plan facts
    inserts, updates, changes, deletes = [], [], [], []
    for device, plan, declarations, changed_at in inputs:
        rows = {r["policy_id"]: r for r in stored.get(device.id, ())}
        if plan is not None:
            status = statuses.get(device.id)
            delivery = deliveries.get(device.id)
            if status is None:   # then the state depends only on facts, plan, set and delivery: shared
                key = (device.facts_key(), id(plan), id(declarations), changed_at, delivery)
                evaluation = evaluations.get(key)
                if evaluation is None:
                    served = SimpleNamespace(declarations=declarations, changed_at=changed_at)
                    evaluation = evaluations[key] = evaluate(device, plan, served, None, now, delivery)
            else:
                served = SimpleNamespace(declarations=declarations, changed_at=changed_at)
                evaluation = evaluate(device, plan, served, status, now, delivery)
            done = finished.get((evaluation, id(plan), id(declarations)))
            if done is None:
                detail = evaluation.detail
                if plan.conflicts:
                    detail += f" (won over: {', '.join(plan.conflicts)})"
                detail += _enforcement_note(declarations, plan)
                facts = dict(policy_name=plan.policy_name, target_version=plan.target_version,
                             target_build=plan.target_build, deadline_local=plan.deadline_local,
                             deadline_utc=plan.deadline_utc, deadline_note=plan.deadline_note)
                done = finished[(evaluation, id(plan), id(declarations))] = (evaluation.state, detail, facts)
            state, detail, facts = done
            row = rows.pop(plan.policy_id, None)
            if row is None:
                inserts.append(dict(policy_id=plan.policy_id, device_id=device.id, state=state, detail=detail,
                                    state_since=now, updated_at=now, **facts))
                changes.append(dict(policy_id=plan.policy_id, device_id=device.id, changed_at=now, state=state,
                                    previous_state=None, detail=detail, target_version=plan.target_version,
                                    deadline_local=plan.deadline_local))
            else:
                if (row["state"] != state or row["target_version"] != plan.target_version
                        or row["deadline_local"] != plan.deadline_local):
                    changes.append(dict(policy_id=plan.policy_id, device_id=device.id, changed_at=now, state=state,
                                        previous_state=row["state"], detail=detail,
                                        target_version=plan.target_version, deadline_local=plan.deadline_local))
                updates.append(dict(b_id=row["id"], state=state, detail=detail, updated_at=now,
                                    b_moved=row["state"] != state, **facts))
        for gone in rows.values():
            changes.append(dict(policy_id=gone["policy_id"], device_id=device.id, changed_at=now, state="Removed",
                                previous_state=gone["state"], detail="the policy no longer reaches this device",
                                target_version=gone["target_version"], deadline_local=gone["deadline_local"]))
            deletes.append(gone["id"])
    _write_results(inserts, updates, changes, deletes, now)


def _stored_results(device_ids: list[int]) -> dict[int, list[dict]]:
    """device id -> its stored result rows (id, policy, state, target, deadline), one query per 500."""
    table = PolicyResult.__table__
    fields = ("id", "policy_id", "state", "target_version", "deadline_local")
    stored: dict[int, list[dict]] = {}
    for start in range(0, len(device_ids), 500):
        part = device_ids[start:start + 500]
        for device_id, *values in db.session.execute(
                select(table.c.device_id, *(table.c[f] for f in fields))
                .where(table.c.device_id.in_(part)).order_by(table.c.id)):
            stored.setdefault(device_id, []).append(dict(zip(fields, values)))
    return stored


def _stored_statuses(device_ids: list[int]) -> dict[int, SimpleNamespace]:
    """device id -> the status it reported (items, declarations, last report), one query per 500."""
    table = DeviceStatus.__table__
    statuses: dict[int, SimpleNamespace] = {}
    for start in range(0, len(device_ids), 500):
        part = device_ids[start:start + 500]
        for device_id, items, declarations, last_report_at in db.session.execute(
                select(table.c["device_id"], table.c["items"], table.c["declarations"],
                       table.c.last_report_at).where(table.c.device_id.in_(part))):
            statuses[device_id] = SimpleNamespace(items=items, declarations=declarations, last_report_at=last_report_at)
    return statuses


def _write_results(inserts: list[dict], updates: list[dict], changes: list[dict], deletes: list[int],
                   now: datetime) -> None:
    """The bulk writes of ``record_results_bulk``: new rows, updated rows (state_since moves with the state),
    history rows, and rows of policies that no longer reach the device."""
    result_table = PolicyResult.__table__
    if inserts:
        insert_rows(result_table, inserts)
    columns = ("state", "detail", "updated_at", "policy_name", "target_version", "target_build", "deadline_local",
               "deadline_utc", "deadline_note")
    for moved in (True, False):
        rows = [{k: v for k, v in u.items() if k != "b_moved"} for u in updates if u["b_moved"] is moved]
        if rows:
            values = {c: bindparam(c) for c in columns}
            if moved:
                values["state_since"] = now
            db.session.execute(update(result_table).where(result_table.c.id == bindparam("b_id")).values(values),
                               rows)
    if changes:
        insert_rows(PolicyResultChange.__table__, changes)
    for start in range(0, len(deletes), 500):
        db.session.execute(delete(result_table).where(result_table.c.id.in_(deletes[start:start + 500])))


def _zone_name(device) -> str | None:
    name = getattr(device, "time_zone", None)
    return name if zone_named(name) else None


def _as_result(row: PolicyResult, device, status: DeviceStatus | None, with_history: bool) -> DeviceResult:
    history = []
    if with_history:
        history = [{"changed_at": c.changed_at, "state": c.state, "previous_state": c.previous_state,
                    "detail": c.detail, "target_version": c.target_version, "deadline_local": c.deadline_local}
                   for c in PolicyResultChange.query.filter_by(policy_id=row.policy_id, device_id=row.device_id)
                   .order_by(PolicyResultChange.id)]
    codes = []
    if status and row.state == FAILED:
        for identifier in (decl.enforcement_identifier(row.policy_id), decl.settings_identifier(row.policy_id)):
            codes += list(_reason_codes((status.declarations or {}).get(identifier)))
    return DeviceResult(
        policy_id=row.policy_id, policy_name=row.policy_name, device_id=device.id, udid=device.udid,
        device_name=device.device_name, state=row.state, detail=row.detail or "",
        target_version=row.target_version, target_build=row.target_build, deadline_local=row.deadline_local,
        deadline_utc=row.deadline_utc, deadline_note=row.deadline_note, time_zone=_zone_name(device),
        os_version=device.os_version,
        build_version=device.build_version,
        reported_at=status.last_report_at if status else None, state_since=row.state_since,
        updated_at=row.updated_at, reasons=codes, history=history)


def results_for_device(device, with_history: bool = True) -> list[DeviceResult]:
    """The device's current result (recomputed and stored now: the caller's edge commits), plus a Not
    applicable line per losing policy."""
    rows = record_device_results(device)
    db.session.flush()
    status = db.session.get(DeviceStatus, device.id)
    results = [_as_result(row, device, status, with_history) for row in rows]
    plan, _ = plan_for(device) if device.runs_ios else (None, None)
    for name in (plan.conflicts if plan else ()):
        results.append(DeviceResult(policy_id=None, policy_name=name, device_id=device.id, udid=device.udid,
                                    device_name=device.device_name, state=NOT_APPLICABLE,
                                    detail=f"superseded by {plan.policy_name} ({plan.binding})",
                                    os_version=device.os_version, build_version=device.build_version))
    return results


def results_for_policy(policy_id: int, with_history: bool = True) -> list[DeviceResult]:
    """Every device this policy reaches, recomputed and stored now (the caller's edge commits), ordered by
    device: the devices it won (stored, with history), plus Not applicable lines for bound devices it does
    not apply to (not iOS, or another policy won)."""
    stored_ids = {r.device_id for r in PolicyResult.query.filter_by(policy_id=policy_id)}
    reached = set(stored_ids) | devices_reached(policy_id)
    results = []
    ids = sorted(reached)
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        statuses = {s.device_id: s for s in DeviceStatus.query.filter(DeviceStatus.device_id.in_(chunk))}
        pending = []
        for device in Device.query.filter(Device.id.in_(chunk)).order_by(Device.id):
            plan, _ = plan_for(device) if device.runs_ios else (None, None)
            rows = record_device_results(device, plan)
            mine = [row for row in rows if row.policy_id == policy_id]
            if mine:
                pending.append((mine[0], device))
            else:
                pending.append((_not_applied(policy_id, device, plan), device))
        db.session.flush()
        for row, device in pending:
            if isinstance(row, DeviceResult):
                results.append(row)
            else:
                results.append(_as_result(row, device, statuses.get(device.id), with_history))
    return results


def _not_applied(policy_id: int, device, plan) -> DeviceResult:
    if not device.runs_ios:
        detail = "not an iOS device"
    elif plan is not None:
        detail = f"superseded by {plan.policy_name} ({plan.binding})"
    else:
        detail = "the policy does not apply to this device"
    return DeviceResult(policy_id=policy_id, policy_name=None, device_id=device.id, udid=device.udid,
                        device_name=device.device_name, state=NOT_APPLICABLE, detail=detail,
                        os_version=device.os_version, build_version=device.build_version)


def declaration_report(device) -> list[tuple[dict, dict]]:
    """Each declaration in the device's stored set, with what its status report says of it ({} when it
    has not reported it): the read side the device page shows."""
    declaration_set = db.session.get(DeclarationSet, device.id)
    status = db.session.get(DeviceStatus, device.id)
    reported = (status.declarations if status else None) or {}
    return [(item, reported.get(item.get("Identifier", "")) or {})
            for item in (declaration_set.declarations if declaration_set else None) or []]


# ---- delivery: is the device's DeclarativeManagement command still queued, and why -----------------

def delivery_notes(device_ids, *, queued: Collection[int] = (), new_pushes: Collection[int] = (),
                   shared: dict | None = None) -> dict[int, str]:
    """For each device whose DeclarativeManagement command is still queued (not yet fetched by the
    device): "queued — waiting for the device", plus why when pushes cannot wake it (the push
    certificate, the device's push token, the last push for the device failed). Others are absent.

    What the caller has just written in this transaction is not read back: ``queued``, devices whose
    DeclarativeManagement command it has queued; ``new_pushes``, devices whose newest push request is a new
    pending row it has added (``apns.request_push_new_rows``). ``shared``: a dict the caller keeps for a
    series of calls in one transaction (the chunks of a refresh): the push identity is read once for all."""
    ids = sorted({int(i) for i in device_ids if i is not None})
    known = set(queued)
    waiting = {i for i in ids if i in known}
    unknown = [i for i in ids if i not in known]
    for start in range(0, len(unknown), _CHUNK):
        waiting |= set(db.session.scalars(db.select(Command.device_id).where(
            Command.device_id.in_(unknown[start:start + _CHUNK]), Command.status == "queued",
            Command.request_type == "DeclarativeManagement").distinct()))
    if not waiting:
        return {}
    if shared is None:
        problem = _push_identity_problem()
    else:
        if "push_identity_problem" not in shared:
            shared["push_identity_problem"] = _push_identity_problem()
        problem = shared["push_identity_problem"]
    fresh = set(new_pushes)
    latest = _latest_pushes(sorted(i for i in waiting if i not in fresh))
    latest.update((i, _NEW_PUSH) for i in waiting if i in fresh)
    return {device_id: _queued_note(problem, latest.get(device_id)) for device_id in waiting}


def _push_identity_problem() -> str | None:
    try:
        return push._identity_problem(current_app)
    except Exception as exc:      # an unreadable push identity is itself the reason
        return f"push identity unusable: {exc}"


def _latest_pushes(device_ids: list[int]):
    """device id -> its newest push request (status, attempts, last_reason, sent_at), read as plain rows."""
    table = PushRequest.__table__
    latest = {}
    for start in range(0, len(device_ids), _CHUNK):
        newest = (select(db.func.max(table.c.id)).where(table.c.device_id.in_(device_ids[start:start + _CHUNK]))
                  .group_by(table.c.device_id))
        for row in db.session.execute(select(table.c.device_id, table.c.status, table.c.attempts,
                                             table.c.last_reason, table.c.sent_at).where(table.c.id.in_(newest))):
            latest[row.device_id] = row
    return latest


# The newest push request of a device that has just been asked for a push with no pending one before.
_NEW_PUSH = SimpleNamespace(status="pending", attempts=0, last_reason=None, sent_at=None)


def _queued_note(problem: str | None, push) -> str:
    if problem:
        return f"{QUEUED}; pushes cannot work: {problem}"
    if push is None:
        return QUEUED
    if push.status == "failed":
        return f"{QUEUED}; the last push to it failed: {push.last_reason or 'no reason recorded'}"
    if push.status == "skipped":
        return f"{QUEUED}; not pushed: {push.last_reason or 'no reason recorded'}"
    if push.status == "pending" and push.attempts and push.last_reason:
        return f"{QUEUED}; pushes are failing and being retried: {push.last_reason}"
    if push.status == "sent" and push.sent_at:
        return f"{QUEUED}; last pushed at {push.sent_at:%Y-%m-%d %H:%M} UTC"
    return QUEUED


# ---- the deadline window, for "deadlines in the next N days" ----------------------------------------

def deadline_within(now: datetime, days: int):
    """SQL condition on PolicyResult: not compliant, and the deadline falls in [now, now + days]. With
    the device's zone unknown (deadline_utc NULL) the wall time counts when it could fall in the window
    in some zone (UTC+14 .. UTC-12), so such a device is listed rather than silently left out."""
    end = now + timedelta(days=days)
    fmt = "%Y-%m-%dT%H:%M:%S"
    earliest_local = (now - LATEST_ZONE_OFFSET).strftime(fmt)
    latest_local = (end + timedelta(hours=14)).strftime(fmt)
    known = db.and_(PolicyResult.deadline_utc >= now, PolicyResult.deadline_utc <= end)
    unknown = db.and_(PolicyResult.deadline_utc.is_(None), PolicyResult.deadline_local.is_not(None),
                      PolicyResult.deadline_local >= earliest_local, PolicyResult.deadline_local <= latest_local)
    return db.and_(db.or_(known, unknown), PolicyResult.state.notin_((COMPLIANT, NOT_APPLICABLE)))


# ---- the read side: figures for lists, the dashboard and charts (mdm/ui/policy_stats.py) ------------

def state_counts_by_policy() -> dict[int, dict[str, int]]:
    """{policy id: {state: number of devices}} from the stored results."""
    out: dict[int, dict[str, int]] = {}
    rows = db.session.execute(select(PolicyResult.policy_id, PolicyResult.state, db.func.count())
                              .group_by(PolicyResult.policy_id, PolicyResult.state))
    for policy_id, state, n in rows:
        out.setdefault(policy_id, {})[state] = n
    return out


def upcoming_deadlines(now: datetime, days: int, limit: int) -> list[PolicyResult]:
    """Results not yet compliant whose deadline falls in the next ``days``, soonest first."""
    return (PolicyResult.query.filter(deadline_within(now, days))
            .order_by(PolicyResult.deadline_utc.is_(None), PolicyResult.deadline_utc, PolicyResult.deadline_local)
            .limit(limit).all())


def upcoming_deadline_count(now: datetime, days: int) -> int:
    return PolicyResult.query.filter(deadline_within(now, days)).count()


def state_changes(policy_id: int):
    """(device id, new state, changed at) of every result change of the policy, oldest first."""
    return db.session.execute(select(PolicyResultChange.device_id, PolicyResultChange.state,
                                     PolicyResultChange.changed_at)
                              .where(PolicyResultChange.policy_id == policy_id)
                              .order_by(PolicyResultChange.changed_at, PolicyResultChange.id))
