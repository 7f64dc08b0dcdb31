"""APNs pushes against a real local HTTP/2 TLS server, and the push certificate's life cycle."""
from __future__ import annotations

import base64
import os
import re
import stat
import threading
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mdm.push import apns as push, cert as pushcert
from mdm.pki import create_ca, issue_certificate, load_private_key, new_key
from mdm.extensions import db
from mdm.models import AuditEvent, Device, PushRequest
from apns_server import FakeAPNs
from apps import plain_key_file
from server_process import free_port
from pushcert_kit import (SigningService, apple_push_certificate, csr_of_request, make_apple_chain, make_vendor,
                                openssl)

TOKEN_BYTES = 32


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="session")
def fake_apple_ca(tmp_path_factory):
    """Stands in for Apple's push CA: certificates it signs are *not* placeholders."""
    key, cert = create_ca("Fake Apple Application Integration")
    path = tmp_path_factory.mktemp("apple-ca") / "apple-ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


@pytest.fixture
def ctx(app):
    with app.app_context():
        yield app
    push.shutdown(app)


@pytest.fixture
def apns(app, fake_apple_ca, tmp_path):
    """The fake APNs, serving our test CA's TLS certificate and requiring a client certificate issued
    by our CA (placeholder identity) or the fake Apple CA (installed certificates)."""
    certs = Path(app.config["CERTS_DIR"])
    client_cas = tmp_path / "client-cas.pem"
    client_cas.write_bytes((certs / "ca.pem").read_bytes() + fake_apple_ca[2].read_bytes())
    with FakeAPNs(str(certs / "tls.pem"), plain_key_file(app, "tls.key", tmp_path), str(client_cas)) as server:
        app.config.update(APNS_GATEWAY=server.url, APNS_CA_FILE=str(certs / "ca.pem"),
                          APNS_BACKOFF_SECONDS=0.05, APNS_MAX_ATTEMPTS=3)
        yield server
        push.shutdown(app)


def add_device(udid=None, *, status="enrolled", token=True, magic=True, topic=None, invalid=False) -> Device:
    device = Device(udid=udid or str(uuid.uuid4()).upper(), enrollment_status=status,
                    push_token=os.urandom(TOKEN_BYTES).hex() if token else None,
                    push_magic=str(uuid.uuid4()).upper() if magic else None,
                    topic=topic or pushcert.current_topic(), push_token_invalid=invalid)
    db.session.add(device)
    db.session.commit()
    return device


