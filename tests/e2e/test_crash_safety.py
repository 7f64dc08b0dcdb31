"""Crash safety: the real server (``python -m mdm.run``) is SIGKILLed while simulated devices enroll, fetch
and answer commands and send DDM status reports, then restarted. Whatever a device was answered 200 for
is in the database: no queued command is lost, no acknowledged result is lost, every status report
answered 200 is stored. Also: a bulk enqueue is all or nothing (mdm.protocol.queue.enqueue_bulk, the UI's bulk path).
"""
from __future__ import annotations

import json
import os
import plistlib
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from server_process import ServerProcess
from mdm import create_app
from mdm.extensions import db
from mdm.models import AuditEvent, Command, Device
from mdm.protocol.queue import CommandError, enqueue_bulk
from mdm.simulator.device import SimulatedDevice

PROJECT = Path(__file__).resolve().parents[2]
SECRETS_KEY = "5e" * 32
DEVICES = 6


class CrashServer(ServerProcess):
    """``python -m mdm.run`` on a free port with its own instance, certs and database."""

    def __init__(self, root: Path):
        super().__init__(root, {
            "INSTANCE_PATH": str(root / "instance"), "CERTS_DIR": str(root / "certs"),
            "DATABASE_URL": f"sqlite:///{root / 'mdm.db'}", "ORGANIZATION": "Crash Org",
            # Nothing listens there: pushes fail fast and are retried, as during an APNs outage.
            "APNS_GATEWAY": "https://127.0.0.1:9", "SECRETS_KEY": SECRETS_KEY,
        })

    def app(self):
        """An in-process app on the same database (the admin's side: tokens, enqueues, checks)."""
        config = {k: v for k, v in self.config.items()
                  if k not in ("INSTANCE_PATH", "PORT", "LISTEN_HOST", "SCHEDULER_ENABLED")}
        config.update(SCHEDULER_ENABLED=False, TESTING=True)
        return create_app(config, instance_path=self.config["INSTANCE_PATH"])


@pytest.fixture
def server(tmp_path):
    server = CrashServer(tmp_path)
    server.start()
    yield server
    server.stop()
    print(server.log())    # shown by pytest only when the test failed


class Ledger:
    """What the server answered 200 to, as the devices saw it (thread-safe)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.enrolled: set[str] = set()
        self.acknowledged: dict[str, str] = {}      # command uuid -> udid
        self.status_reports: dict[str, set[int]] = {}
        self.successes = 0
        self.failures: list[str] = []

    def ok(self, kind: str, *values):
        with self.lock:
            self.successes += 1
            if kind == "enrolled":
                self.enrolled.add(values[0])
            elif kind == "ack":
                self.acknowledged[values[0]] = values[1]
            elif kind == "status":
                self.status_reports.setdefault(values[0], set()).add(values[1])


def _kill_after(server: ServerProcess, ledger: Ledger, successes: int, work) -> None:
    """Run ``work`` in threads and SIGKILL the server once ``successes`` more requests got their 200."""
    target = ledger.successes + successes
    with ThreadPoolExecutor(max_workers=DEVICES) as pool:
        futures = work(pool)
        while ledger.successes < target and not all(f.done() for f in futures):
            time.sleep(0.005)
        server.kill()
        for future in futures:
            try:
                future.result()
            except Exception as exc:   # the connection died with the server: expected
                ledger.failures.append(type(exc).__name__)


def _answer_commands(device: SimulatedDevice, ledger: Ledger, rounds: int = 1000) -> None:
    """The simulator's command loop, recording each acknowledgement the server answered 200."""
    response = device._put(device.server_mdm_url, {"UDID": device.udid, "Status": "Idle"})
    for _ in range(rounds):
        assert response.status_code == 200, response.text
        if not response.content.strip():
            return
        command = plistlib.loads(response.content)
        handler = device.command_handlers.get(command["Command"]["RequestType"])
        # A re-enrolled device is told to sync declarations; this plain simulator just acknowledges.
        result = handler(device, command) if handler else {"Status": "Acknowledged"}
        result.update({"UDID": device.udid, "CommandUUID": command["CommandUUID"]})
        response = device._put(device.server_mdm_url, result)
        if response.status_code == 200 and result["Status"] == "Acknowledged":
            ledger.ok("ack", command["CommandUUID"], device.udid)


