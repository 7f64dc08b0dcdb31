"""The device hot path (issue 12): a check-in that changes nothing writes nothing.

An Idle with an empty queue, from a device seen less than a minute ago, is answered from a read
transaction: no ``BEGIN IMMEDIATE``, no process writer lock (mdm/extensions.py), no INSERT/UPDATE/DELETE,
no commit. Everything else takes the write path exactly as before: a waiting command is delivered and
marked sent, a stale last-seen time is written, and the per-certificate authorisation cache
(mdm/protocol/certauth.py) never accepts a certificate once its retirement has committed in this process.
Asserted through SQLAlchemy engine events on the real database (SQLite, and PostgreSQL in the second run).
"""
from __future__ import annotations

import plistlib
from datetime import timedelta

import pytest
from sqlalchemy import event

from db_recorder import Recorder
from device_identity import DeviceIdentity, drain, enrolled_and_drained
from mdm.protocol import certauth, checkin, queue
from mdm.extensions import db
from mdm.models import AuditEvent, Command, Device, DeviceCertificate, utcnow


@pytest.fixture
def enrolled(app, client):
    return enrolled_and_drained(app, client)


def last_seen(app, udid):
    with app.app_context():
        return Device.query.filter_by(udid=udid).one().last_seen_at


def set_last_seen(app, udid, value):
    with app.app_context():
        Device.query.filter_by(udid=udid).one().last_seen_at = value
        db.session.commit()


def test_idle_with_empty_queue_opens_no_write_transaction(app, client, enrolled, recorder):
    seen = last_seen(app, enrolled.udid)
    recorder.reset()
    for _ in range(3):
        response = enrolled.connect(client)
        assert response.status_code == 200 and response.data == b""
    assert recorder.writes() == []
    assert recorder.commits == 0
    assert recorder.locked_statements == 0
    assert recorder.statements, "the read path still reads (queue and last-seen time)"
    assert last_seen(app, enrolled.udid) == seen


def test_idle_from_a_user_channel_writes_nothing(app, client, enrolled, recorder):
    response = enrolled.connect(client, UserID="A1B2C3D4-0000-0000-0000-000000000001")
    assert response.status_code == 200 and response.data == b""
    assert recorder.writes() == [] and recorder.commits == 0


def test_idle_with_a_waiting_command_delivers_it_and_marks_it_sent(app, client, enrolled, recorder):
    with app.app_context():
        device = Device.query.filter_by(udid=enrolled.udid).one()
        command = queue.enqueue(device, "DeviceInformation", push=False)
        db.session.commit()
        uuid = command.uuid
    recorder.reset()
    response = enrolled.connect(client)
    assert plistlib.loads(response.data)["CommandUUID"] == uuid
    assert recorder.commits == 1 and any(s.startswith("UPDATE") for s in recorder.writes())
    with app.app_context():
        assert Command.query.filter_by(uuid=uuid).one().status == "sent"
    # At least once: not answered, so the next Idle offers it again.
    assert plistlib.loads(enrolled.connect(client).data)["CommandUUID"] == uuid


def test_idle_writes_a_last_seen_time_older_than_a_minute(app, client, enrolled, recorder):
    old = utcnow() - timedelta(seconds=Device.LAST_SEEN_RESOLUTION_SECONDS + 5)
    set_last_seen(app, enrolled.udid, old)
    recorder.reset()
    assert enrolled.connect(client).status_code == 200
    assert recorder.commits == 1
    assert last_seen(app, enrolled.udid) > old
    recorder.reset()
    assert enrolled.connect(client).status_code == 200     # fresh again: a read
    assert recorder.writes() == [] and recorder.commits == 0


def test_retired_certificate_is_refused_at_once_although_it_was_cached(app, client, enrolled):
    assert enrolled.connect(client).status_code == 200     # cached as bound
    reinstalled = DeviceIdentity(app, enrolled.udid)        # re-enrollment: new certificate, old retired
    assert reinstalled.checkin(client, "Authenticate").status_code == 200
    response = enrolled.connect(client)
    assert response.status_code == 400 and b"replaced by a newer one" in response.data
    assert reinstalled.checkin(client, "TokenUpdate").status_code == 200
    drain(reinstalled, client)
    assert reinstalled.connect(client).status_code == 200
    assert enrolled.connect(client).status_code == 400


