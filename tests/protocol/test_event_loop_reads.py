"""Device read paths on the production server's event-loop thread (mdm/server/serve.py, mdm/protocol/views.py).

A check-in or connect that changes nothing is answered right on the event loop, without Flask, with the
answer Flask gives; anything that would write, or fails, is handed back untouched and runs through Flask
on a worker thread, where it is decided, written, refused and audited as before. First the bridge's event-loop step itself (called as the event loop calls
it), then the real server with its only worker thread stuck behind the database."""
from __future__ import annotations

import concurrent.futures
import plistlib
import sqlite3
import ssl
import time
from types import SimpleNamespace

import httpx
import pytest
from sqlalchemy.engine import make_url

from apps import POSTGRES_URL
from device_identity import DeviceIdentity, checkin_message, enrolled_and_drained
from mdm.extensions import db
from mdm.models import AuditEvent, Command, Device
from mdm.protocol import queue
from mdm.protocol.checkin import server_topic
from mdm.server.serve import EVENT_LOOP_MAX_BODY_BYTES, WSGIBridge, bridge_for


@pytest.fixture
def enrolled(app, client):
    return enrolled_and_drained(app, client)


def _body(message: dict) -> bytes:
    return plistlib.dumps(message, fmt=plistlib.FMT_XML)


def _environ(bridge: WSGIBridge, path: str, body: bytes, signature: str) -> dict:
    """The environ the bridge builds for a request granian hands it (its own ``_environ``)."""
    scope = SimpleNamespace(method="PUT", path=path, query_string="", server="127.0.0.1:8443",
                            client="127.0.0.1:50000", http_version="1.1", scheme="https",
                            headers={"host": "localhost:8443", "content-length": str(len(body)),
                                     "mdm-signature": signature,
                                     "content-type": "application/x-apple-aspen-mdm-checkin"})
    return bridge._environ(scope, body, "0123456789abcdef")


def _bridge(app) -> WSGIBridge:
    """The bridge with the device read paths offered to its event loop (on PostgreSQL the server offers
    none, ``serve.event_loop_reads``; the app's side of the contract is the same on both databases)."""
    return WSGIBridge(app, max_body_bytes=8 << 20, body_deadline_seconds=60, threads=1,
                      event_loop_reads=app.extensions["mdm_event_loop_reads"])


def on_event_loop(app, ident, path: str, message: dict, signature: str | None = None):
    """The bridge's event-loop step for one request: its answer, or None (handed to a worker thread)."""
    bridge, body = _bridge(app), _body(message)
    environ = _environ(bridge, path, body, signature or ident.sign(body))
    return bridge._answer_on_event_loop(bridge.event_loop_reads[("PUT", path)], environ, time.monotonic())


def on_worker_thread(app, ident, path: str, message: dict, signature: str | None = None):
    bridge, body = _bridge(app), _body(message)
    return bridge._call_app(_environ(bridge, path, body, signature or ident.sign(body)), time.monotonic())


def test_the_server_tries_only_the_device_check_in_routes_on_the_event_loop_and_only_on_sqlite(app):
    # A PostgreSQL read waits for another process: the event loop would wait with it.
    expected = set() if POSTGRES_URL else {("PUT", "/mdm/checkin"), ("PUT", "/mdm/connect")}
    assert set(bridge_for(app).event_loop_reads) == expected


def test_an_idle_that_changes_nothing_is_answered_on_the_event_loop_writing_nothing(app, enrolled, recorder):
    recorder.reset()
    answer = on_event_loop(app, enrolled, "/mdm/connect", {"UDID": enrolled.udid, "Status": "Idle"})
    assert answer is not None
    status, headers, data = answer
    assert (status, data) == (200, b"")
    assert ("X-Request-Id", "0123456789abcdef") in headers
    assert recorder.statements and recorder.writes() == []
    assert recorder.commits == 0 and recorder.locked_statements == 0


