"""Per-device results (issue section 8): every state from stored facts, history, conflicts, mixed groups."""
from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from mdm.ddm import declarations as decl
from mdm.ddm import results
from mdm.ddm.plan import PatchPlan
from mdm.ddm.policies import PolicySettings, bind_policy, create_policy
from mdm.ddm.state_models import DeclarationSet, DeviceStatus, PolicyResultChange
from mdm.extensions import db
from mdm.models import Device, DeviceGroup

NOW = dt.datetime(2026, 3, 1, 12, 0)
ENF = decl.enforcement_identifier(5)
SET_ID = decl.settings_identifier(5)


def plan(**changes):
    base = PatchPlan(policy_id=5, policy_name="Ring", binding="device",
                     settings=PolicySettings(name="Ring", enforce=True, local_time="09:00", deferral_days=3),
                     target_version="18.3", target_build="22D63", deadline_local="2026-03-05T09:00:00",
                     deadline_utc=dt.datetime(2026, 3, 5, 9, 0), reason=None, compliant=False, conflicts=())
    return replace(base, **changes)


def device(os_version="18.1", product="iPhone15,2", supervised=True):
    return Device(udid="R1", product_name=product, os_version=os_version, is_supervised=supervised)


def served(changed_at=NOW - dt.timedelta(hours=1), tokens=None):
    tokens = {ENF: "tok-enf", SET_ID: "tok-set"} if tokens is None else tokens
    return DeclarationSet(declarations_token="t", changed_at=changed_at, declarations=[
        {"Identifier": i, "ServerToken": t, "Type": "x", "Payload": {}} for i, t in tokens.items()])


def status(items=None, reported=NOW - dt.timedelta(minutes=5), **declarations):
    flat = {ENF: {"kind": "configurations", "server_token": "tok-enf", "active": True, "valid": "valid",
                  "reasons": [], "current": True}}
    for identifier, entry in declarations.items():
        flat[identifier.replace("__", ".")] = entry
    return DeviceStatus(items=items or {}, declarations=flat, last_report_at=reported)


def state_of(app, dev, p, ds, st, now=NOW):
    with app.app_context():
        return results.evaluate(dev, p, ds, st, now)


CASES = [
    ("a Mac", dict(dev=device(product="Mac14,2")), "Not applicable", "not an iOS"),
    ("iOS 16", dict(dev=device("16.7.10")), "Not applicable", "below 17"),
    ("stored plan compliant", dict(p=plan(compliant=True, target_version=None)), "Compliant", "on 18.1"),
    ("reported OS reached the target", dict(dev=device("18.3")), "Compliant", "target 18.3"),
    ("no enforcement declaration: model unknown",
     dict(p=plan(target_version=None, deadline_local=None, reason="model unknown"), ds=served(tokens={SET_ID: "s"})),
     "Not applicable", "model unknown"),
    ("enforcement off", dict(p=plan(settings=PolicySettings(name="R", deferral_days=3)), ds=served(tokens={})),
     "Not applicable", "enforcement is off"),
    ("enforcement off, unsupervised", dict(dev=device(supervised=False), ds=served(tokens={}),
                                           p=plan(settings=PolicySettings(name="R", deferral_days=3))),
     "Not applicable", "supervised"),
    ("sent, never reported", dict(st=None), "Pending", "no status report yet"),
    ("never reported, long ago", dict(st=None, ds=served(changed_at=NOW - dt.timedelta(days=9))),
     "Unknown", "no status report"),
    ("stale report", dict(st=status(reported=NOW - dt.timedelta(days=4))), "Unknown", "since"),
    ("update failed", dict(st=status({"softwareupdate": {"failure-reason": {"count": 2, "reason": "no space"}}})),
     "Failed", "no space"),
    ("install-state failed", dict(st=status({"softwareupdate": {"install-state": "failed"}})), "Failed", "failed"),
    ("our declaration invalid", dict(st=status(**{ENF.replace(".", "__"): {
        "kind": "configurations", "server_token": "tok-enf", "active": False, "valid": "invalid",
        "reasons": [{"code": "Error.ConfigurationCannotBeApplied"}], "current": True}})),
     "Failed", "Error.ConfigurationCannotBeApplied"),
    ("device reports an older token", dict(st=status(**{ENF.replace(".", "__"): {
        "kind": "configurations", "server_token": "old", "active": True, "valid": "valid", "reasons": [],
        "current": False}})), "Pending", "not reported this version"),
    ("downloading", dict(st=status({"softwareupdate": {"install-state": "downloading"}})), "Downloading", ""),
    ("prepared", dict(st=status({"softwareupdate": {"install-state": "prepared"}})), "Prepared", ""),
    ("installing", dict(st=status({"softwareupdate": {"install-state": "installing"}})), "Installing", ""),
    ("deadline passed", dict(now=NOW + dt.timedelta(days=5), st=status(reported=NOW + dt.timedelta(days=5))),
     "Overdue", "passed"),
    ("valid and active", dict(), "Scheduled", "18.3 by 2026-03-05T09:00:00"),
]


@pytest.mark.parametrize("name, overrides, expected, detail", CASES, ids=[c[0] for c in CASES])
def test_result_states(app, name, overrides, expected, detail):
    args = dict(dev=device(), p=plan(), ds=served(), st=status(), now=NOW)
    args.update(overrides)
    evaluation = state_of(app, args["dev"], args["p"], args["ds"], args["st"], args["now"])
    assert evaluation.state == expected, evaluation
    assert detail in evaluation.detail


