"""Deadlines in the device's own time zone (issue 9).

TargetLocalDateTime is wall time on the device. The server asks for the device's IANA zone
(DeviceInformation TimeZone, iOS 14+), stores it, and computes every instant from it: the countdown,
"Overdue", "Deadlines in the next 7 days" and the API's deadline_utc. Devices on UTC-5 (New York in
winter, and the fixed Etc/GMT+5) and UTC+9 (Tokyo) against a fixed clock; a device whose zone is
unknown or not an IANA name gets no instant, and the pages say "device time zone unknown". What the
device receives never changes with its zone.
"""
from __future__ import annotations

import datetime as dt
import plistlib
import uuid
from types import SimpleNamespace

import pytest

from appleschema import Context, load, validate_command, validate_command_response, validate_declaration
from device_identity import DeviceIdentity
from mdm.accounts import Role
from mdm.ddm import declarations as decl
from mdm.ddm.models import DevicePatchTarget, PolicyBinding
from mdm.ddm.plan import patch_plan_for_device, recompute, run_queued_recomputes
from mdm.ddm.results import deadline_within, evaluate
from mdm.ddm.state_models import DeclarationSet, DeviceStatus, PolicyResult
from mdm.extensions import db
from mdm.models import Command, Device
from ui_support import HTTPS, make_token, signed_in

NOW = dt.datetime(2027, 1, 10, 12, 0)          # the fixed clock: winter, New York is UTC-5
LOCAL = "2027-01-17T14:00:00"                  # NOW + 7 days grace, at the policy's 14:00 device time
SNAPSHOT_DAY = dt.date(2026, 8, 22)            # the day the packaged snapshot was taken
ZONES = {"NEW-YORK": "America/New_York", "FIXED-5": "Etc/GMT+5", "TOKYO": "Asia/Tokyo",
         "UNKNOWN": None, "BOGUS": "Mars/Olympus_Mons"}


# ---- asking for the zone, and storing the answer ---------------------------------------------------

def _queued(app, udid, request_type):
    with app.app_context():
        device = Device.query.filter_by(udid=udid).one()
        return [SimpleNamespace(id=c.id, uuid=c.uuid, payload=c.payload) for c in Command.query.filter_by(
            device_id=device.id, request_type=request_type).order_by(Command.id)]


def _answer(app, client, ident, command, answers: dict):
    """The device answers a delivered DeviceInformation command through /mdm/connect."""
    with app.app_context():
        db.session.get(Command, command.id).status = "sent"
        db.session.commit()
    response = {"UDID": ident.udid, "CommandUUID": command.uuid, "Status": "Acknowledged",
                "QueryResponses": answers}
    assert validate_command_response("DeviceInformation", response, Context("iOS", "17.5.1")) == []
    assert ident.put(client, "/mdm/connect", response).status_code == 200


def test_enrollment_asks_for_the_time_zone_with_a_query_apple_lists_for_ios_14(app, client):
    [key] = [k for k in load("mdm/commands/information.device.yaml")["payloadkeys"] if k["key"] == "Queries"]
    [spec] = [s for s in key["subkeys"][0]["subkeys"] if s["key"] == "TimeZone"]
    assert spec["supportedOS"]["iOS"]["introduced"] == "14.0"

    ident = DeviceIdentity(app)
    ident.enroll(client)
    [command] = _queued(app, ident.udid, "DeviceInformation")
    body = plistlib.loads(command.payload)
    assert "TimeZone" in body["Command"]["Queries"]
    assert validate_command(body, Context("iOS", "17.5.1")) == []