def _send_status_reports(device: SimulatedDevice, ledger: Ledger, count: int) -> None:
    for n in range(count):
        data = json.dumps({"StatusItems": {"crash-test": {"sequence": n}}, "Errors": []}).encode()
        response = device.checkin({"MessageType": "DeclarativeManagement", "UDID": device.udid,
                                   "Endpoint": "status", "Data": data})
        if response.status_code == 200:
            ledger.ok("status", device.udid, n)


def test_sigkill_at_several_moments_loses_nothing_that_was_answered(server):
    app = server.app()
    from mdm.enroll.tokens import create_token, enrollment_url
    with app.app_context():
        url = enrollment_url(create_token("crash test", max_uses=None))
        db.session.remove()
    ca_file = str(Path(server.config["CERTS_DIR"]) / "ca.pem")
    ledger = Ledger()
    devices: list[SimulatedDevice] = []

    def new_device() -> SimulatedDevice:
        return SimulatedDevice(server.url, ca_file)

    def enroll(device):
        device.enroll(url)
        ledger.ok("enrolled", device.udid)

    # 1. Killed while devices enroll (profile, SCEP, Authenticate, TokenUpdate).
    batch = [new_device() for _ in range(DEVICES)]
    _kill_after(server, ledger, 3, lambda pool: [pool.submit(enroll, d) for d in batch])
    server.start()
    assert ledger.enrolled, "no device finished enrolling before the kill"
    with app.app_context():
        for udid in ledger.enrolled:
            device = Device.query.filter_by(udid=udid).one()
            assert device.enrollment_status == "enrolled"
            # The TokenUpdate answered 200 queued the inventory commands in the same transaction.
            assert {c.request_type for c in Command.query.filter_by(device_id=device.id)} >= {
                "DeviceInformation", "SecurityInfo", "ProfileList"}
        db.session.remove()
    devices = [d for d in batch if d.udid in ledger.enrolled]
    for device in batch:   # the unlucky ones retry the whole enrollment, as a device does
        if device.udid not in ledger.enrolled:
            enroll(device)
            devices.append(device)

    # 2. A bulk command to every device, then killed while the devices fetch and answer commands.
    with app.app_context():
        rows = Device.query.filter(Device.udid.in_([d.udid for d in devices])).all()
        bulk = {c.uuid for c in enqueue_bulk(rows, "DeviceInformation", queued_by="crash-test")}
        db.session.commit()
        queued = {c.uuid for c in Command.query}
        db.session.remove()
    _kill_after(server, ledger, 4, lambda pool: [pool.submit(_answer_commands, d, ledger) for d in devices])
    server.start()
    with app.app_context():
        stored = {c.uuid: c for c in Command.query}
        assert queued <= set(stored), "a queued command was lost"
        for command_uuid in ledger.acknowledged:
            assert stored[command_uuid].status == "Acknowledged", command_uuid
            assert stored[command_uuid].response, "acknowledged without its result"
        db.session.remove()
    assert ledger.acknowledged, "no acknowledgement got through before the kill"

    # 3. Killed while devices send DDM status reports.
    _kill_after(server, ledger, 5, lambda pool: [pool.submit(_send_status_reports, d, ledger, 6) for d in devices])
    server.start()
    from mdm.ddm.state_models import StatusReport
    with app.app_context():
        for device in devices:
            row = Device.query.filter_by(udid=device.udid).one()
            stored_sequences = {json.loads(r.body)["StatusItems"]["crash-test"]["sequence"]
                                for r in StatusReport.query.filter_by(device_id=row.id)}
            assert ledger.status_reports.get(device.udid, set()) <= stored_sequences, device.udid
        db.session.remove()
    assert ledger.status_reports, "no status report got through before the kill"

    # After the restarts every device still gets every queued command, the bulk one included, and
    # finishes them all: nothing was lost or left half-sent.
    for device in devices:
        _answer_commands(device, ledger)
    with app.app_context():
        open_commands = Command.query.filter(Command.status.in_(("queued", "sent"))).count()
        final = {c.uuid: c.status for c in Command.query}
        detail = {c.uuid: (c.request_type, c.device_id, c.queued_by, str(c.queued_at)) for c in Command.query
                  if c.status in ("queued", "sent")}
        db.session.remove()
        db.engine.dispose()
    leftovers = {u: s for u, s in final.items() if s in ("queued", "sent")}
    assert open_commands == 0, (leftovers, detail)
    assert all(final[u] == "Acknowledged" for u in bulk)
    assert server.starts == 4 and ledger.failures     # three kills really cut devices off mid-request