def wait_for(predicate, what: str, timeout: float = 20.0):
    """Poll a condition another thread makes true (a ceiling against hangs, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        db.session.rollback()  # see the other thread's commits
        value = predicate()
        if value:
            return value
        db.session.rollback()  # SQLite: never sleep holding the write lock the sender needs
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def push_row(device_id) -> PushRequest:
    return db.session.scalars(db.select(PushRequest).where(PushRequest.device_id == device_id)
                              .order_by(PushRequest.id.desc())).first()


def finished_row(device_id):
    row = push_row(device_id)
    return row if row is not None and row.status != "pending" else None


def cert_sha256(path: Path) -> str:
    cert = x509.load_pem_x509_certificates(path.read_bytes())[0]
    return cert.fingerprint(hashes.SHA256()).hex()


def apple_signed(fake_apple_ca, public_key, topic=None, days=365) -> x509.Certificate:
    ca_key, ca_cert, _ = fake_apple_ca
    topic = topic or f"com.apple.mgmt.External.{uuid.uuid4()}"
    subject = x509.Name([x509.NameAttribute(NameOID.USER_ID, topic),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"APSP:{uuid.uuid4()}"),
                         x509.NameAttribute(NameOID.COUNTRY_NAME, "US")])
    return issue_certificate(ca_key, ca_cert, public_key, subject, days=days, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def spki(key_or_cert) -> bytes:
    public = key_or_cert.public_key()
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


# ---------------------------------------------------------------- what APNs receives


def test_push_is_an_http2_mdm_request_with_our_client_certificate(ctx, apns, caplog):
    device = add_device()
    caplog.set_level("DEBUG")
    [result] = push.send_now([device.id])
    assert "/3/device/<token>" in caplog.text      # httpx's request log line, redacted
    assert device.push_token not in caplog.text and device.push_magic not in caplog.text

    assert result.status == "sent" and result.status_code == 200 and result.apns_id
    [received] = apns.requests
    assert received.alpn_protocol == "h2" and received.http_version == "2"
    assert received.method == "POST"
    assert received.path == f"/3/device/{device.push_token}"
    assert received.headers["apns-topic"] == pushcert.current_topic() == device.topic
    assert received.headers["apns-push-type"] == "mdm"
    assert received.json == {"mdm": device.push_magic}
    certs = Path(ctx.config["CERTS_DIR"])
    assert received.client_cert_sha256 == cert_sha256(certs / "push.pem")
    row = push_row(device.id)
    assert (row.status, row.attempts, row.last_status_code, row.apns_id) == ("sent", 1, 200, result.apns_id)
    assert row.sent_at is not None


@pytest.mark.parametrize("status_code, reason", [(400, "BadDeviceToken"), (410, "Unregistered")])
def test_dead_token_marks_device_and_is_not_retried(ctx, apns, status_code, reason):
    device = add_device()
    apns.answer(device.push_token, (status_code, reason))
    push.request_push([device.id])
    db.session.commit()

    row = wait_for(lambda: finished_row(device.id), "the push to finish")
    assert (row.status, row.last_status_code, row.last_reason, row.attempts) == ("failed", status_code, reason, 1)
    assert db.session.get(Device, device.id).push_token_invalid is True
    assert len(apns.requests_for(device.push_token)) == 1
    # Later pushes are skipped until the device sends a new token.
    [again] = push.send_now([device.id])
    assert again.status == "skipped" and "rejected by APNs" in again.reason
    assert len(apns.requests_for(device.push_token)) == 1


def test_rate_limit_and_server_errors_are_retried_until_sent(ctx, apns):
    device = add_device()
    apns.answer(device.push_token, (429, "TooManyRequests"), (500, "InternalServerError"), 200)
    push.request_push([device.id])
    db.session.commit()

    row = wait_for(lambda: finished_row(device.id), "the retried push to finish")
    assert (row.status, row.attempts, row.last_status_code) == ("sent", 3, 200)
    assert len(apns.requests_for(device.push_token)) == 3
    assert db.session.get(Device, device.id).push_token_invalid is False


def test_failure_is_recorded_after_max_attempts(ctx, apns):
    device = add_device()
    apns.answer(device.push_token, (503, "ServiceUnavailable"))
    push.request_push([device.id])
    db.session.commit()

    row = wait_for(lambda: finished_row(device.id), "the push to give up")
    assert (row.status, row.attempts, row.last_status_code, row.last_reason) == \
        ("failed", 3, 503, "ServiceUnavailable")
    assert len(apns.requests_for(device.push_token)) == 3
    assert db.session.get(Device, device.id).push_token_invalid is False


def test_connection_errors_are_retried_then_recorded(ctx, apns):
    ctx.config["APNS_GATEWAY"] = f"https://127.0.0.1:{free_port()}"   # nothing listens there
    device = add_device()
    push.request_push([device.id])
    db.session.commit()

    row = wait_for(lambda: finished_row(device.id), "the push to give up")
    assert (row.status, row.attempts, row.last_status_code) == ("failed", 3, None)
    assert row.last_reason.startswith("connection error")
    assert device.push_token not in row.last_reason


def test_request_push_returns_before_apns_is_contacted(ctx, apns):
    device = add_device()
    apns.hold()   # APNs answers nothing until released
    push.request_push([device.id])
    assert apns.requests == []          # nothing leaves before the caller's transaction commits
    db.session.commit()                 # returns although APNs has not answered
    assert push_row(device.id).status == "pending"

    wait_for(lambda: apns.requests, "the background sender to reach APNs")
    assert push_row(device.id).status == "pending"   # still in flight: APNs is holding
    apns.release()
    row = wait_for(lambda: finished_row(device.id), "the push to be sent")
    assert row.status == "sent"


def test_one_pending_row_per_device_and_nothing_after_rollback(ctx, apns):
    first, second = add_device(), add_device()
    push.request_push([first.id, first.id, second.id])
    push.request_push([first.id])
    db.session.flush()
    assert db.session.scalar(db.select(db.func.count(PushRequest.id))) == 2
    db.session.rollback()
    assert db.session.scalar(db.select(db.func.count(PushRequest.id))) == 0
    # A later commit of unrelated work does not send anything either.
    add_device()
    assert push.process_due_pushes(ctx) is None
    assert apns.requests == []


def test_requests_for_a_fleet_keep_one_pending_row_each_and_bump_the_loaded_ones(ctx, apns):
    """request_push writes with bulk statements: a device with a pending row gets its requested_at moved
    (also on the object this session already holds), the others one new row each, repeats folded."""
    apns.hold()
    devices = [add_device() for _ in range(5)]
    push.request_push([devices[0].id, devices[1].id])
    db.session.flush()
    held = push_row(devices[0].id)
    first_requested = held.requested_at
    time.sleep(0.01)
    assert push.request_push([d.id for d in reversed(devices)] + [devices[2].id]) == sorted(d.id for d in devices)
    db.session.flush()
    rows = db.session.scalars(db.select(PushRequest).order_by(PushRequest.device_id)).all()
    assert [(r.device_id, r.status) for r in rows] == [(d.id, "pending") for d in devices]
    assert held.requested_at > first_requested          # the loaded object reads the bumped value
    assert {r.requested_at for r in rows} == {held.requested_at}
    assert push.request_push([]) == []
    db.session.rollback()
    apns.release()


def test_push_lookups_use_an_index_and_never_scan_or_sort_the_pending_rows(ctx, apns):
    """SQLite once answered "this device's pending row" and "the next due rows, in order" from an index
    on status alone: a scan (or a sort) of every pending row per lookup, quadratic for a fleet-wide
    change. Every statement on push_requests that request_push and the sender run must search an index
    on the device or on (status, due time), with no temporary sort."""
    if db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's planner (PostgreSQL plans from table statistics)")
    captured, test_thread, in_request_push = [], threading.get_ident(), [False]

    def capture(conn, cursor, statement, parameters, context, executemany):
        # request_push's statements in this thread, the sender's in its own (not this test's own reads)
        mine = threading.get_ident() == test_thread
        if ((in_request_push[0] or not mine) and "push_requests" in statement and not executemany
                and not statement.lstrip().upper().startswith("INSERT")):
            captured.append((statement, parameters))
    devices = [add_device(token=False) for _ in range(3)]
    sqlalchemy.event.listen(db.engine, "before_cursor_execute", capture)
    try:
        for ids in ([d.id for d in devices], [devices[0].id]):
            in_request_push[0] = True
            push.request_push(ids)
            in_request_push[0] = False
            db.session.commit()
        wait_for(lambda: all(finished_row(d.id) for d in devices), "the sender to skip the token-less devices")
    finally:
        sqlalchemy.event.remove(db.engine, "before_cursor_execute", capture)
    plans = []
    db.session.rollback()      # the test's own reads end before the plans are asked for
    with db.engine.connect() as conn:
        for statement, parameters in captured:
            if statement.lstrip().upper().startswith(("SELECT", "UPDATE")) and "WHERE" in statement.upper():
                rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
                plans.append((statement, " / ".join(r[-1] for r in rows)))
    lookups = [(s, p) for s, p in plans if "push_requests.status" in s]
    assert any("device_id IN" in s for s, _ in lookups) and any("next_attempt_at" in s for s, _ in lookups)
    for statement, plan in lookups:
        assert "TEMP B-TREE" not in plan, (statement, plan)
        assert ("ix_push_requests_device_status" in plan or "ix_push_requests_status_due" in plan
                or "PRIMARY KEY" in plan or "INTEGER PRIMARY KEY" in plan), (statement, plan)
        assert "USING INDEX ix_push_requests_status " not in plan + " ", (statement, plan)


def test_request_during_flight_sends_again(ctx, apns):
    """A command queued while its device's push is in flight must wake the device once more."""
    device = add_device()
    apns.hold()
    push.request_push([device.id])
    db.session.commit()
    wait_for(lambda: apns.requests, "the first push to reach APNs")
    push.request_push([device.id])      # folded into the in-flight row
    db.session.commit()
    assert db.session.scalar(db.select(db.func.count(PushRequest.id))) == 1
    apns.release()

    row = wait_for(lambda: finished_row(device.id), "both pushes to be sent")
    assert row.status == "sent"
    assert len(apns.requests_for(device.push_token)) == 2