def test_the_device_information_answer_stores_the_zone_and_a_later_answer_replaces_it(app, client):
    ident = DeviceIdentity(app)
    ident.enroll(client)
    [first] = _queued(app, ident.udid, "DeviceInformation")
    _answer(app, client, ident, first, {"TimeZone": "America/New_York", "OSVersion": "17.5.1",
                                        "ProductName": "iPhone15,2", "SerialNumber": "F5JM992LF193"})
    with app.app_context():
        device = Device.query.filter_by(udid=ident.udid).one()
        assert device.time_zone == "America/New_York"
        assert device.inventory["DeviceInformation"]["TimeZone"] == "America/New_York"
        from mdm.protocol import queue
        again = queue.enqueue(device, "DeviceInformation", push=False)
        db.session.commit()
        again = SimpleNamespace(id=again.id, uuid=again.uuid)
    # The user flew to Tokyo: the next inventory answer replaces the zone.
    _answer(app, client, ident, again, {"TimeZone": "Asia/Tokyo"})
    with app.app_context():
        assert Device.query.filter_by(udid=ident.udid).one().time_zone == "Asia/Tokyo"
        from mdm.protocol import queue
        narrow = queue.enqueue(Device.query.filter_by(udid=ident.udid).one(), "DeviceInformation",
                               queries=["OSVersion"], push=False)
        db.session.commit()
        narrow = SimpleNamespace(id=narrow.id, uuid=narrow.uuid)
    _answer(app, client, ident, narrow, {"OSVersion": "17.5.1"})   # a narrower query keeps what we know
    with app.app_context():
        assert Device.query.filter_by(udid=ident.udid).one().time_zone == "Asia/Tokyo"


def test_a_zone_that_is_not_an_iana_name_is_kept_as_reported_and_never_crashes(app, client):
    ident = DeviceIdentity(app)
    ident.enroll(client)
    [command] = _queued(app, ident.udid, "DeviceInformation")
    with app.app_context():
        db.session.get(Command, command.id).status = "sent"
        db.session.commit()
    # Not schema-valid on purpose (a broken device): a 200, the odd value stored, nothing else lost.
    response = {"UDID": ident.udid, "CommandUUID": command.uuid, "Status": "Acknowledged",
                "QueryResponses": {"TimeZone": "../../etc/passwd", "OSVersion": "17.6"}}
    assert ident.put(client, "/mdm/connect", response).status_code == 200
    with app.app_context():
        device = Device.query.filter_by(udid=ident.udid).one()
        assert (device.time_zone, device.os_version) == ("../../etc/passwd", "17.6")
    from mdm.ddm.targets import deadline_instant_utc
    assert deadline_instant_utc(LOCAL, "../../etc/passwd") is None


# ---- one fleet, five zones, a fixed clock ----------------------------------------------------------

@pytest.fixture
def fleet(app):
    """A current catalog at NOW, one policy (no deferral, 7 days' grace, 14:00 device time) applied at NOW to
    five iPhones on 18.0 in different zones. Returns {name: device id}."""
    from mdm.ddm.catalog import SNAPSHOT_PATH, apply_feed, load_feed_file, shift_feed
    from mdm.ddm.policies import create_policy
    with app.app_context():
        feed = shift_feed(load_feed_file(SNAPSHOT_PATH), (NOW.date() - SNAPSHOT_DAY).days)
        apply_feed(feed, "test: snapshot shifted to the fixed clock", now=NOW)
        policy = create_policy({"name": "Everyone", "enforce": True, "deferral_days": 0, "grace_days": 7,
                                "local_time": "14:00"})
        ids = {}
        for name, zone in ZONES.items():
            device = Device(udid=name, device_name=name, serial_number=f"SN-{name}", product_name="iPhone15,2",
                            model_name="iPhone", software_update_device_id="iPhone15,2", os_version="18.0",
                            is_supervised=True, enrollment_status="enrolled", time_zone=zone,
                            push_token="ab" * 32, push_magic=str(uuid.uuid4()).upper())
            db.session.add(device)
            db.session.flush()
            db.session.add(PolicyBinding(policy_id=policy.id, device_id=device.id))
            ids[name] = device.id
        db.session.commit()
        recompute(now=NOW)
    return ids