def test_a_repeated_token_update_is_answered_on_the_event_loop(app, client, enrolled, recorder):
    values = {"Token": bytes.fromhex("cd" * 32), "PushMagic": "7C1F6AB4-8E2D-4F6B-9D1A-3B5C7E9F0A12"}
    assert enrolled.checkin(client, "TokenUpdate", **values).status_code == 200   # stored (a write)
    with app.app_context():
        message = checkin_message(enrolled.udid, "TokenUpdate", Topic=server_topic(), **values)
    recorder.reset()
    answer = on_event_loop(app, enrolled, "/mdm/checkin", message)
    assert answer is not None and answer[0] == 200
    assert recorder.writes() == [] and recorder.commits == 0 and recorder.locked_statements == 0


def test_each_answer_from_the_event_loop_is_byte_for_byte_the_answer_flask_gives(app, client, enrolled):
    values = {"Token": bytes.fromhex("cd" * 32), "PushMagic": "7C1F6AB4-8E2D-4F6B-9D1A-3B5C7E9F0A12"}
    assert enrolled.checkin(client, "TokenUpdate", **values).status_code == 200
    with app.app_context():
        token_update = checkin_message(enrolled.udid, "TokenUpdate", Topic=server_topic(), **values)
    requests = [("/mdm/connect", {"UDID": enrolled.udid, "Status": "Idle"}), ("/mdm/checkin", token_update)]
    for endpoint in ("tokens", "declaration-items"):
        message = checkin_message(enrolled.udid, "DeclarativeManagement", Endpoint=endpoint)
        assert on_worker_thread(app, enrolled, "/mdm/checkin", message)[0] == 200   # stores and serves the set
        requests.append(("/mdm/checkin", message))
    for path, message in requests:
        from_loop = on_event_loop(app, enrolled, path, message)
        assert from_loop is not None, message
        assert from_loop == on_worker_thread(app, enrolled, path, message), message
    assert b"DeclarationsToken" in from_loop[2]


def test_an_idle_with_a_waiting_command_is_handed_to_a_worker_thread_untouched(app, enrolled, recorder):
    with app.app_context():
        device = Device.query.filter_by(udid=enrolled.udid).one()
        uuid = queue.enqueue(device, "DeviceInformation", push=False).uuid
        db.session.commit()
    recorder.reset()
    idle = {"UDID": enrolled.udid, "Status": "Idle"}
    assert on_event_loop(app, enrolled, "/mdm/connect", idle) is None
    assert recorder.writes() == [] and recorder.commits == 0 and recorder.locked_statements == 0
    with app.app_context():
        assert Command.query.filter_by(uuid=uuid).one().status == "queued"
    # The worker thread's run delivers it, as every Idle did before.
    status, _headers, data = on_worker_thread(app, enrolled, "/mdm/connect", idle)
    assert status == 200 and plistlib.loads(data)["CommandUUID"] == uuid
    with app.app_context():
        assert Command.query.filter_by(uuid=uuid).one().status == "sent"


def test_a_command_result_is_handed_to_a_worker_thread(app, enrolled, recorder):
    recorder.reset()
    assert on_event_loop(app, enrolled, "/mdm/connect", {
        "UDID": enrolled.udid, "Status": "Acknowledged", "CommandUUID": "5F1C3A52-0000-4000-8000-000000000001"}) is None
    assert recorder.writes() == [] and recorder.commits == 0


def test_a_refused_signature_is_handed_off_then_refused_and_audited_once(app, enrolled):
    stranger = DeviceIdentity(app, enrolled.udid, register=False)   # a certificate our records do not know
    idle = {"UDID": enrolled.udid, "Status": "Idle"}
    assert on_event_loop(app, stranger, "/mdm/connect", idle) is None
    with app.app_context():
        assert AuditEvent.query.filter_by(action="device.auth_failed").count() == 0
    status, _headers, data = on_worker_thread(app, stranger, "/mdm/connect", idle)
    assert status == 400
    with app.app_context():
        assert AuditEvent.query.filter_by(action="device.auth_failed").count() == 1