def test_devices_that_cannot_be_pushed_are_skipped(ctx, apns):
    unenrolled = add_device(status="unenrolled")
    no_token = add_device(token=False)
    invalid = add_device(invalid=True)
    other_topic = add_device(topic="com.apple.mgmt.External.someone-else")
    results = push.send_now([unenrolled.id, no_token.id, invalid.id, other_topic.id, 999_999])

    assert [r.status for r in results] == ["skipped"] * 5
    reasons = [r.reason for r in results]
    assert "not enrolled" in reasons[0] and "no push token" in reasons[1]
    assert "rejected by APNs" in reasons[2] and "re-enroll" in reasons[3] and reasons[4] == "no such device"
    assert push_row(unenrolled.id).status == "skipped" and push_row(unenrolled.id).last_reason == reasons[0]
    assert apns.requests == []


def test_placeholder_identity_never_pushes_to_apple(ctx):
    ctx.config["APNS_GATEWAY"] = "production"
    device = add_device()
    [result] = push.send_now([device.id])
    assert result.status == "failed" and "placeholder" in result.reason
    assert pushcert.status()["is_placeholder"] is True


def test_client_is_rebuilt_when_the_push_certificate_changes(ctx, apns, fake_apple_ca):
    device = add_device()
    certs = Path(ctx.config["CERTS_DIR"])
    placeholder_sha = cert_sha256(certs / "push.pem")
    assert push.send_now([device.id])[0].status == "sent"

    key = new_key()
    cert = apple_signed(fake_apple_ca, key.public_key(), topic=device.topic)  # a renewal keeps the topic
    pushcert.install_certificate(pkcs12.serialize_key_and_certificates(
        b"push", key, cert, None, serialization.BestAvailableEncryption(b"pw")), "pw")
    assert push.send_now([device.id])[0].status == "sent"

    first, second = apns.requests_for(device.push_token)
    assert first.client_cert_sha256 == placeholder_sha
    assert second.client_cert_sha256 == cert.fingerprint(hashes.SHA256()).hex() != placeholder_sha