def _plans(app, fleet):
    with app.app_context():
        return {name: patch_plan_for_device(device_id) for name, device_id in fleet.items()}


def test_one_wall_time_for_everyone_and_the_instant_follows_each_devices_zone(app, fleet):
    plans = _plans(app, fleet)
    assert {p.deadline_local for p in plans.values()} == {LOCAL}
    assert {name: p.deadline_utc for name, p in plans.items()} == {
        "NEW-YORK": dt.datetime(2027, 1, 17, 19, 0),     # 14:00 EST is 19:00 UTC
        "FIXED-5": dt.datetime(2027, 1, 17, 19, 0),
        "TOKYO": dt.datetime(2027, 1, 17, 5, 0),         # 14:00 JST is 05:00 UTC
        "UNKNOWN": None,                                 # no instant rather than a wrong one
        "BOGUS": None,
    }


def test_the_declarations_a_device_gets_do_not_depend_on_its_zone(app, fleet):
    with app.app_context():
        enforcement = {}
        for name, device_id in fleet.items():
            served = db.session.get(DeclarationSet, device_id).declarations
            [declaration] = [d for d in served if d["Type"] == decl.TYPE_ENFORCEMENT]
            assert validate_declaration(declaration, "iOS", "18.0") == []
            enforcement[name] = (declaration["Payload"]["TargetLocalDateTime"], declaration["ServerToken"])
    assert set(enforcement.values()) == {(LOCAL, enforcement["TOKYO"][1])}


def test_countdowns_at_a_fixed_clock(app, fleet):
    from mdm.ui.device_facts import ResultRow
    plans = _plans(app, fleet)

    def countdown(name, now):
        plan = plans[name]
        return ResultRow(policy_id=1, policy_name="Everyone", state="Scheduled", detail=None, target_version="x",
                         target_build=None, deadline_local=plan.deadline_local, deadline_utc=plan.deadline_utc,
                         state_since=None, updated_at=None).countdown_at(now)

    assert countdown("TOKYO", NOW) == "6d 17h"
    assert countdown("NEW-YORK", NOW) == "7d 7h"                # not the 7d 2h a UTC reading gives
    assert countdown("FIXED-5", NOW) == "7d 7h"
    assert countdown("UNKNOWN", NOW) == "device time zone unknown"
    assert countdown("BOGUS", NOW) == "device time zone unknown"
    later = dt.datetime(2027, 1, 17, 6, 0)                      # past Tokyo's deadline, not New York's
    assert countdown("TOKYO", later) == "overdue 1h 0m"
    assert countdown("NEW-YORK", later) == "13h 0m"
    assert countdown("UNKNOWN", dt.datetime(2027, 1, 18, 2, 1)) == \
        "overdue in every time zone (device time zone unknown)"


def test_overdue_is_decided_in_the_devices_zone(app, fleet):
    plans = _plans(app, fleet)

    def state(name, now):
        """The device reported the enforcement declaration valid and active half an hour ago."""
        with app.app_context():
            device = db.session.get(Device, fleet[name])
            plan = plans[name]
            status = DeviceStatus(device_id=device.id, items={}, last_report_at=now - dt.timedelta(minutes=30),
                                  declarations={decl.enforcement_identifier(plan.policy_id): {
                                      "kind": "configurations", "server_token": "t", "active": True,
                                      "valid": "valid", "reasons": [], "current": True}})
            return evaluate(device, plan, db.session.get(DeclarationSet, device.id), status, now)

    later = dt.datetime(2027, 1, 17, 6, 0)
    assert state("TOKYO", later).state == "Overdue"
    assert state("NEW-YORK", later).state == "Scheduled"
    assert state("FIXED-5", later).state == "Scheduled"
    unknown = state("UNKNOWN", later)
    assert unknown.state == "Scheduled" and "(device time zone unknown)" in unknown.detail
    # With no zone, overdue only once 14:00 has passed everywhere (UTC-12: 02:00 UTC the next day).
    assert state("UNKNOWN", dt.datetime(2027, 1, 18, 1, 59)).state == "Scheduled"
    overdue = state("UNKNOWN", dt.datetime(2027, 1, 18, 2, 1))
    assert overdue.state == "Overdue" and "every time zone" in overdue.detail
    assert state("NEW-YORK", dt.datetime(2027, 1, 17, 19, 1)).state == "Overdue"


