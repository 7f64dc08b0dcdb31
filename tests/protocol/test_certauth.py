"""Mdm-Signature verification and certificate <-> device binding (mdm/protocol/certauth.py).

The helpers at the top (DeviceIdentity, sign_*, checkin_message) are shared with test_checkin.py,
test_commands.py and test_fixtures_real.py: a device identity issued by the app's CA and recorded as
IssuedCertificate, as our SCEP service would, and real CMS signatures (cryptography, and openssl for SHA-1).
"""
from __future__ import annotations

import base64
import datetime as dt
import plistlib
import subprocess
import uuid
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import make_app
from mdm.protocol import certauth
from mdm.enroll.pki import create_ca, get_pki, issue_certificate
from mdm.extensions import db
from mdm.models import AuditEvent, Command, Device, DeviceCertificate, IssuedCertificate

TEST_TOPIC = "com.apple.mgmt.External.11111111-2222-3333-4444-555555555555"

# --- shared helpers --------------------------------------------------------------------------------------

def device_key():
    """A device's RSA key, 2048 bits as Apple's SCEP payload asks for."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def sign_cryptography(body: bytes, cert, key, *, attributes: bool = True) -> str:
    options = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]
    if not attributes:
        options.append(pkcs7.PKCS7Options.NoAttributes)
    der = (pkcs7.PKCS7SignatureBuilder().set_data(body).add_signer(cert, key, hashes.SHA256())
           .sign(serialization.Encoding.DER, options))
    return base64.b64encode(der).decode()


def sign_openssl(body: bytes, cert, key, tmp_path, digest: str = "sha1") -> str:
    """The real openssl, as a second independent signer (cryptography refuses SHA-1 signing)."""
    cert_file, key_file, data_file = tmp_path / "signer.pem", tmp_path / "signer.key", tmp_path / "body"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    data_file.write_bytes(body)
    der = subprocess.run(["openssl", "cms", "-sign", "-binary", "-md", digest, "-signer", str(cert_file),
                          "-inkey", str(key_file), "-in", str(data_file), "-outform", "DER"],
                         check=True, capture_output=True).stdout
    return base64.b64encode(der).decode()


class DeviceIdentity:
    """A device's SCEP identity: key + certificate from the app's CA, recorded as IssuedCertificate."""

    def __init__(self, app, udid: str | None = None, *, key=None, cert=None, register: bool = True,
                 subject_cn: str | None = None, renewed_from: "DeviceIdentity | None" = None):
        self.app = app
        self.udid = udid or str(uuid.uuid4()).upper()
        self.key = key or device_key()
        with app.app_context():
            if cert is None:
                cn = subject_cn or f"mdm-device-{uuid.uuid4()}"
                subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Org"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, cn)])
                cert = get_pki().issue_device_identity(self.key.public_key(), subject, days=365)
            self.cert = cert
            if register:
                issued = IssuedCertificate(
                    serial=format(cert.serial_number, "x"), sha256=certauth.fingerprint(cert),
                    subject=cert.subject.rfc4514_string(),
                    not_after=cert.not_valid_after_utc.replace(tzinfo=None))
                if renewed_from is not None:   # what the SCEP service records for a RenewalReq
                    issued.renewed_from_sha256 = certauth.fingerprint(renewed_from.cert)
                db.session.add(issued)
                db.session.commit()

    def sign(self, body: bytes) -> str:
        return sign_cryptography(body, self.cert, self.key)

    def put(self, client, path: str, message, *, signature: str | None = None, headers: dict | None = None):
        body = message if isinstance(message, bytes) else plistlib.dumps(message, fmt=plistlib.FMT_XML)
        all_headers = {"Mdm-Signature": signature if signature is not None else self.sign(body),
                       "Content-Type": "application/x-apple-aspen-mdm-checkin"}
        all_headers.update(headers or {})
        return client.put(path, data=body, headers=all_headers)

    def checkin(self, client, message_type: str, **fields):
        return self.put(client, "/mdm/checkin", checkin_message(self.udid, message_type, **fields))

    def connect(self, client, status: str = "Idle", **fields):
        message = {"UDID": self.udid, "Status": status, **fields}
        return self.put(client, "/mdm/connect", message)

    def enroll(self, client):
        """Authenticate + TokenUpdate, as a device installing the enrollment profile does."""
        assert self.checkin(client, "Authenticate").status_code == 200
        assert self.checkin(client, "TokenUpdate").status_code == 200


def checkin_message(udid: str, message_type: str, **fields) -> dict:
    base = {"MessageType": message_type, "UDID": udid}
    if message_type == "Authenticate":
        # An iPhone's key set (Model, ModelName and DeviceName are macOS-only in authenticate.yaml).
        base.update(Topic=TEST_TOPIC, SerialNumber="F5JM992LF193", ProductName="iPhone15,2",
                    OSVersion="17.5.1", BuildVersion="21F90")
    elif message_type == "TokenUpdate":
        base.update(Topic=TEST_TOPIC, Token=bytes.fromhex("ab" * 32), PushMagic=str(uuid.uuid4()).upper())
    elif message_type == "CheckOut":
        base.update(Topic=TEST_TOPIC)
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def make_protocol_app(tmp_path, pki_template, **overrides):
    """The app with our test push topic (used until mdm.push.cert exists; then its topic is read back)."""
    app = make_app(tmp_path, pki_template, APNS_TOPIC=TEST_TOPIC, **overrides)
    with app.app_context():
        from mdm.protocol.checkin import server_topic
        topic = server_topic()
    if topic != TEST_TOPIC:  # the push room's placeholder identity is in charge of the topic
        globals()["TEST_TOPIC"] = topic
    return app


def stored_counts(app) -> dict:
    with app.app_context():
        return {"devices": Device.query.count(), "bindings": DeviceCertificate.query.count(),
                "commands": Command.query.count()}


def auth_failures(app) -> list[AuditEvent]:
    with app.app_context():
        return AuditEvent.query.filter_by(action="device.auth_failed").all()


# --- fixtures ----------------------------------------------------------------------------------------------

@pytest.fixture
def app(tmp_path, pki_template):
    app = make_protocol_app(tmp_path, pki_template)
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def ca(app):
    with app.app_context():
        return get_pki().ca_cert


# --- verify_mdm_signature, no database ------------------------------------------------------------------------

def test_valid_sha256_signature_returns_the_signer(app, ca):
    ident = DeviceIdentity(app, register=False)
    body = b"<plist>any bytes</plist>"
    signer = certauth.verify_mdm_signature(ident.sign(body), body, ca)
    assert signer == ident.cert


def test_sha1_signature_made_by_openssl_verifies(app, ca, tmp_path):
    ident = DeviceIdentity(app, register=False)
    body = b"body signed with SHA-1 like older devices do"
    signer = certauth.verify_mdm_signature(sign_openssl(body, ident.cert, ident.key, tmp_path, "sha1"), body, ca)
    assert signer == ident.cert


def test_signature_without_signed_attributes_verifies_over_the_body(app, ca):
    ident = DeviceIdentity(app, register=False)
    body = b"no signed attributes"
    header = sign_cryptography(body, ident.cert, ident.key, attributes=False)
    assert certauth.verify_mdm_signature(header, body, ca) == ident.cert
    with pytest.raises(certauth.AuthError, match="signature is invalid"):
        certauth.verify_mdm_signature(header, body + b"!", ca)


@pytest.mark.parametrize("header, reason", [
    (None, "missing Mdm-Signature"),
    ("", "missing Mdm-Signature"),
    ("%%% not base64 %%%", "not base64"),
    (base64.b64encode(b"just some bytes, not DER").decode(), "not a CMS structure"),
])
def test_malformed_headers_are_refused(ca, header, reason):
    with pytest.raises(certauth.AuthError, match=reason):
        certauth.verify_mdm_signature(header, b"body", ca)


def test_signature_replayed_over_another_body_is_refused(app, ca, tmp_path):
    ident = DeviceIdentity(app, register=False)
    with pytest.raises(certauth.AuthError, match="does not match the request body"):
        certauth.verify_mdm_signature(ident.sign(b"original"), b"tampered", ca)
    with pytest.raises(certauth.AuthError, match="does not match the request body"):
        certauth.verify_mdm_signature(sign_openssl(b"original", ident.cert, ident.key, tmp_path), b"tampered", ca)


def test_tampered_signed_attributes_are_refused(app, ca):
    """messageDigest matches, but the signature over the attributes does not: flip a signature byte."""
    from asn1crypto import cms
    ident = DeviceIdentity(app, register=False)
    body = b"body"
    info = cms.ContentInfo.load(base64.b64decode(ident.sign(body)))
    signer = info["content"]["signer_infos"][0]
    signature = bytearray(signer["signature"].native)
    signature[10] ^= 0xFF
    signer["signature"] = bytes(signature)
    with pytest.raises(certauth.AuthError, match="signature is invalid"):
        certauth.verify_mdm_signature(base64.b64encode(info.dump(force=True)).decode(), body, ca)


def test_embedded_content_is_not_accepted(app, ca):
    ident = DeviceIdentity(app, register=False)
    der = (pkcs7.PKCS7SignatureBuilder().set_data(b"body").add_signer(ident.cert, ident.key, hashes.SHA256())
           .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary]))
    with pytest.raises(certauth.AuthError, match="detached"):
        certauth.verify_mdm_signature(base64.b64encode(der).decode(), b"body", ca)


def test_signer_from_another_ca_is_refused(app, ca):
    other_key, other_ca = create_ca("Somebody Else")
    key = device_key()
    cert = issue_certificate(other_key, other_ca, key.public_key(),
                             x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intruder")]),
                             days=30, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    with pytest.raises(certauth.AuthError, match="not issued by our CA"):
        certauth.verify_mdm_signature(sign_cryptography(b"x", cert, key), b"x", ca)


def expired_identity(app) -> tuple:
    key = device_key()
    with app.app_context():
        pki = get_pki()
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mdm-device-expired")]))
                .issuer_name(pki.ca_cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=400)).not_valid_after(now - dt.timedelta(days=1))
                .sign(pki.ca_key, hashes.SHA256()))
    return key, cert


def test_expired_signer_is_refused(app, ca):
    key, cert = expired_identity(app)
    with pytest.raises(certauth.AuthError, match="expired"):
        certauth.verify_mdm_signature(sign_cryptography(b"x", cert, key), b"x", ca)


# --- through the check-in endpoint: every refusal is a 400, audited, and stores nothing ------------------------

def _assert_refused(app, response, reason: str, before: dict):
    assert response.status_code == 400, response.data
    assert reason in response.get_data(as_text=True)
    assert stored_counts(app) == before
    failures = auth_failures(app)
    assert failures and reason in failures[-1].detail
    assert failures[-1].actor == "device" and failures[-1].source == "127.0.0.1"


def test_missing_header_is_400_audited_and_stores_nothing(app, client):
    ident = DeviceIdentity(app)
    before = stored_counts(app)
    body = plistlib.dumps(checkin_message(ident.udid, "Authenticate"))
    response = client.put("/mdm/checkin", data=body)
    _assert_refused(app, response, "missing Mdm-Signature", before)
    # The UDID the unauthenticated message claimed is on the audit record (read, never trusted).
    assert auth_failures(app)[-1].object_id == ident.udid


@pytest.mark.parametrize("signature, reason", [
    ("not base64 at all!", "not base64"),
    (base64.b64encode(b"\x30\x03\x02\x01\x01").decode(), "not a CMS structure"),
])
def test_garbage_signature_is_400(app, client, signature, reason):
    ident = DeviceIdentity(app)
    before = stored_counts(app)
    response = ident.put(client, "/mdm/checkin", checkin_message(ident.udid, "Authenticate"), signature=signature)
    _assert_refused(app, response, reason, before)


def test_foreign_ca_signer_is_400(app, client):
    other_key, other_ca = create_ca("Somebody Else")
    key = device_key()
    cert = issue_certificate(other_key, other_ca, key.public_key(),
                             x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intruder")]),
                             days=30, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    before = stored_counts(app)
    body = plistlib.dumps(checkin_message("INTRUDER-0001", "Authenticate"))
    response = client.put("/mdm/checkin", data=body, headers={"Mdm-Signature": sign_cryptography(body, cert, key)})
    _assert_refused(app, response, "not issued by our CA", before)


def test_expired_cert_is_400(app, client):
    key, cert = expired_identity(app)
    ident = DeviceIdentity(app, key=key, cert=cert)
    before = stored_counts(app)
    response = ident.checkin(client, "Authenticate")
    _assert_refused(app, response, "expired", before)


def test_valid_signature_over_a_different_body_is_400(app, client):
    ident = DeviceIdentity(app)
    before = stored_counts(app)
    signed = plistlib.dumps(checkin_message(ident.udid, "Authenticate", DeviceName="Original"))
    sent = plistlib.dumps(checkin_message(ident.udid, "Authenticate", DeviceName="Replayed"))
    response = ident.put(client, "/mdm/checkin", sent, signature=ident.sign(signed))
    _assert_refused(app, response, "does not match the request body", before)


def test_certificate_our_ca_never_issued_through_scep_is_400(app, client):
    ident = DeviceIdentity(app, register=False)
    before = stored_counts(app)
    response = ident.checkin(client, "Authenticate")
    _assert_refused(app, response, "not issued by our SCEP service", before)


def test_certificate_bound_to_another_device_is_400(app, client):
    first = DeviceIdentity(app)
    first.enroll(client)
    victim = DeviceIdentity(app)
    victim.enroll(client)
    before = stored_counts(app)
    # The first device's certificate, claiming to be the victim, on every kind of message.
    for message in (checkin_message(victim.udid, "Authenticate"), checkin_message(victim.udid, "TokenUpdate"),
                    checkin_message(victim.udid, "CheckOut")):
        response = first.put(client, "/mdm/checkin", message)
        _assert_refused(app, response, "bound to another device", before)
    response = first.put(client, "/mdm/connect", {"UDID": victim.udid, "Status": "Idle"})
    _assert_refused(app, response, "bound to another device", before)
    with app.app_context():
        assert Device.query.filter_by(udid=victim.udid).one().enrollment_status == "enrolled"


def test_unbound_certificate_cannot_speak_for_an_enrolled_device(app, client):
    victim = DeviceIdentity(app)
    victim.enroll(client)
    stranger = DeviceIdentity(app, victim.udid)   # our CA issued it, but for another enrollment
    before = stored_counts(app)
    response = stranger.checkin(client, "CheckOut")
    _assert_refused(app, response, "not bound to this device", before)


def test_message_before_authenticate_is_400(app, client):
    ident = DeviceIdentity(app)
    before = stored_counts(app)
    _assert_refused(app, ident.checkin(client, "TokenUpdate"), "Authenticate first", before)
    _assert_refused(app, ident.connect(client), "Authenticate first", before)


def test_same_subject_is_not_a_renewal_and_is_refused_with_the_claimed_udid(app, client):
    """Changed by issue 8: a subject match used to bind a certificate as a "renewal"; now only a SCEP
    RenewalReq signed by the bound certificate does."""
    original = DeviceIdentity(app, subject_cn="mdm-device-renewal-test")
    original.enroll(client)
    same_subject = DeviceIdentity(app, original.udid, subject_cn="mdm-device-renewal-test")
    before = stored_counts(app)
    _assert_refused(app, same_subject.connect(client), "not bound to this device", before)
    failure = auth_failures(app)[-1]
    assert failure.object_type == "device" and failure.object_id == original.udid
    with app.app_context():
        device = Device.query.filter_by(udid=original.udid).one()
        bound = {c.sha256 for c in DeviceCertificate.query.filter_by(device_id=device.id)}
    assert bound == {certauth.fingerprint(original.cert)}


def test_renewal_recorded_by_scep_is_bound_on_first_use(app, client):
    original = DeviceIdentity(app)
    original.enroll(client)
    renewed = DeviceIdentity(app, original.udid, renewed_from=original)   # a new subject, tied by SCEP
    assert renewed.checkin(client, "TokenUpdate").status_code == 200
    with app.app_context():
        assert DeviceCertificate.query.filter_by(sha256=certauth.fingerprint(renewed.cert)).count() == 1
        # Rebound: the renewed certificate replaced the one that signed the RenewalReq.
        assert DeviceCertificate.query.filter_by(sha256=certauth.fingerprint(original.cert)).one().retired_at
    before = stored_counts(app)
    _assert_refused(app, original.connect(client), "replaced by a newer one", before)
    assert renewed.connect(client).status_code == 200
    # ...and a renewal of my certificate does not let anyone else speak for another device.
    other = DeviceIdentity(app)
    other.enroll(client)
    stolen = DeviceIdentity(app, other.udid, renewed_from=original)
    before = stored_counts(app)
    _assert_refused(app, stolen.connect(client), "not bound to this device", before)


def test_renewal_subject_does_not_transfer_to_another_device(app, client):
    mine = DeviceIdentity(app, subject_cn="mdm-device-mine")
    mine.enroll(client)
    other = DeviceIdentity(app)
    other.enroll(client)
    # A fresh certificate with my subject cannot be used for the other device.
    renewal = DeviceIdentity(app, other.udid, subject_cn="mdm-device-mine")
    before = stored_counts(app)
    _assert_refused(app, renewal.connect(client), "not bound to this device", before)


def test_reauthenticate_with_a_new_certificate_binds_it(app, client):
    ident = DeviceIdentity(app)
    ident.enroll(client)
    reinstalled = DeviceIdentity(app, ident.udid)     # the profile was installed again: new SCEP identity
    assert reinstalled.checkin(client, "Authenticate").status_code == 200
    assert reinstalled.checkin(client, "TokenUpdate").status_code == 200
    with app.app_context():
        assert DeviceCertificate.query.filter_by(sha256=certauth.fingerprint(reinstalled.cert)).count() == 1


# --- a client certificate forwarded by a trusted proxy ----------------------------------------------------------

@pytest.fixture
def proxy_app(tmp_path, pki_template):
    app = make_protocol_app(tmp_path, pki_template, TRUSTED_PROXY_CERT_HEADER="X-Client-Cert",
                            TRUSTED_PROXY_ADDRESSES="10.0.0.0/8, 127.0.0.1")
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def _pem_header(cert) -> str:
    return quote(cert.public_bytes(serialization.Encoding.PEM).decode(), safe="")


def test_trusted_proxy_certificate_replaces_the_signature(proxy_app):
    client = proxy_app.test_client()
    ident = DeviceIdentity(proxy_app)
    body = plistlib.dumps(checkin_message(ident.udid, "Authenticate"))
    response = client.put("/mdm/checkin", data=body, headers={"X-Client-Cert": _pem_header(ident.cert)})
    assert response.status_code == 200, response.data
    with proxy_app.app_context():
        assert DeviceCertificate.query.filter_by(sha256=certauth.fingerprint(ident.cert)).count() == 1


def test_proxy_header_from_an_untrusted_address_is_ignored(proxy_app):
    client = proxy_app.test_client()
    ident = DeviceIdentity(proxy_app)
    body = plistlib.dumps(checkin_message(ident.udid, "Authenticate"))
    response = client.put("/mdm/checkin", data=body, headers={"X-Client-Cert": _pem_header(ident.cert)},
                          environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert response.status_code == 400
    assert "missing Mdm-Signature" in response.get_data(as_text=True)
    assert stored_counts(proxy_app)["devices"] == 0


def test_proxy_forwarded_certificate_must_still_be_ours(proxy_app):
    other_key, other_ca = create_ca("Somebody Else")
    cert = issue_certificate(other_key, other_ca, device_key().public_key(),
                             x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intruder")]),
                             days=30, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    body = plistlib.dumps(checkin_message("INTRUDER-0002", "Authenticate"))
    response = proxy_app.test_client().put("/mdm/checkin", data=body, headers={"X-Client-Cert": _pem_header(cert)})
    assert response.status_code == 400
    assert "not issued by our CA" in response.get_data(as_text=True)


def test_proxy_feature_is_off_by_default(app, client):
    ident = DeviceIdentity(app)
    body = plistlib.dumps(checkin_message(ident.udid, "Authenticate"))
    response = client.put("/mdm/checkin", data=body, headers={"X-Client-Cert": _pem_header(ident.cert)})
    assert response.status_code == 400
    assert "missing Mdm-Signature" in response.get_data(as_text=True)