def test_renewed_certificate_retires_its_cached_predecessor(app, client, enrolled):
    assert enrolled.connect(client).status_code == 200     # cached as bound
    renewed = DeviceIdentity(app, enrolled.udid, renewed_from=enrolled)
    assert renewed.connect(client).status_code == 200      # first use binds it, retires the predecessor
    response = enrolled.connect(client)
    assert response.status_code == 400 and b"replaced by a newer one" in response.data
    assert renewed.connect(client).status_code == 200


def test_cached_certificate_does_not_speak_for_another_device(app, client, enrolled):
    other = DeviceIdentity(app)
    other.enroll(client)
    assert enrolled.connect(client).status_code == 200     # cached as bound to its own device
    body = plistlib.dumps({"UDID": other.udid, "Status": "Idle"}, fmt=plistlib.FMT_XML)
    response = enrolled.put(client, "/mdm/connect", body)
    assert response.status_code == 400 and b"bound to another device" in response.data


def test_deleted_device_is_refused_although_its_certificate_was_cached(app, client, enrolled):
    assert enrolled.connect(client).status_code == 200     # cached as bound
    with app.app_context():
        device = Device.query.filter_by(udid=enrolled.udid).one()
        DeviceCertificate.query.filter_by(device_id=device.id).delete()
        Command.query.filter_by(device_id=device.id).delete()
        db.session.delete(device)
        db.session.commit()
    response = enrolled.connect(client)
    assert response.status_code == 400


def test_authorize_reads_certificate_binding_and_device_in_one_query(app, enrolled):
    identity = certauth.Identity(enrolled.cert, certauth.fingerprint(enrolled.cert), "signature")
    rec = Recorder(app)
    try:
        with app.app_context():
            device = certauth.authorize(identity, enrolled.udid, enrolling=False)
            assert device.udid == enrolled.udid
            db.session.rollback()
    finally:
        rec.close()
    assert len([s for s in rec.statements if s.startswith("SELECT")]) == 1


def test_cache_is_out_of_use_while_a_retirement_commits(app, client, enrolled):
    """Between the database commit of a retirement and the end of its transaction no request of this
    process may take the cached 'bound' answer: at the DBAPI commit the cache is out of use and empty."""
    assert enrolled.connect(client).status_code == 200     # cached as bound
    old = certauth.fingerprint(enrolled.cert)
    assert old in certauth._auth_cache
    seen = []
    with app.app_context():
        engine = db.engine

    def at_commit(conn):
        seen.append((certauth._commits_in_flight, old in certauth._auth_cache))
    event.listen(engine, "commit", at_commit)
    try:
        reinstalled = DeviceIdentity(app, enrolled.udid)
        seen.clear()
        assert reinstalled.checkin(client, "Authenticate").status_code == 200
    finally:
        event.remove(engine, "commit", at_commit)
    assert seen and seen[-1] == (1, False)
    assert certauth._commits_in_flight == 0
    assert enrolled.connect(client).status_code == 400
    assert reinstalled.checkin(client, "TokenUpdate").status_code == 200
    assert reinstalled.connect(client).status_code == 200    # the cache works again afterwards


# ---- TokenUpdate: the same token, magic, topic and unlock token again is a read -------------------------

UNLOCK = b"unlock-token-bytes"


@pytest.fixture
def tokened(app, client, enrolled):
    """The enrolled device after one TokenUpdate with known values (a write: it stores them)."""
    values = {"Token": bytes.fromhex("cd" * 32), "PushMagic": "7C1F6AB4-8E2D-4F6B-9D1A-3B5C7E9F0A12",
              "UnlockToken": UNLOCK}
    assert enrolled.checkin(client, "TokenUpdate", **values).status_code == 200
    return values


def device_row(app, udid):
    with app.app_context():
        device = Device.query.filter_by(udid=udid).one()
        return (device.push_token, device.push_magic, device.unlock_token, device.push_token_invalid,
                device.last_seen_at)