def test_the_seven_day_window_counts_in_each_devices_zone(app, fleet):
    def window(now):
        with app.app_context():
            rows = PolicyResult.query.filter(deadline_within(now, 7)).all()
            return {db.session.get(Device, r.device_id).udid for r in rows}

    # Tokyo's deadline is 6d 17h away, New York's 7d 7h; a device without a zone could be either, so it is listed.
    assert window(NOW) == {"TOKYO", "UNKNOWN", "BOGUS"}
    assert window(NOW + dt.timedelta(hours=8)) == set(ZONES)
    # Past Tokyo's deadline it leaves the upcoming list; the zoneless ones stay until 14:00 has passed everywhere.
    assert window(dt.datetime(2027, 1, 17, 6)) == {"NEW-YORK", "FIXED-5", "UNKNOWN", "BOGUS"}
    assert window(dt.datetime(2027, 1, 18, 2, 1)) == set()


def test_a_new_zone_moves_the_instant_only(app, fleet):
    from mdm.protocol.commands import device_information
    with app.app_context():
        before_token = db.session.get(DeclarationSet, fleet["NEW-YORK"]).declarations_token
        commands_before = Command.query.filter_by(device_id=fleet["NEW-YORK"],
                                                  request_type="DeclarativeManagement").count()
        device = db.session.get(Device, fleet["NEW-YORK"])
        device_information.handle_response(device, {"Status": "Acknowledged",
                                                    "QueryResponses": {"TimeZone": "Asia/Tokyo"}})
        db.session.commit()
        run_queued_recomputes(now=NOW)
        row = db.session.get(DevicePatchTarget, fleet["NEW-YORK"])
        assert (row.deadline_local, row.deadline_utc) == (LOCAL, dt.datetime(2027, 1, 17, 5, 0))
        assert db.session.get(PolicyResult, PolicyResult.query.filter_by(
            device_id=fleet["NEW-YORK"]).one().id).deadline_utc == dt.datetime(2027, 1, 17, 5, 0)
        # Same declarations, so no DeclarativeManagement command and no push for a zone change.
        assert db.session.get(DeclarationSet, fleet["NEW-YORK"]).declarations_token == before_token
        assert Command.query.filter_by(device_id=fleet["NEW-YORK"],
                                       request_type="DeclarativeManagement").count() == commands_before


def test_the_api_gives_the_instant_in_the_devices_zone_or_null(app, fleet):
    api = app.test_client()
    headers = {"Authorization": f"Bearer {make_token(app, 'ro', Role.ReadOnly)}"}
    found = {}
    for name, device_id in fleet.items():
        body = api.get(f"/api/v1/devices/{device_id}/results", headers=headers, base_url=HTTPS).json
        [result] = body["results"]
        device = api.get(f"/api/v1/devices/{device_id}", headers=headers, base_url=HTTPS).json
        found[name] = (result["deadline_local"], result["deadline_utc"], result["time_zone"], device["time_zone"])
    assert found == {
        "NEW-YORK": (LOCAL, "2027-01-17T19:00:00Z", "America/New_York", "America/New_York"),
        "FIXED-5": (LOCAL, "2027-01-17T19:00:00Z", "Etc/GMT+5", "Etc/GMT+5"),
        "TOKYO": (LOCAL, "2027-01-17T05:00:00Z", "Asia/Tokyo", "Asia/Tokyo"),
        "UNKNOWN": (LOCAL, None, None, None),
        "BOGUS": (LOCAL, None, None, None),
    }