def test_gateway_names_and_scheduler_job(app):
    assert push.gateway_url({"APNS_GATEWAY": "production"}) == "https://api.push.apple.com"
    assert push.gateway_url({"APNS_GATEWAY": "sandbox"}) == "https://api.sandbox.push.apple.com"
    assert push.gateway_url({"APNS_GATEWAY": "https://apns.test:8443/"}) == "https://apns.test:8443"
    with pytest.raises(ValueError):
        push.gateway_url({"APNS_GATEWAY": "http://plain.example"})
    from mdm.scheduler import registered_jobs
    assert (push.process_due_pushes, "interval", {"seconds": 30}) in registered_jobs()   # push.init_app


# ---------------------------------------------------------------- the push certificate


def test_placeholder_identity_is_created_on_first_run(ctx):
    from mdm.ops.bootstrap import initialise
    certs = Path(ctx.config["CERTS_DIR"])
    pushcert.init_app(ctx)
    pushcert.init_app(ctx)
    assert ctx.extensions["mdm_init_hooks"].count(pushcert._init_hook) == 1
    for name in ("push.pem", "push.key"):
        (certs / name).unlink(missing_ok=True)

    lines = initialise()
    topic = pushcert.current_topic()
    assert re.fullmatch(r"com\.apple\.mgmt\.External\.[0-9a-f-]{36}", topic)
    assert any(topic in line and "PLACEHOLDER" in line for line in lines)
    assert stat.S_IMODE(os.stat(certs / "push.key").st_mode) == 0o600
    info = pushcert.status()
    assert info["is_placeholder"] is True and info["topic"] == topic
    assert pushcert.PLACEHOLDER_LABEL in info["subject"]
    assert pushcert.current_topic() == topic  # stable
    cert = x509.load_pem_x509_certificate((certs / "push.pem").read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate((certs / "ca.pem").read_bytes()))

    # Also made lazily, when something needs a topic before the first-run set-up ran.
    for name in ("push.pem", "push.key"):
        (certs / name).unlink()
    assert pushcert.current_topic() != topic and pushcert.status()["is_placeholder"] is True


def test_csr_then_pem_install_moves_the_pending_key_into_place(ctx, fake_apple_ca):
    certs = Path(ctx.config["CERTS_DIR"])
    old_topic = pushcert.current_topic()
    old_key = (certs / "push.key").read_bytes()

    csr = x509.load_pem_x509_csr(pushcert.generate_csr(actor="admin"))
    assert csr.is_signature_valid
    pending = load_private_key(certs / "push.key.pending")
    assert stat.S_IMODE(os.stat(certs / "push.key.pending").st_mode) == 0o600
    assert spki(csr) == spki(pending)
    assert pushcert.current_topic() == old_topic and (certs / "push.key").read_bytes() == old_key
    assert pushcert.status()["pending_csr"] is True

    new_topic = f"com.apple.mgmt.External.{uuid.uuid4()}"
    info = pushcert.install_certificate(pem(apple_signed(fake_apple_ca, csr.public_key(), new_topic)))
    assert info["topic"] == new_topic == pushcert.current_topic()
    assert info["is_placeholder"] is False and info["pending_csr"] is False
    assert 363 <= info["days_left"] <= 365
    assert spki(load_private_key(certs / "push.key")) == spki(pending)
    assert stat.S_IMODE(os.stat(certs / "push.key").st_mode) == 0o600
    actions = [e.action for e in db.session.scalars(db.select(AuditEvent).order_by(AuditEvent.id))]
    assert actions[-2:] == ["push_certificate.csr", "push_certificate.install"]
    install = db.session.scalars(db.select(AuditEvent).order_by(AuditEvent.id.desc())).first()
    assert install.before["topic"] == old_topic and install.after["topic"] == new_topic


