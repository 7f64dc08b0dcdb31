"""The read path of DeclarativeManagement ``tokens`` and ``declaration-items`` (issue 12): when answering
changes nothing stored (the stored set equals the one computed now, the served identifiers are recorded,
the device was seen under a minute ago), the answer comes from a read transaction (no writer lock, no
write, no commit) and is byte-for-byte the write path's answer; when anything would change (device facts,
the stored plan, served identifiers, a stale last-seen time) the write path stores it as before.
Asserted with SQLAlchemy engine events on the real database, through the signed HTTP endpoint.
"""
from __future__ import annotations

import datetime as dt
import json

import pytest

from mdm.ddm.policies import bind_policy, create_policy
from mdm.ddm.state_models import DeclarationSet
from mdm.extensions import db
from mdm.models import Device, utcnow
from device_identity import DeviceIdentity
from ddm_kit import RING, load_snapshot_as_of_today as load_current_catalog
from device_identity import drain


@pytest.fixture
def device(app, client):
    """An enrolled device (queue drained) with a patch policy bound: a real declaration set."""
    ident = DeviceIdentity(app)
    ident.enroll(client)
    drain(ident, client)
    with app.app_context():
        load_current_catalog()
        policy = create_policy(RING)
        bind_policy(policy.id, devices=[ident.udid])
        db.session.commit()
    return ident


def ddm(ident, client, endpoint: str):
    response = ident.put(client, "/mdm/checkin", {"MessageType": "DeclarativeManagement", "UDID": ident.udid,
                                                  "Endpoint": endpoint})
    assert response.status_code == 200, response.data
    return response.data


def stored(app, udid) -> DeclarationSet:
    with app.app_context():
        device = Device.query.filter_by(udid=udid).one()
        row = db.session.get(DeclarationSet, device.id)
        db.session.expunge(row)
        return row


@pytest.mark.parametrize("endpoint", ["tokens", "declaration-items"])
def test_unchanged_set_is_served_from_a_read_transaction_with_the_write_paths_answer(
        app, client, device, recorder, endpoint):
    first = ddm(device, client, endpoint)        # the write path: stores the set, records what it served
    recorder.reset()
    again = ddm(device, client, endpoint)
    assert again == first
    assert recorder.commits == 0 and recorder.writes() == [] and recorder.locked_statements == 0
    assert len([s for s in recorder.statements if s.startswith("SELECT")]) == 1
    body = json.loads(again)
    token = stored(app, device.udid).declarations_token
    assert (body["SyncTokens"]["DeclarationsToken"] if endpoint == "tokens" else body["DeclarationsToken"]) == token


def test_changed_device_facts_take_the_write_path_and_store_the_new_set(app, client, device, recorder):
    ddm(device, client, "declaration-items")
    before = stored(app, device.udid)
    with app.app_context():   # the OS version changes without a refresh: the stored set is out of date
        Device.query.filter_by(udid=device.udid).one().os_version = "16.0"
        db.session.commit()
    recorder.reset()
    body = json.loads(ddm(device, client, "tokens"))
    after = stored(app, device.udid)
    assert after.declarations_token != before.declarations_token
    assert body["SyncTokens"]["DeclarationsToken"] == after.declarations_token
    assert recorder.commits >= 1
    recorder.reset()
    items = json.loads(ddm(device, client, "declaration-items"))   # served identifiers change: a write
    assert items["DeclarationsToken"] == after.declarations_token and recorder.commits >= 1
    assert stored(app, device.udid).served_identifiers == sorted(d["Identifier"] for d in after.declarations)
    recorder.reset()
    assert json.loads(ddm(device, client, "declaration-items")) == items and recorder.commits == 0


def test_unrecorded_served_identifiers_are_recorded_by_the_write_path(app, client, device, recorder):
    first = ddm(device, client, "declaration-items")
    with app.app_context():
        row = db.session.get(DeclarationSet, Device.query.filter_by(udid=device.udid).one().id)
        row.served_identifiers = None
        db.session.commit()
    recorder.reset()
    assert ddm(device, client, "declaration-items") == first
    assert recorder.commits >= 1
    assert stored(app, device.udid).served_identifiers is not None


def test_stale_last_seen_time_takes_the_write_path(app, client, device, recorder):
    first = ddm(device, client, "tokens")
    old = utcnow() - dt.timedelta(minutes=5)
    with app.app_context():
        Device.query.filter_by(udid=device.udid).one().last_seen_at = old
        db.session.commit()
    recorder.reset()
    assert ddm(device, client, "tokens") == first
    assert recorder.commits >= 1
    with app.app_context():
        assert Device.query.filter_by(udid=device.udid).one().last_seen_at > old


def test_a_message_the_write_path_refuses_is_still_refused(app, client, device):
    response = device.put(client, "/mdm/checkin", {"MessageType": "DeclarativeManagement", "UDID": device.udid,
                                                   "Endpoint": "tokens", "Data": "not bytes"})
    assert response.status_code == 400
    other = DeviceIdentity(app)      # issued by our CA, never enrolled: refused, not served
    response = other.put(client, "/mdm/checkin", {"MessageType": "DeclarativeManagement", "UDID": device.udid,
                                                  "Endpoint": "tokens"})
    assert response.status_code == 400


def test_a_device_with_an_enforcement_policy_through_a_group_gets_the_same_answer_from_the_read_path(
        app, client, device, recorder):
    """A Software Update Enforcement policy bound through a group is part of the device's set: the read path
    counts it (it would otherwise see a set without it), so the answer stays the write path's, read-only."""
    from mdm.ddm import enforcement
    from mdm.models import DeviceGroup, group_members
    with app.app_context():
        phone = Device.query.filter_by(udid=device.udid).one()
        group = DeviceGroup(name="Enforced")
        db.session.add(group)
        db.session.flush()
        db.session.execute(group_members.insert().values(group_id=group.id, device_id=phone.id))
        when = (dt.date.today() + dt.timedelta(days=9)).isoformat() + "T18:00"
        policy = enforcement.create_policy({"name": "By 26.6.1", "target_version": "26.6.1", "enforce_at": when})
        enforcement.bind_policy(policy, groups=[group.name])
        db.session.commit()
        policy_id = policy.id
    first = json.loads(ddm(device, client, "declaration-items"))
    assert any(d["Identifier"].startswith("mdm.enforce.") for d in first["Declarations"]["Configurations"])
    recorder.reset()
    again = json.loads(ddm(device, client, "declaration-items"))
    assert again == first
    assert recorder.commits == 0 and recorder.writes() == [] and recorder.locked_statements == 0
    with app.app_context():      # the policy's version changes: the stored set is out of date, the write path runs
        enforcement.update_policy(policy_id, {"target_version": "26.6", "target_build": None})
        db.session.commit()
        db.session.execute(DeclarationSet.__table__.update().values(declarations_token="stale"))
        db.session.commit()
    recorder.reset()
    changed = json.loads(ddm(device, client, "tokens"))
    assert changed["SyncTokens"]["DeclarationsToken"] == stored(app, device.udid).declarations_token != "stale"
    assert recorder.commits >= 1