def test_an_unreadable_message_is_handed_off_then_refused_with_its_reason(app, enrolled):
    body = b"<plist>not a plist"
    bridge = _bridge(app)
    environ = _environ(bridge, "/mdm/connect", body, enrolled.sign(body))
    assert bridge._answer_on_event_loop(bridge.event_loop_reads[("PUT", "/mdm/connect")], environ,
                                        time.monotonic()) is None
    status, _headers, data = bridge._call_app(_environ(bridge, "/mdm/connect", body, enrolled.sign(body)),
                                              time.monotonic())
    assert status == 400 and data


# ---------------------------------------------------------------- the real server

def _put(client: httpx.Client, ident: DeviceIdentity, path: str, message: dict) -> httpx.Response:
    body = _body(message)
    return client.put(path, content=body, headers={"Mdm-Signature": ident.sign(body),
                                                    "Content-Type": "application/x-apple-aspen-mdm-checkin"})


def _enroll_over_https(client: httpx.Client, ident: DeviceIdentity, topic: str) -> None:
    for message_type in ("Authenticate", "TokenUpdate"):
        response = _put(client, ident, "/mdm/checkin", checkin_message(ident.udid, message_type, Topic=topic))
        assert response.status_code == 200, response.text
    response = _put(client, ident, "/mdm/connect", {"UDID": ident.udid, "Status": "Idle"})
    while response.content:
        uuid = plistlib.loads(response.content)["CommandUUID"]
        response = _put(client, ident, "/mdm/connect",
                        {"UDID": ident.udid, "Status": "Acknowledged", "CommandUUID": uuid})


class _DatabaseHeld:
    """Another client holds the write lock of the SQLite database file: reads go on, writes wait until
    ``release``."""

    def __init__(self, app):
        path = make_url(app.config["SQLALCHEMY_DATABASE_URI"]).database
        self.connection = sqlite3.connect(path, isolation_level=None)
        self.connection.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        if self.connection is not None:
            self.connection.rollback()
            self.connection.close()
            self.connection = None


@pytest.mark.skipif(bool(POSTGRES_URL), reason="with PostgreSQL every request runs on a worker thread")
def test_an_idle_is_answered_while_the_only_worker_thread_waits_for_the_database(live_server_factory):
    srv = live_server_factory(THREADS=1)
    app = srv.app
    ident = DeviceIdentity(app, "00008110-000A1B2C3D4E801F")
    with app.app_context():
        topic = server_topic()
    tls = ssl.create_default_context(cafile=srv.ca_file)
    with httpx.Client(base_url=srv.url, verify=tls, timeout=60) as client:
        _enroll_over_https(client, ident, topic)
    new_token = b"\x01" * 32
    held = _DatabaseHeld(app)
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool, \
                httpx.Client(base_url=srv.url, verify=tls, timeout=60) as writer, \
                httpx.Client(base_url=srv.url, verify=tls, timeout=60) as big_reader, \
                httpx.Client(base_url=srv.url, verify=tls, timeout=20) as reader:
            # A new push token: the write path, on the server's only worker thread, waits for the database.
            write = pool.submit(_put, writer, ident, "/mdm/checkin",
                                checkin_message(ident.udid, "TokenUpdate", Topic=topic, Token=new_token))
            time.sleep(1.0)   # SQLite shows no waiter: give the write time to reach its BEGIN IMMEDIATE
            assert not write.done()
            # An Idle with a body over the event loop's limit waits for a worker thread like any request.
            padded = {"UDID": ident.udid, "Status": "Idle", "Padding": "x" * EVENT_LOOP_MAX_BODY_BYTES}
            big_idle = pool.submit(_put, big_reader, ident, "/mdm/connect", padded)
            time.sleep(0.5)
            idle = _put(reader, ident, "/mdm/connect", {"UDID": ident.udid, "Status": "Idle"})
            assert (idle.status_code, idle.content) == (200, b"")
            assert not write.done()          # the Idle did not wait for that thread
            assert not big_idle.done()
            held.release()
            assert write.result().status_code == 200
            assert big_idle.result().status_code == 200
    finally:
        held.release()
    with app.app_context():
        assert Device.query.filter_by(udid=ident.udid).one().push_token == new_token.hex()