def make_device(udid, product="iPhone15,2", os_version="18.0", time_zone=None):
    d = Device(udid=udid, product_name=product, os_version=os_version, is_supervised=True,
               enrollment_status="enrolled", time_zone=time_zone)
    db.session.add(d)
    db.session.commit()
    return d


# a test's ``app`` holds Apple's feed snapshot as if fetched today (unshifted, its releases expire)
pytestmark = pytest.mark.usefixtures("snapshot_as_of_today")


def test_results_for_a_policy_cover_mixed_groups_and_conflicts_with_history(app):
    from mdm.ddm.status import ingest
    import json
    with app.app_context():
        phone = make_device("PHONE", time_zone="Asia/Tokyo")
        mac = make_device("MAC", product="Mac14,2", os_version="15.0")
        direct = make_device("DIRECT")
        group = DeviceGroup(name="Mixed")
        db.session.add(group)
        group.devices.append(phone)
        group.devices.append(mac)
        group.devices.append(direct)
        db.session.commit()
        ring = create_policy({"name": "Ring", "enforce": True, "grace_days": 7, "local_time": "09:00"})
        pinned = create_policy({"name": "Pinned", "enforce": True, "grace_days": 1, "local_time": "08:00"})
        bind_policy(ring.id, groups=["Mixed"])
        bind_policy(pinned.id, devices=["DIRECT"])

        by_udid = {r.udid: r for r in results.results_for_policy(ring.id)}
        assert set(by_udid) == {"PHONE", "MAC", "DIRECT"}
        assert by_udid["MAC"].state == "Not applicable" and "not an iOS" in by_udid["MAC"].detail
        assert by_udid["DIRECT"].state == "Not applicable" and "superseded by Pinned (device)" in by_udid["DIRECT"].detail
        phone_result = by_udid["PHONE"]
        assert phone_result.state == "Pending" and phone_result.target_version and phone_result.deadline_local

        # The device reports the declaration valid and active: Scheduled, and the history shows both.
        declarations = db.session.get(DeclarationSet, phone.id).declarations
        entries = [{"identifier": d["Identifier"], "server-token": d["ServerToken"], "active": True,
                    "valid": "valid"} for d in declarations]
        report = {"StatusItems": {"management": {"declarations": {
            "activations": [e for e in entries if e["identifier"] == decl.ACTIVATION_ID],
            "configurations": [e for e in entries if e["identifier"] != decl.ACTIVATION_ID],
            "assets": [], "management": []}}}, "Errors": [], "FullReport": True}
        ingest(phone, json.dumps(report).encode())
        [phone_result] = [r for r in results.results_for_policy(ring.id) if r.udid == "PHONE"]
        assert phone_result.state == "Scheduled"
        assert [h["state"] for h in phone_result.history] == ["Pending", "Scheduled"]
        assert phone_result.history[1]["previous_state"] == "Pending"
        # TargetLocalDateTime is Tokyo wall time (UTC+9): the instant is nine hours earlier in UTC.
        local = dt.datetime.fromisoformat(phone_result.deadline_local)
        assert phone_result.as_dict()["deadline_utc"] == (local - dt.timedelta(hours=9)).isoformat() + "Z"
        assert phone_result.as_dict()["time_zone"] == "Asia/Tokyo"

        # The device view shows the winner and the losing policy.
        direct_results = results.results_for_device(direct)
        assert [(r.policy_name, r.state) for r in direct_results][0][0] == "Pinned"
        assert ("Ring", "Not applicable") in [(r.policy_name, r.state) for r in direct_results]
        assert "won over: Ring" in direct_results[0].detail
        assert PolicyResultChange.query.filter_by(device_id=mac.id).count() == 0


def test_zone_unknown_deadlines_are_never_counted_from_a_guess(app):
    zoneless = plan(deadline_utc=None)                   # the device has not reported a valid time zone
    scheduled = state_of(app, device(), zoneless, served(), status())
    assert scheduled.state == "Scheduled" and scheduled.detail.endswith("(device time zone unknown)")
    # 09:00 on 03-05 has passed in UTC but not yet at UTC-12 (21:00 UTC): not overdue yet...
    late = dt.datetime(2026, 3, 5, 20, 0)
    assert state_of(app, device(), zoneless, served(), status(reported=late), now=late).state == "Scheduled"
    # ...and overdue once it has passed everywhere.
    later = dt.datetime(2026, 3, 5, 21, 1)
    overdue = state_of(app, device(), zoneless, served(), status(reported=later), now=later)
    assert overdue.state == "Overdue" and "passed in every time zone" in overdue.detail


def test_a_queued_sync_command_is_not_called_sent(app):
    note = f"{results.QUEUED}; the last push to it failed: ServiceUnavailable"
    with app.app_context():
        never = results.evaluate(device(), plan(), served(), None, NOW, note)
        older = results.evaluate(device(), plan(), served(), status(**{ENF.replace(".", "__"): {
            "kind": "configurations", "server_token": "old", "active": True, "valid": "valid", "reasons": [],
            "current": False}}), NOW, note)
        silent = results.evaluate(device(), plan(), served(changed_at=NOW - dt.timedelta(days=9)), None, NOW, note)
    assert (never.state, never.detail) == ("Pending", note)
    assert (older.state, older.detail) == ("Pending", note)
    assert silent.state == "Unknown" and silent.detail == f"no status report yet; {note}"