def test_pkcs12_install_replaces_the_key(ctx, fake_apple_ca):
    certs = Path(ctx.config["CERTS_DIR"])
    pushcert.current_topic()
    key = new_key()
    cert = apple_signed(fake_apple_ca, key.public_key())
    p12 = pkcs12.serialize_key_and_certificates(b"push", key, cert, [fake_apple_ca[1]],
                                                serialization.BestAvailableEncryption(b"secret"))
    with pytest.raises(pushcert.PushCertError, match="password"):
        pushcert.install_certificate(p12, "wrong")
    info = pushcert.install_certificate(p12, "secret")
    assert info["topic"] == pushcert.topic_of(cert) and info["is_placeholder"] is False
    assert spki(load_private_key(certs / "push.key")) == spki(key)
    # Only the leaf is kept: the CA is self-signed and APNs does not need it.
    assert len(x509.load_pem_x509_certificates((certs / "push.pem").read_bytes())) == 1


def test_refuses_a_certificate_for_a_key_we_do_not_hold(ctx, fake_apple_ca):
    certs = Path(ctx.config["CERTS_DIR"])
    topic = pushcert.current_topic()
    pushcert.generate_csr()
    before = (certs / "push.pem").read_bytes(), (certs / "push.key").read_bytes()
    stranger = apple_signed(fake_apple_ca, new_key().public_key())
    with pytest.raises(pushcert.PushCertError, match="matches none of our keys"):
        pushcert.install_certificate(pem(stranger))
    assert ((certs / "push.pem").read_bytes(), (certs / "push.key").read_bytes()) == before
    assert pushcert.current_topic() == topic