# --- bulk enqueue: all or nothing ----------------------------------------------------------------------------

def _devices(app, *supervised: bool) -> list[int]:
    with app.app_context():
        rows = [Device(udid=f"BULK-{i}", product_name="iPhone15,2", os_version="17.5", build_version="21F79",
                       is_supervised=flag, enrollment_status="enrolled") for i, flag in enumerate(supervised)]
        db.session.add_all(rows)
        db.session.commit()
        return [r.id for r in rows]


def test_enqueue_bulk_stores_all_or_none(app):
    ids = _devices(app, True, True, False, True)
    with app.app_context():
        devices = Device.query.filter(Device.id.in_(ids)).order_by(Device.id).all()
        db.session.add(AuditEvent(actor="t", action="unrelated.work"))    # earlier work in the same transaction
        with pytest.raises(CommandError, match="BULK-2: RestartDevice needs a supervised iOS device"):
            enqueue_bulk(devices, "RestartDevice", queued_by="admin")
        assert Command.query.count() == 0                                  # not even the first two
        db.session.commit()
        assert AuditEvent.query.filter_by(action="unrelated.work").count() == 1   # the caller's work survives

        with pytest.raises(CommandError):
            enqueue_bulk(devices, "RestartDevice", queued_by="admin", no_such_option=True)
        created = enqueue_bulk([d for d in devices if d.is_supervised], "RestartDevice", queued_by="admin")
        db.session.commit()
        assert len({c.uuid for c in created}) == 3
        assert sorted(c.device_id for c in Command.query) == [ids[0], ids[1], ids[3]]
        assert all(plistlib.loads(c.payload)["CommandUUID"] == c.uuid for c in Command.query)


def test_ui_bulk_command_is_all_or_nothing(app):
    from ui_support import signed_in
    from mdm.accounts import Role
    ids = _devices(app, True, False, True)
    helper = signed_in(app, Role.HelpDesk, "helper")
    refused = helper.post("/devices/bulk", {"action": "command:RestartDevice", "device_id": [str(i) for i in ids],
                                            "confirm": "restart 3 devices"}, htmx=True)
    assert refused.status_code == 422 and "needs a supervised iOS device" in refused.text
    with app.app_context():
        assert Command.query.count() == 0
        assert AuditEvent.query.filter_by(action="command.bulk_queue").count() == 0
    sent = helper.post("/devices/bulk", {"action": "command:RestartDevice", "device_id": [str(ids[0]), str(ids[2])],
                                         "confirm": "restart 2 devices"}, htmx=True)
    assert sent.status_code == 200 and "Queued RestartDevice for 2 device(s)" in sent.text
    with app.app_context():
        assert Command.query.filter_by(request_type="RestartDevice", queued_by="helper").count() == 2