@pytest.fixture
def fixed_clock(monkeypatch):
    """The pages read the clock through ``utcnow`` in these modules; pin it to NOW."""
    import mdm.ddm.results
    import mdm.ui.device_facts
    import mdm.devices.query
    import mdm.ui.policy_stats
    for module in (mdm.ddm.results, mdm.ui.device_facts, mdm.devices.query, mdm.ui.policy_stats):
        monkeypatch.setattr(module, "utcnow", lambda: NOW)
    return NOW


def test_device_pages_count_down_in_the_devices_zone(app, fleet, fixed_clock):
    browser = signed_in(app, Role.ReadOnly)
    tokyo = browser.get(f"/devices/{fleet['TOKYO']}").text
    assert 'id="device-time-zone">Asia/Tokyo<' in tokyo
    assert '<td class="countdown">6d 17h</td>' in tokyo and "2027-01-17 05:00 UTC" in tokyo
    new_york = browser.get(f"/devices/{fleet['NEW-YORK']}").text
    assert '<td class="countdown">7d 7h</td>' in new_york and "America/New_York" in new_york
    unknown = browser.get(f"/devices/{fleet['UNKNOWN']}").text
    assert '<td class="countdown">device time zone unknown</td>' in unknown
    assert "device time zone unknown" in unknown.split('id="device-time-zone">')[1][:80]
    bogus = browser.get(f"/devices/{fleet['BOGUS']}").text
    assert "Mars/Olympus_Mons" in bogus and "not an IANA name" in bogus


def test_the_dashboard_and_the_device_list_use_the_same_seven_day_window(app, fleet, fixed_clock):
    import re
    browser = signed_in(app, Role.ReadOnly)
    page = browser.get("/").text
    figures = {label: int(n) for n, label in re.findall(r'<span class="n">(\d+)</span><span class="l">([^<]+)</span>',
                                                        page)}
    assert figures["Deadlines in the next 7 days"] == 3
    upcoming = page.split("<h2>Upcoming deadlines</h2>")[1]
    assert "TOKYO" in upcoming and "UNKNOWN" in upcoming and "NEW-YORK" not in upcoming
    assert upcoming.count("device time zone unknown") == 2
    listed = browser.get("/devices?deadline=7").text
    assert "TOKYO" in listed and "BOGUS" in listed and "NEW-YORK" not in listed and "FIXED-5" not in listed


def test_the_periodic_inventory_asks_again_for_the_zone_once_a_day(app):
    from mdm.ddm.inventory import queue_inventory
    from mdm.models import utcnow
    now = utcnow()
    with app.app_context():
        answered = {}
        for name, hours_ago, status in [("STALE", 25, "enrolled"), ("FRESH", 1, "enrolled"),
                                        ("NEVER", None, "enrolled"), ("GONE", 25, "unenrolled")]:
            device = Device(udid=name, enrollment_status=status, push_token="ab" * 32, push_magic="M")
            db.session.add(device)
            db.session.flush()
            if hours_ago is not None:
                db.session.add(Command(device_id=device.id, request_type="DeviceInformation", payload=b"x",
                                       status="Acknowledged", completed_at=now - dt.timedelta(hours=hours_ago)))
            answered[name] = device.id
        db.session.commit()

        assert queue_inventory(now) == 2
        waiting = Command.query.filter_by(status="queued", request_type="DeviceInformation").all()
        assert {db.session.get(Device, c.device_id).udid for c in waiting} == {"STALE", "NEVER"}
        assert all("TimeZone" in plistlib.loads(c.payload)["Command"]["Queries"] for c in waiting)
        assert {c.queued_by for c in waiting} == {"system:inventory"}
        assert queue_inventory(now) == 0                   # one waiting query per device, never a pile
        app.config["INVENTORY_INTERVAL_HOURS"] = 0
        assert queue_inventory(now + dt.timedelta(days=3)) == 0