def test_refuses_what_is_not_an_mdm_push_certificate(ctx, fake_apple_ca):
    key = new_key()
    ca_key, ca_cert, _ = fake_apple_ca
    web_cert = issue_certificate(ca_key, ca_cert, key.public_key(),
                                 x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.example.com")]),
                                 days=30, eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    with pytest.raises(pushcert.PushCertError, match="not an MDM push certificate"):
        pushcert.install_certificate(pem(web_cert) + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(pushcert.PushCertError, match="not a PEM or DER"):
        pushcert.install_certificate(b"garbage that is no certificate")


def test_topic_change_is_refused_while_devices_use_the_installed_topic(ctx, fake_apple_ca):
    first_key = new_key()
    first = apple_signed(fake_apple_ca, first_key.public_key())
    bundle = pkcs12.serialize_key_and_certificates(b"p", first_key, first, None, serialization.NoEncryption())
    pushcert.install_certificate(bundle)            # replacing the placeholder is always allowed
    add_device(topic=pushcert.topic_of(first))

    other_key = new_key()
    other = pkcs12.serialize_key_and_certificates(b"p", other_key, apple_signed(fake_apple_ca, other_key.public_key()),
                                                  None, serialization.NoEncryption())
    with pytest.raises(pushcert.PushCertError, match="1 enrolled device"):
        pushcert.install_certificate(other)
    assert pushcert.current_topic() == pushcert.topic_of(first)
    info = pushcert.install_certificate(other, allow_topic_change=True)
    assert info["topic"] != pushcert.topic_of(first)


def test_cli_csr_install_show_and_send(app, apns, fake_apple_ca, tmp_path):
    runner = app.test_cli_runner()
    csr_path, cert_path = tmp_path / "push.csr", tmp_path / "MDM_Certificate.pem"
    result = runner.invoke(args=["mdm", "push", "csr", "--out", str(csr_path)])
    assert result.exit_code == 0, result.output
    csr = x509.load_pem_x509_csr(csr_path.read_bytes())

    with app.app_context():
        topic = pushcert.current_topic()  # a renewal: Apple keeps the topic
        device = add_device(udid="00008110-000A1B2C3D4E5F60", topic=topic)
        token = device.push_token
    cert_path.write_bytes(pem(apple_signed(fake_apple_ca, csr.public_key(), topic)))
    result = runner.invoke(args=["mdm", "push", "install", str(cert_path)])
    assert result.exit_code == 0, result.output
    assert "installed" in result.output

    result = runner.invoke(args=["mdm", "push", "show"])
    assert result.exit_code == 0, result.output
    assert topic in result.output and "days left" in result.output and "Apple push certificate" in result.output

    result = runner.invoke(args=["mdm", "push", "send", "00008110-000A1B2C3D4E5F60"])
    assert result.exit_code == 0, result.output
    assert "sent" in result.output and "HTTP 200" in result.output
    assert len(apns.requests_for(token)) == 1

    result = runner.invoke(args=["mdm", "push", "send", "NO-SUCH-UDID"])
    assert result.exit_code != 0 and "no device" in result.output
    with app.app_context():
        actors = {e.actor for e in db.session.scalars(db.select(AuditEvent).where(
            AuditEvent.action.like("push_certificate.%")))}
    assert all(a.startswith("cli") for a in actors) and actors


def test_finished_pushes_are_pruned_after_a_month(ctx):
    import datetime as dt
    from mdm.models import utcnow
    device = add_device()
    old = PushRequest(device_id=device.id, status="sent", requested_at=utcnow() - dt.timedelta(days=31))
    recent = PushRequest(device_id=device.id, status="failed", requested_at=utcnow() - dt.timedelta(days=29))
    db.session.add_all([old, recent])
    db.session.commit()
    old_id, recent_id = old.id, recent.id
    push._last_prune[0] = 0.0
    assert push.process_due_pushes(ctx) is None
    assert db.session.get(PushRequest, old_id) is None
    assert db.session.get(PushRequest, recent_id) is not None


# ---------------------------------------------------------------- getting the certificate: both routes


@pytest.fixture(scope="session")
def vendor(apple_chain):
    return make_vendor(apple_chain)


def check_request_with_openssl(request_b64: bytes, vendor_cert: x509.Certificate, chain, tmp_path: Path) -> bytes:
    """Apple's checks, done with the `openssl` command: the signature over the exact CSR DER bytes with
    the vendor's public key, and the chain vendor → WWDR → root. Returns the CSR DER."""
    import plistlib
    assert re.fullmatch(rb"[A-Za-z0-9+/=]+\n?", request_b64)
    plist = plistlib.loads(base64.b64decode(request_b64))
    assert set(plist) == {"PushCertRequestCSR", "PushCertCertificateChain", "PushCertSignature"}
    assert base64.b64decode(request_b64).startswith(b"<?xml")          # an XML property list
    csr_der = base64.b64decode(plist["PushCertRequestCSR"])
    (tmp_path / "csr.der").write_bytes(csr_der)
    (tmp_path / "sig.bin").write_bytes(base64.b64decode(plist["PushCertSignature"]))
    (tmp_path / "vendor-pub.pem").write_bytes(vendor_cert.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    out = openssl("dgst", "-sha256", "-verify", str(tmp_path / "vendor-pub.pem"),
                  "-signature", str(tmp_path / "sig.bin"), str(tmp_path / "csr.der"))
    assert out.strip() == b"Verified OK"
    in_plist = x509.load_pem_x509_certificates(plist["PushCertCertificateChain"].encode())
    assert in_plist == [vendor_cert, chain.wwdr, chain.root]
    (tmp_path / "root.pem").write_bytes(pem(chain.root))
    (tmp_path / "wwdr.pem").write_bytes(pem(chain.wwdr))
    (tmp_path / "vendor.pem").write_bytes(pem(vendor_cert))
    assert b"OK" in openssl("verify", "-CAfile", str(tmp_path / "root.pem"), "-untrusted", str(tmp_path / "wwdr.pem"),
                            str(tmp_path / "vendor.pem"))
    return csr_der


def install_and_push(app, runner, fake_apple_ca, csr, tmp_path, topic=None):
    """identity.apple.com's part (a certificate for the CSR's key, from the fake Apple CA), then
    `flask mdm push install` and a push that reaches the local APNs with that certificate."""
    cert = apple_push_certificate(fake_apple_ca, csr.public_key(), topic)
    (tmp_path / "MDM_Certificate.pem").write_bytes(pem(cert))
    result = runner.invoke(args=["mdm", "push", "install", str(tmp_path / "MDM_Certificate.pem")])
    assert result.exit_code == 0, result.output
    with app.app_context():
        device = add_device(topic=pushcert.topic_of(cert))
        token = device.push_token
        [sent] = push.send_now([device.id])
        assert sent.status == "sent", sent
        assert pushcert.status()["pending"] is None
        push.shutdown(app)
    return cert, token


def test_vendor_route_request_verifies_with_openssl_then_installs_and_pushes(app, apns, fake_apple_ca, apple_chain,
                                                                            vendor, tmp_path):
    runner = app.test_cli_runner()
    certs = Path(app.config["CERTS_DIR"])
    (tmp_path / "vendor.p12").write_bytes(vendor.p12(b"vendor pw", apple_chain))
    out = tmp_path / "push-request.b64"
    result = runner.invoke(args=["mdm", "push", "csr", "--vendor-p12", str(tmp_path / "vendor.p12"),
                                 "--vendor-password", "vendor pw", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "identity.apple.com" in result.output

    csr_der = check_request_with_openssl(out.read_bytes(), vendor.cert, apple_chain, tmp_path)
    csr = x509.load_der_x509_csr(csr_der)
    pending_file = (certs / "push.key.pending").read_bytes()
    assert b"PRIVATE KEY" not in pending_file                       # sealed at rest
    with app.app_context():
        assert spki(load_private_key(certs / "push.key.pending")) == spki(csr)
        info = pushcert.status()
        assert info["pending"]["route"] == "vendor" and info["pending"]["request_ready"] is True
        assert pushcert.pending_request().strip() == out.read_bytes().strip()

    result = runner.invoke(args=["mdm", "push", "show"])
    assert "own vendor certificate" in result.output and "request ready" in result.output

    cert, token = install_and_push(app, runner, fake_apple_ca, csr, tmp_path)
    [received] = apns.requests_for(token)
    assert received.client_cert_sha256 == cert.fingerprint(hashes.SHA256()).hex()
    assert received.headers["apns-topic"] == pushcert.topic_of(cert)
    with app.app_context():
        actions = [e.action for e in db.session.scalars(db.select(AuditEvent).where(
            AuditEvent.action.like("push_certificate.%")).order_by(AuditEvent.id))]
        assert actions == ["push_certificate.request", "push_certificate.install"]
    assert not (certs / "push.key.pending").exists() and not (certs / "push.request.b64").exists()


def test_vendor_p12_without_apple_chain_needs_the_chain_file(ctx, apple_chain, vendor, tmp_path):
    certs = Path(ctx.config["CERTS_DIR"])
    bare = vendor.p12(b"pw", None)
    with pytest.raises(pushcert.PushCertError, match="--apple-chain") as refused:
        pushcert.create_vendor_request(bare, "pw")
    assert "AppleWWDRCAG3.cer" in str(refused.value)
    with pytest.raises(pushcert.PushCertError, match="wrong password"):
        pushcert.create_vendor_request(bare, "not it", apple_chain.pem())
    other_chain = make_apple_chain()
    with pytest.raises(pushcert.PushCertError, match="is missing"):
        pushcert.create_vendor_request(bare, "pw", other_chain.pem())   # same names, other keys: no link
    assert not (certs / "push.key.pending").exists()                   # nothing made on refusal

    request_b64 = pushcert.create_vendor_request(bare, "pw", apple_chain.pem())
    check_request_with_openssl(request_b64, vendor.cert, apple_chain, tmp_path)


def configure_service(app, service, email="it@shop.example"):
    app.config.update(PUSH_SIGNING_SERVICE_URL=service.url, PUSH_SIGNING_SERVICE_API_KEY=service.api_key,
                      PUSH_SIGNING_SERVICE_EMAIL=email)


def test_signing_service_route_submit_decrypt_install_push(app, apns, fake_apple_ca, apple_chain, tmp_path):
    runner = app.test_cli_runner()
    certs = Path(app.config["CERTS_DIR"])
    service_vendor = make_vendor(apple_chain, "MDM Vendor: Community Signing Service")
    with SigningService(tmp_path / "service", service_vendor, apple_chain) as service:
        configure_service(app, service)
        result = runner.invoke(args=["mdm", "push", "submit", "--email", "it@shop.example"])
        assert result.exit_code == 0, result.output
        [sent] = service.received
        [mail] = service.outbox
    # What the service received, in mdmcert.download's shape.
    assert sent["content_type"] == "application/json" and sent["key"] == service.api_key
    assert sent["email"] == "it@shop.example" and mail.to == "it@shop.example"
    csr = x509.load_pem_x509_csr(base64.b64decode(sent["csr"]))
    encrypt_cert = x509.load_pem_x509_certificate(base64.b64decode(sent["encrypt"]))
    with app.app_context():
        pending = load_private_key(certs / "push.key.pending")
        assert spki(csr) == spki(pending) == spki(encrypt_cert)     # the pending key opens the reply
        assert pushcert.status()["pending"] == {**pushcert.status()["pending"], "route": "service",
                                                 "email": "it@shop.example", "request_ready": False}
    assert b"PRIVATE KEY" not in (certs / "push.key.pending").read_bytes()

    reply = tmp_path / mail.filename
    reply.write_bytes(mail.attachment)
    assert re.fullmatch(rb"[0-9a-f]+", mail.attachment)               # hex, as the real service sends it
    result = runner.invoke(args=["mdm", "push", "decrypt", str(reply), "--out", str(tmp_path / "req.b64")])
    assert result.exit_code == 0, result.output
    csr_der = check_request_with_openssl((tmp_path / "req.b64").read_bytes(), service_vendor.cert, apple_chain,
                                         tmp_path)
    assert csr_der == csr.public_bytes(serialization.Encoding.DER)      # the exact CSR we sent
    with app.app_context():
        assert pushcert.status()["pending"]["request_ready"] is True

    cert, token = install_and_push(app, runner, fake_apple_ca, csr, tmp_path)
    assert apns.requests_for(token)[0].client_cert_sha256 == cert.fingerprint(hashes.SHA256()).hex()
    with app.app_context():
        actions = [e.action for e in db.session.scalars(db.select(AuditEvent).where(
            AuditEvent.action.like("push_certificate.%")).order_by(AuditEvent.id))]
    assert actions == ["push_certificate.request", "push_certificate.request_decrypted", "push_certificate.install"]


def test_signing_service_refusals_keep_the_earlier_request(app, apple_chain, tmp_path):
    runner = app.test_cli_runner()
    certs = Path(app.config["CERTS_DIR"])
    result = runner.invoke(args=["mdm", "push", "submit", "--email", "it@shop.example"])
    assert result.exit_code != 0 and "PUSH_SIGNING_SERVICE_URL" in result.output    # nothing configured

    with SigningService(tmp_path / "service", make_vendor(apple_chain), apple_chain) as service:
        configure_service(app, service)
        assert runner.invoke(args=["mdm", "push", "submit"]).exit_code == 0           # e-mail from the settings
        first_pending = (certs / "push.key.pending").read_bytes()
        first_mail = service.outbox[0]
        result = runner.invoke(args=["mdm", "push", "submit", "--email", "someone@else.example"])
        assert result.exit_code != 0 and "Have you registered" in result.output
        app.config["PUSH_SIGNING_SERVICE_API_KEY"] = "wrong"
        result = runner.invoke(args=["mdm", "push", "submit"])
        assert result.exit_code != 0 and "Invalid API key" in result.output
        assert len(service.outbox) == 1
    assert (certs / "push.key.pending").read_bytes() == first_pending                # still the first request

    (tmp_path / "first.p7").write_bytes(first_mail.attachment)
    assert runner.invoke(args=["mdm", "push", "decrypt", str(tmp_path / "first.p7")]).exit_code == 0
    result = runner.invoke(args=["mdm", "push", "submit"])                           # service gone now
    assert result.exit_code != 0 and "cannot reach the signing service" in result.output


def test_decrypt_accepts_base64_and_3des_and_refuses_a_reply_for_another_key(app, apple_chain, tmp_path):
    runner = app.test_cli_runner()
    with SigningService(tmp_path / "service", make_vendor(apple_chain), apple_chain, cipher="des3") as service:
        configure_service(app, service)
        assert runner.invoke(args=["mdm", "push", "submit"]).exit_code == 0
        assert runner.invoke(args=["mdm", "push", "submit"]).exit_code == 0   # a newer request replaces the key
    old_mail, new_mail = service.outbox
    (tmp_path / "old.p7").write_bytes(old_mail.attachment)
    result = runner.invoke(args=["mdm", "push", "decrypt", str(tmp_path / "old.p7")])
    assert result.exit_code != 0 and "newest" in result.output

    # 3DES content encryption (OpenSSL does it), given as base64 instead of hex.
    (tmp_path / "new.p7").write_bytes(base64.encodebytes(bytes.fromhex(new_mail.attachment.decode())))
    result = runner.invoke(args=["mdm", "push", "decrypt", str(tmp_path / "new.p7")])
    assert result.exit_code == 0, result.output
    with app.app_context():
        key = load_private_key(Path(app.config["CERTS_DIR"]) / "push.key.pending")
    assert spki(csr_of_request(result.stdout.strip().encode())) == spki(key)

    (tmp_path / "junk.p7").write_bytes(b"this is not the attachment")
    result = runner.invoke(args=["mdm", "push", "decrypt", str(tmp_path / "junk.p7")])
    assert result.exit_code != 0 and "e-mail" in result.output


def test_renewal_keeps_the_topic_unless_forced(ctx, fake_apple_ca):
    first_key = new_key()
    first = apple_signed(fake_apple_ca, first_key.public_key())
    pushcert.install_certificate(pkcs12.serialize_key_and_certificates(b"p", first_key, first, None,
                                                                       serialization.NoEncryption()))
    topic = pushcert.topic_of(first)
    # No device enrolled yet, still refused: devices enrolling meanwhile, or restored, would be lost.
    csr = x509.load_pem_x509_csr(pushcert.generate_csr())
    other = pem(apple_signed(fake_apple_ca, csr.public_key()))
    with pytest.raises(pushcert.PushCertError, match="differs from the installed") as refused:
        pushcert.install_certificate(other)
    assert "Renew" in str(refused.value) and pushcert.current_topic() == topic
    renewed = pushcert.install_certificate(pem(apple_signed(fake_apple_ca, csr.public_key(), topic)))
    assert renewed["topic"] == topic and renewed["pending"] is None


def test_renewal_warning_from_30_days_before_expiry(ctx, fake_apple_ca):
    for days, warned in ((31, False), (30, True), (2, True)):
        key = new_key()
        cert = apple_signed(fake_apple_ca, key.public_key(), topic=pushcert.current_topic() if days != 31 else None,
                            days=days)
        info = pushcert.install_certificate(pkcs12.serialize_key_and_certificates(
            b"p", key, cert, None, serialization.NoEncryption()))
        assert info["renew_soon"] is warned, (days, info["days_left"])