def test_a_token_update_that_repeats_what_is_stored_writes_nothing(app, client, enrolled, tokened, recorder):
    before = device_row(app, enrolled.udid)
    recorder.reset()
    for values in (tokened, {**tokened, "UnlockToken": None}, {**tokened, "AwaitingConfiguration": False}):
        response = enrolled.checkin(client, "TokenUpdate", **values)
        assert response.status_code == 200 and response.data == b""
    assert recorder.writes() == [] and recorder.commits == 0 and recorder.locked_statements == 0
    assert device_row(app, enrolled.udid) == before


@pytest.mark.parametrize("change, expect", [
    ({"Token": bytes.fromhex("ef" * 32)}, lambda row: row[0] == "ef" * 32),
    ({"PushMagic": "00000000-1111-2222-3333-444444444444"}, lambda row: row[1] == "00000000-1111-2222-3333-444444444444"),
    ({"UnlockToken": b"another-unlock-token"}, lambda row: row[2] == b"another-unlock-token"),
])
def test_a_token_update_that_changes_a_value_takes_the_write_path_and_stores_it(app, client, enrolled, tokened,
                                                                                recorder, change, expect):
    recorder.reset()
    assert enrolled.checkin(client, "TokenUpdate", **{**tokened, **change}).status_code == 200
    assert recorder.commits == 1 and any(s.startswith("UPDATE") for s in recorder.writes())
    assert expect(device_row(app, enrolled.udid))


def test_a_repeated_token_after_apns_rejected_it_stays_rejected_and_writes_nothing(app, client, enrolled, tokened,
                                                                                  recorder):
    with app.app_context():
        Device.query.filter_by(udid=enrolled.udid).one().push_token_invalid = True
        db.session.commit()
    recorder.reset()
    assert enrolled.checkin(client, "TokenUpdate", **tokened).status_code == 200
    assert recorder.writes() == [] and recorder.commits == 0
    assert device_row(app, enrolled.udid)[3] is True     # as the write path leaves it: only a new token clears it


def test_a_token_update_with_a_stale_last_seen_time_writes_it(app, client, enrolled, tokened, recorder):
    set_last_seen(app, enrolled.udid, utcnow() - timedelta(seconds=Device.LAST_SEEN_RESOLUTION_SECONDS + 5))
    recorder.reset()
    assert enrolled.checkin(client, "TokenUpdate", **tokened).status_code == 200
    assert recorder.commits == 1
    assert (utcnow() - last_seen(app, enrolled.udid)).total_seconds() < 5


@pytest.mark.parametrize("change, status", [
    ({"Topic": "com.apple.mgmt.External.not-ours"}, 400),
    ({"Token": b""}, 400),
    ({"PushMagic": 5}, 400),
    ({"UnlockToken": "not bytes"}, 400),
    ({"AwaitingConfiguration": "yes"}, 400),
])
def test_a_token_update_the_write_path_refuses_is_still_refused(app, client, enrolled, tokened, change, status):
    """The read path answers only what the write path would answer 200: a wrong topic or a malformed key
    is refused exactly as before (the wrong topic audited), although token and magic match."""
    response = enrolled.checkin(client, "TokenUpdate", **{**tokened, **change})
    assert response.status_code == status
    if "Topic" in change:
        with app.app_context():
            assert AuditEvent.query.filter_by(action="device.topic_refused", object_id=enrolled.udid).count() == 1


def test_a_user_channel_token_update_takes_the_write_path(app, client, enrolled, tokened, recorder):
    recorder.reset()
    response = enrolled.checkin(client, "TokenUpdate", UserID="A1B2C3D4-0000-0000-0000-000000000001", **tokened)
    assert response.status_code == 200
    assert recorder.commits == 1      # the write path: it answers and ignores it, as before


def test_after_the_push_topic_changes_a_repeated_old_topic_is_refused(app, client, enrolled, tokened, monkeypatch):
    """The stored topic is the old one, and the device repeats it with its stored token: once this server's
    topic is another (a new push certificate), the TokenUpdate is refused and audited, never read-path 200."""
    monkeypatch.setattr(checkin, "server_topic", lambda: "com.apple.mgmt.External.a-new-certificate")
    response = enrolled.checkin(client, "TokenUpdate", **tokened)
    assert response.status_code == 400 and b"is not this server's push topic" in response.data
    with app.app_context():
        assert AuditEvent.query.filter_by(action="device.topic_refused", object_id=enrolled.udid).count() == 1
