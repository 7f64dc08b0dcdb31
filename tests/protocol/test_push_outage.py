"""APNs outage and an unusable push certificate: enqueueing still works, pushes are retried with back-off,
the UI says so in a banner, and nothing is lost. Real HTTPS server, real simulated device, real local
HTTP/2 APNs stand-in (tests/support/apns_server.py)."""
from __future__ import annotations

import datetime as dt
import time
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mdm.push import apns as push, cert as pushcert
from mdm.protocol import queue
from mdm.accounts import Role
from mdm.pki import create_ca, new_key, write_private_key
from mdm.enroll.tokens import create_token, enrollment_url
from mdm.extensions import db
from mdm.models import Command, Device, PushRequest, utcnow
from mdm.simulator.device import SimulatedDevice
from apns_server import FakeAPNs
from apps import plain_key_file
from ui_support import signed_in

BACKOFF_SECONDS = 600    # long: nothing retries by itself while the test looks; the test makes retries due


def wait_for(predicate, what: str, timeout: float = 20.0):
    """Poll a condition another thread makes true (a ceiling against hangs, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        db.session.rollback()
        value = predicate()
        if value:
            return value
        db.session.rollback()
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def push_row(device_id) -> PushRequest | None:
    db.session.rollback()
    return db.session.scalars(db.select(PushRequest).where(PushRequest.device_id == device_id)
                              .order_by(PushRequest.id.desc())).first()


def make_due(device_id) -> None:
    """What the passing of the back-off delay does: the pending row becomes due."""
    row = push_row(device_id)
    row.next_attempt_at = utcnow()
    db.session.commit()


def banner_text(browser) -> str | None:
    # The page runs in its own app context and session: end ours first (SQLite has one writer).
    db.session.rollback()
    page = browser.get("/").text
    start = page.find('id="push-banner"')
    return None if start < 0 else page[start:page.index("</div>", start)]


@pytest.fixture
def apns_for(tmp_path):
    servers = []

    def start(app) -> FakeAPNs:
        certs = Path(app.config["CERTS_DIR"])
        server = FakeAPNs(str(certs / "tls.pem"), plain_key_file(app, "tls.key", tmp_path), str(certs / "ca.pem"))
        server.__enter__()
        servers.append((server, app))
        app.config.update(APNS_GATEWAY=server.url, APNS_CA_FILE=str(certs / "ca.pem"),
                          APNS_BACKOFF_SECONDS=BACKOFF_SECONDS, APNS_MAX_ATTEMPTS=5)
        return server
    yield start
    for server, app in servers:
        push.shutdown(app)
        server.__exit__(None, None, None)


@pytest.fixture
def apns_first(pki_template):
    """The APNs stand-in started before the server, so the server process pushes to it from the start
    (the test suite's PKI template holds plaintext keys: no secrets key is needed to read them)."""
    server = FakeAPNs(str(pki_template / "tls.pem"), str(pki_template / "tls.key"), str(pki_template / "ca.pem"))
    server.__enter__()
    yield server
    server.__exit__(None, None, None)


def test_apns_outage_retries_with_backoff_shows_a_banner_and_loses_nothing(live_server_factory, apns_first,
                                                                             pki_template):
    apns = apns_first
    live_server = live_server_factory(APNS_GATEWAY=apns.url, APNS_CA_FILE=str(pki_template / "ca.pem"),
                                      APNS_BACKOFF_SECONDS=BACKOFF_SECONDS, APNS_MAX_ATTEMPTS=5)
    app = live_server.app
    device = SimulatedDevice(live_server.url, live_server.ca_file)
    token = device.push_token.hex()
    apns.answer(token, (503, "ServiceUnavailable"))          # APNs is down for this whole first part
    with app.app_context():
        url = enrollment_url(create_token(description="outage", max_uses=1))
        db.session.commit()
    device.enroll(url)
    assert device.connect() == 3        # the enrollment commands (their push failed: the device came anyway)

    with app.app_context():
        stored = Device.query.filter_by(udid=device.udid).one()
        device_id = stored.id
        wait_for(lambda: (push_row(device_id).attempts or 0) >= 1, "the enrollment push attempt")
        # Enqueueing succeeds while APNs is down: the command is stored, the push waits for a retry.
        command = queue.enqueue(stored, "DeviceLock", queued_by="admin")
        command_uuid = command.uuid
        db.session.commit()
        row = wait_for(lambda: (r := push_row(device_id)) and r.attempts >= 1 and r.requested_at and
                       r.last_status_code == 503 and r.claimed_at is None and r, "a failed push attempt")
        assert row.status == "pending"
        assert row.last_reason == "ServiceUnavailable"
        assert row.next_attempt_at >= utcnow() + dt.timedelta(seconds=BACKOFF_SECONDS / 2)
        assert db.session.get(Command, command.id).status == "queued"

        db.session.rollback()
        browser = signed_in(app, Role.ReadOnly)
        banner = banner_text(browser)
        assert banner is not None
        assert "1 push failing and being retried" in banner and "ServiceUnavailable" in banner
        assert token not in browser.get("/").text
        row = push_row(device_id)

        # The next attempt, once due, fails again and waits twice as long (exponential back-off).
        attempts = row.attempts
        make_due(device_id)
        before = utcnow()
        push.process_due_pushes(app)
        row = push_row(device_id)
        assert row.attempts == attempts + 1 and row.status == "pending"
        delay = BACKOFF_SECONDS * 2 ** (row.attempts - 1)
        assert before + dt.timedelta(seconds=delay) <= row.next_attempt_at <= utcnow() + dt.timedelta(seconds=delay)

        # APNs is back: the retry goes through and the banner goes away.
        apns.answer(token, 200)
        make_due(device_id)
        push.process_due_pushes(app)
        assert push_row(device_id).status == "sent"
        assert banner_text(browser) is None
        assert len(apns.requests_for(token)) == push_row(device_id).attempts == 3   # 503, 503, 200

    # Woken by that push, the device gets the command exactly once and acknowledges it.
    device.received_commands.clear()
    assert device.connect() == 1
    assert [c["CommandUUID"] for c in device.received_commands] == [command_uuid]
    assert device.connect() == 0
    with app.app_context():
        assert Command.query.filter_by(uuid=command_uuid).one().status == "Acknowledged"
    device.close()


def _install_expired_push_certificate(app) -> None:
    """An Apple-style (not our CA) push certificate that expired yesterday, with its key, as if an operator
    had installed it a year ago and forgotten to renew."""
    ca_key, ca_cert = create_ca("Fake Apple Application Integration")
    key = new_key()
    now = dt.datetime.now(dt.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.USER_ID, pushcert.current_topic()),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"APSP:{uuid.uuid4()}")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=366)).not_valid_after(now - dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    from cryptography.hazmat.primitives import serialization
    certs = Path(app.config["CERTS_DIR"])
    write_private_key(certs / pushcert.KEY_FILE, key)
    (certs / pushcert.CERT_FILE).write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_expired_push_certificate_keeps_commands_queued_and_shows_a_banner(app, apns_for):
    apns = apns_for(app)
    with app.app_context():
        _install_expired_push_certificate(app)
        assert pushcert.status()["not_after"] < utcnow()
        device = Device(udid="EXPIRED-CERT-1", enrollment_status="enrolled", push_token="ab" * 32,
                        push_magic=str(uuid.uuid4()).upper(), topic=pushcert.current_topic())
        db.session.add(device)
        db.session.commit()
        command = queue.enqueue(device, "DeviceInformation", queued_by="admin", push=False)
        db.session.commit()
        [result] = push.send_now([device.id])
        assert result.status == "failed" and "expired" in result.reason
        assert apns.requests == []                         # nothing was sent with an expired identity
        assert db.session.get(Command, command.id).status == "queued"   # the command waits, not lost
        db.session.rollback()
        banner = banner_text(signed_in(app, Role.ReadOnly))
        assert banner is not None and "push certificate expired on" in banner
        assert "1 push given up in the last 24 hours" in banner


def test_placeholder_push_identity_shows_a_banner_and_no_banner_when_pushes_work(app, apns_for):
    with app.app_context():
        app.config["APNS_GATEWAY"] = "production"
        db.session.rollback()
        browser = signed_in(app, Role.ReadOnly)
        banner = banner_text(browser)
        assert banner is not None and "placeholder" in banner
        apns_for(app)                                      # a gateway the placeholder identity can use
        assert banner_text(browser) is None
