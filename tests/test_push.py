"""APNs pushes against a real local HTTP/2 TLS server, and the push certificate's life cycle."""
from __future__ import annotations

import os
import re
import stat
import time
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mdm import push, pushcert
from mdm.enroll.pki import create_ca, issue_certificate, load_private_key, new_key
from mdm.extensions import db
from mdm.models import AuditEvent, Device, PushRequest
from tests.apns_server import FakeAPNs
from tests.conftest import free_port, plain_key_file

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


def test_gateway_names_and_scheduler_job():
    assert push.gateway_url({"APNS_GATEWAY": "production"}) == "https://api.push.apple.com"
    assert push.gateway_url({"APNS_GATEWAY": "sandbox"}) == "https://api.sandbox.push.apple.com"
    assert push.gateway_url({"APNS_GATEWAY": "https://apns.test:8443/"}) == "https://apns.test:8443"
    with pytest.raises(ValueError):
        push.gateway_url({"APNS_GATEWAY": "http://plain.example"})
    from mdm.scheduler import _JOBS
    assert (push.process_due_pushes, "interval", {"seconds": 30}) in _JOBS


# ---------------------------------------------------------------- the push certificate


def test_placeholder_identity_is_created_on_first_run(ctx):
    from mdm.bootstrap import initialise
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
