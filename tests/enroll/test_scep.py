"""The SCEP server: our Python client (as a device), openssl on the CMS we emit, Debian's scepclient
(micromdm) against the real TLS server, and refusals: wrong / reused / expired challenge, bad signatures,
unsupported algorithms, malformed bodies (400/413, never 500)."""
from __future__ import annotations

import os
import plistlib
import random
import shutil
import ssl
import subprocess
import threading
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import func, select

from mdm.enroll import cms, scep_client, tokens
from mdm.pki import get_pki
from mdm.enroll.profile import hash_challenge
from mdm.enroll.scep import FailInfo, MessageType, enrollment_subject
from mdm.enroll.scep_client import ScepError
from mdm.extensions import db
from mdm.models import AuditEvent, IssuedCertificate, ScepChallenge, utcnow

SUBJECT = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Org"),
                     x509.NameAttribute(NameOID.COMMON_NAME, "mdm-device-test")])


@pytest.fixture
def http(app):
    """httpx talking to the Flask app in-process (the live TLS server is used for scepclient)."""
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="https://localhost") as client:
        yield client


@pytest.fixture(scope="module")
def rsa_keys():
    """A few RSA keys generated once: key generation is the slow part of every enrollment."""
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(4)]


SCEP_URL = "https://localhost/scep"


def challenge_for(app, *, token=True) -> str:
    """A challenge exactly as a profile download makes one."""
    with app.app_context():
        from mdm.enroll.profile import new_scep_challenge
        row = tokens.create_token("scep test") if token else None
        value = new_scep_challenge(row)
        db.session.commit()
        return value


def issued_count(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(IssuedCertificate))


def request_with(app, http, key, challenge, *, signer_key=None, signer_cert=None, cipher="aes256_cbc",
                 message_type=MessageType.PKCS_REQ, digest="sha256", envelope_hook=None):
    """Build and send a PKIOperation by hand (to vary one thing at a time); returns (request, response bytes)."""
    ca_cert = scep_client.get_ca_certs(http, SCEP_URL)[0]
    csr = scep_client.build_csr(key, SUBJECT, challenge)
    signer_key = signer_key or key
    signer_cert = signer_cert or scep_client.self_signed(key, SUBJECT)
    request = scep_client.build_pki_message(csr, ca_cert, signer_key, signer_cert, message_type=message_type,
                                            cipher=cipher, digest=digest)
    if envelope_hook is not None:
        envelope = envelope_hook(cms.encrypt_enveloped(csr.public_bytes(serialization.Encoding.DER), ca_cert,
                                                       cipher=cipher))
        signed = cms.parse_signed_data(request.der)
        attrs = [cms.attribute(oid, _asn1_value(value)) for oid, value in signed.attributes.items()
                 if oid.startswith("2.16.840.1.113733")]
        request.der = cms.build_signed_data(envelope, signer_key, signer_cert, attributes=attrs, digest=digest)
    return request, scep_client.send_pki_message(http, SCEP_URL, request.der)


def _asn1_value(value):
    from asn1crypto import core
    return core.OctetString(value) if isinstance(value, bytes) else core.PrintableString(value)


def expect_failure(request, response, ca_cert, fail_info: FailInfo):
    with pytest.raises(ScepError) as excinfo:
        scep_client.read_cert_rep(response, request, ca_cert)
    assert excinfo.value.fail_info is fail_info


# ------------------------------------------------------------------ GetCACaps / GetCACert


def test_ca_caps_and_ca_cert(app, http):
    caps = scep_client.get_ca_caps(http, SCEP_URL)
    assert {"POSTPKIOperation", "SHA-256", "SHA-1", "AES", "DES3", "SCEPStandard", "Renewal"} <= caps
    response = http.get(SCEP_URL, params={"operation": "GetCACert"})
    assert response.headers["content-type"] == "application/x-x509-ca-cert"
    with app.app_context():
        assert x509.load_der_x509_certificate(response.content) == get_pki().ca_cert


# ------------------------------------------------------------------ PKCSReq with our client


def test_right_challenge_gets_a_client_auth_identity_from_our_ca(app, http, tmp_path):
    challenge = challenge_for(app)
    key, cert = scep_client.enroll(http, SCEP_URL, challenge, SUBJECT)

    with app.app_context():
        ca = get_pki().ca_cert
        cert.verify_directly_issued_by(ca)
        # Changed by issue 8: the subject is the enrollment's (from its challenge), not the one asked for.
        enrollment = enrollment_subject(challenge)
    assert cert.subject == enrollment != SUBJECT
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == \
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert abs(lifetime - timedelta(days=app.config["DEVICE_CERT_DAYS"], minutes=5)) < timedelta(minutes=1)
    # openssl agrees on the chain and the purpose.
    pem = tmp_path / "device.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    check = subprocess.run(["openssl", "verify", "-CAfile", f"{app.config['CERTS_DIR']}/ca.pem",
                            "-purpose", "sslclient", str(pem)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr

    with app.app_context():
        record = db.session.scalar(select(IssuedCertificate))
        assert record.serial == format(cert.serial_number, "x")
        assert record.sha256 == cms.cert_sha256(cert)
        assert record.subject == enrollment.rfc4514_string() and record.enrollment_token_id is not None
        replaced = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "scep.subject_replaced"))
        assert SUBJECT.rfc4514_string() in replaced.detail and replaced.actor == "device"
        assert record.renewed_from_sha256 is None
        used = db.session.scalar(select(ScepChallenge).where(ScepChallenge.challenge_sha256 == hash_challenge(challenge)))
        assert used.used_at is not None


def test_pki_operation_by_get_with_base64_message(app, http, rsa_keys):
    challenge = challenge_for(app)
    ca_cert = scep_client.get_ca_certs(http, SCEP_URL)[0]
    key = rsa_keys[0]
    csr = scep_client.build_csr(key, SUBJECT, challenge)
    request = scep_client.build_pki_message(csr, ca_cert, key, scep_client.self_signed(key, SUBJECT),
                                            cipher="tripledes_3key", digest="sha1")
    response = scep_client.send_pki_message(http, SCEP_URL, request.der, use_post=False)
    cert = scep_client.read_cert_rep(response, request, ca_cert)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()


def test_wrong_challenge_is_refused_with_bad_request_and_issues_nothing(app, http):
    challenge_for(app)
    with pytest.raises(ScepError) as excinfo:
        scep_client.enroll(http, SCEP_URL, "not-the-challenge", SUBJECT)
    assert excinfo.value.fail_info is FailInfo.BAD_REQUEST
    assert issued_count(app) == 0
    with app.app_context():
        event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "scep.refused"))
        assert event.actor == "device" and "unknown challenge" in event.detail
        assert "not-the-challenge" not in event.detail


def test_reused_challenge_is_refused(app, http):
    challenge = challenge_for(app)
    scep_client.enroll(http, SCEP_URL, challenge, SUBJECT)
    with pytest.raises(ScepError) as excinfo:
        scep_client.enroll(http, SCEP_URL, challenge, SUBJECT)
    assert excinfo.value.fail_info is FailInfo.BAD_REQUEST
    assert issued_count(app) == 1


def test_expired_challenge_is_refused(app, http):
    challenge = challenge_for(app)
    with app.app_context():
        row = db.session.scalar(select(ScepChallenge))
        row.expires_at = utcnow() - timedelta(seconds=1)
        db.session.commit()
    with pytest.raises(ScepError) as excinfo:
        scep_client.enroll(http, SCEP_URL, challenge, SUBJECT)
    assert excinfo.value.fail_info is FailInfo.BAD_REQUEST
    with app.app_context():
        assert db.session.scalar(select(ScepChallenge.used_at)) is None   # a refusal consumes nothing
        assert "challenge expired" in db.session.scalar(
            select(AuditEvent.detail).where(AuditEvent.action == "scep.refused"))


def test_challenge_dies_with_its_revoked_enrollment_url(app, http):
    challenge = challenge_for(app)
    with app.app_context():
        token_id = db.session.scalar(select(ScepChallenge.enrollment_token_id))
        tokens.revoke_token(token_id, revoked_by="admin")
    with pytest.raises(ScepError) as excinfo:
        scep_client.enroll(http, SCEP_URL, challenge, SUBJECT)
    assert excinfo.value.fail_info is FailInfo.BAD_REQUEST
    assert issued_count(app) == 0
    with app.app_context():
        assert db.session.scalar(select(ScepChallenge.used_at)) is None
        assert "revoked" in db.session.scalar(select(AuditEvent.detail).where(AuditEvent.action == "scep.refused"))


def test_missing_challenge_is_refused(app, http, rsa_keys):
    challenge_for(app)
    ca_cert = scep_client.get_ca_certs(http, SCEP_URL)[0]
    request, response = request_with(app, http, rsa_keys[0], None)
    expect_failure(request, response, ca_cert, FailInfo.BAD_REQUEST)


def test_bad_signature_is_bad_message_check_and_keeps_the_challenge(app, http, rsa_keys):
    challenge = challenge_for(app)
    ca_cert = scep_client.get_ca_certs(http, SCEP_URL)[0]
    key, impostor = rsa_keys[0], rsa_keys[1]
    # Signed with a key that is not the one in the (self-signed) signer certificate.
    request, response = request_with(app, http, key, challenge, signer_key=impostor,
                                     signer_cert=scep_client.self_signed(key, SUBJECT))
    expect_failure(request, response, ca_cert, FailInfo.BAD_MESSAGE_CHECK)
    assert issued_count(app) == 0
    # The challenge survived the forged attempt: the real device can still enroll with it.
    scep_client.enroll(http, SCEP_URL, challenge, SUBJECT)


def test_pkcsreq_signed_for_another_key_is_refused(app, http, rsa_keys):
    challenge = challenge_for(app)
    ca_cert = scep_client.get_ca_certs(http, SCEP_URL)[0]
    other = rsa_keys[1]
    request, response = request_with(app, http, rsa_keys[0], challenge, signer_key=other,
                                     signer_cert=scep_client.self_signed(other, SUBJECT))
    expect_failure(request, response, ca_cert, FailInfo.BAD_REQUEST)


def test_unsupported_content_cipher_is_bad_alg(app, http, rsa_keys):
    challenge = challenge_for(app)
    ca_cert = scep_client.get_ca_certs(http, SCEP_URL)[0]
    aes256_cbc = bytes.fromhex("060960864801650304012a")
    aes256_gcm = bytes.fromhex("060960864801650304012e")

    def relabel(envelope: bytes) -> bytes:
        assert aes256_cbc in envelope
        return envelope.replace(aes256_cbc, aes256_gcm)

    request, response = request_with(app, http, rsa_keys[0], challenge, envelope_hook=relabel)
    expect_failure(request, response, ca_cert, FailInfo.BAD_ALG)


def test_short_rsa_key_is_refused(app, http):
    challenge = challenge_for(app)
    ca_cert = scep_client.get_ca_certs(http, SCEP_URL)[0]
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    request, response = request_with(app, http, weak, challenge)
    expect_failure(request, response, ca_cert, FailInfo.BAD_REQUEST)


def test_extensions_asked_for_in_the_csr_are_not_granted(app, http, rsa_keys):
    """A device cannot ask to become a CA or to carry another name: the CA decides the extensions."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import AttributeOID
    challenge = challenge_for(app)
    ca_cert = scep_client.get_ca_certs(http, SCEP_URL)[0]
    key = rsa_keys[2]
    csr = (x509.CertificateSigningRequestBuilder().subject_name(SUBJECT)
           .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("mdm.example.com")]), critical=False)
           .add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
           .sign(key, hashes.SHA256()))
    request = scep_client.build_pki_message(csr, ca_cert, key, scep_client.self_signed(key, SUBJECT))
    cert = scep_client.read_cert_rep(scep_client.send_pki_message(http, SCEP_URL, request.der), request, ca_cert)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_cert_rep_is_standard_cms_that_openssl_verifies_and_decrypts(app, http, rsa_keys, tmp_path):
    """Our SignedData and EnvelopedData are read by OpenSSL, not only by our own parser."""
    challenge = challenge_for(app)
    key = rsa_keys[2]
    request, response = request_with(app, http, key, challenge, cipher="aes128_cbc")
    (tmp_path / "rep.der").write_bytes(response)
    verified = subprocess.run(["openssl", "cms", "-verify", "-inform", "DER", "-in", str(tmp_path / "rep.der"),
                               "-CAfile", f"{app.config['CERTS_DIR']}/ca.pem", "-purpose", "any", "-binary",
                               "-out", str(tmp_path / "envelope.der")], capture_output=True, text=True, timeout=30)
    assert verified.returncode == 0, verified.stderr
    (tmp_path / "signer.pem").write_bytes(request.signer_cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    decrypted = subprocess.run(["openssl", "cms", "-decrypt", "-inform", "DER", "-in", str(tmp_path / "envelope.der"),
                                "-recip", str(tmp_path / "signer.pem"), "-inkey", str(tmp_path / "key.pem"),
                                "-binary", "-out", str(tmp_path / "certs.der")], capture_output=True, text=True,
                               timeout=30)
    assert decrypted.returncode == 0, decrypted.stderr
    certs = cms.parse_degenerate((tmp_path / "certs.der").read_bytes())
    assert len(certs) == 1 and certs[0].public_key().public_numbers() == key.public_key().public_numbers()


def test_ber_encoded_request_like_apple_devices_send(app, http, rsa_keys):
    """Indefinite lengths and a chunked (constructed) OCTET STRING, as NSS-derived encoders produce."""
    challenge = challenge_for(app)
    ca_cert = scep_client.get_ca_certs(http, SCEP_URL)[0]
    key = rsa_keys[3]
    csr = scep_client.build_csr(key, SUBJECT, challenge)
    request = scep_client.build_pki_message(csr, ca_cert, key, scep_client.self_signed(key, SUBJECT))
    ber = _to_ber(request.der)
    assert ber != request.der and cms.ber_to_der(ber) == request.der
    response = scep_client.send_pki_message(http, SCEP_URL, ber)
    cert = scep_client.read_cert_rep(response, request, ca_cert)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()


def test_signed_attributes_sent_out_of_der_order_still_verify(app, http, rsa_keys):
    """Some encoders sign the attributes in DER (sorted) order but send them in another order;
    like OpenSSL we also check the DER order - the signature must still cover exactly these attributes."""
    challenge = challenge_for(app)
    ca_cert = scep_client.get_ca_certs(http, SCEP_URL)[0]
    key = rsa_keys[1]
    csr = scep_client.build_csr(key, SUBJECT, challenge)
    request = scep_client.build_pki_message(csr, ca_cert, key, scep_client.self_signed(key, SUBJECT))
    set_der = cms.parse_signed_data(request.der).signed_attrs_der
    identifier, contents, _ = cms._read_tlv(set_der, 0)
    elements, pos = [], 0
    while pos < len(contents):
        start = pos
        _, _, pos = cms._read_tlv(contents, pos)
        elements.append(contents[start:pos])
    header = set_der[:len(set_der) - len(contents)]
    sent = b"\xa0" + header[1:] + contents
    reordered = b"\xa0" + header[1:] + b"".join(reversed(elements))
    assert request.der.count(sent) == 1 and reordered != sent
    request.der = request.der.replace(sent, reordered)
    response = scep_client.send_pki_message(http, SCEP_URL, request.der)
    cert = scep_client.read_cert_rep(response, request, ca_cert)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()


def _to_ber(der: bytes) -> bytes:
    """Re-encode: every constructed value with indefinite length, every OCTET STRING over 64 bytes chunked."""
    identifier, contents, _ = cms._read_tlv(der, 0)
    if identifier == b"\x04" and len(contents) > 64:
        chunks = b"".join(b"\x04" + cms._der_length(len(contents[i:i + 64])) + contents[i:i + 64]
                          for i in range(0, len(contents), 64))
        return b"\x24\x80" + chunks + b"\x00\x00"
    if not identifier[0] & 0x20:
        return der
    children, pos = [], 0
    while pos < len(contents):
        start = pos
        _, _, pos = cms._read_tlv(contents, pos)
        children.append(_to_ber(contents[start:pos]))
    return identifier + b"\x80" + b"".join(children) + b"\x00\x00"


# ------------------------------------------------------------------ renewal


def test_renewal_signed_by_our_certificate_needs_no_challenge(app, http):
    key, cert = scep_client.enroll(http, SCEP_URL, challenge_for(app), SUBJECT)
    new_key, new_cert = scep_client.renew(http, SCEP_URL, key, cert)
    assert new_cert.subject == cert.subject and new_cert.serial_number != cert.serial_number
    with app.app_context():
        new_cert.verify_directly_issued_by(get_pki().ca_cert)
        record = db.session.scalar(select(IssuedCertificate).where(
            IssuedCertificate.sha256 == cms.cert_sha256(new_cert)))
        old = db.session.scalar(select(IssuedCertificate).where(IssuedCertificate.sha256 == cms.cert_sha256(cert)))
        assert record.renewed_from_sha256 == old.sha256
        assert record.enrollment_token_id == old.enrollment_token_id


def test_renewal_signed_by_a_stranger_is_refused(app, http, rsa_keys):
    ca_cert = scep_client.get_ca_certs(http, SCEP_URL)[0]
    stranger = rsa_keys[0]
    request, response = request_with(app, http, rsa_keys[1], None, signer_key=stranger,
                                     signer_cert=scep_client.self_signed(stranger, SUBJECT),
                                     message_type=MessageType.RENEWAL_REQ)
    expect_failure(request, response, ca_cert, FailInfo.BAD_REQUEST)
    assert issued_count(app) == 0


# ------------------------------------------------------------------ HTTP-level refusals


def test_malformed_requests_are_400_or_413_never_500(app, http, rsa_keys):
    app.config["ENROLL_FAILURES_PER_MINUTE"] = 0   # ~50 refusals in a row: not throttled here (test_hostile_input)
    for params in ({"operation": "Nope"}, {}, {"operation": "PKIOperation", "message": "%%%not base64"}):
        response = http.get(SCEP_URL, params=params)
        assert response.status_code == 400, params
        assert response.headers["content-type"].startswith("text/plain") and response.text.strip()
    assert http.post(SCEP_URL, params={"operation": "PKIOperation"}, content=b"").status_code == 400
    assert http.post(SCEP_URL, params={"operation": "PKIOperation"}, content=b"\x30\x03junk").status_code == 400
    big = http.post(SCEP_URL, params={"operation": "PKIOperation"}, content=os.urandom(70_000))
    assert big.status_code == 413

    # Truncations and byte flips of a real request: each is a 400, or a CertRep (200) - never a 500.
    challenge = challenge_for(app)
    ca_cert = scep_client.get_ca_certs(http, SCEP_URL)[0]
    key = rsa_keys[0]
    csr = scep_client.build_csr(key, SUBJECT, challenge)
    good = scep_client.build_pki_message(csr, ca_cert, key, scep_client.self_signed(key, SUBJECT)).der
    rng = random.Random(1234)
    variants = [good[:n] for n in (1, 10, 100, len(good) // 2, len(good) - 1)]
    for _ in range(40):
        mutated = bytearray(good)
        mutated[rng.randrange(len(good))] ^= 1 << rng.randrange(8)
        variants.append(bytes(mutated))
    for body in variants:
        response = http.post(SCEP_URL, params={"operation": "PKIOperation"}, content=body)
        assert response.status_code in (200, 400), response.text
    assert issued_count(app) <= 1


def test_one_challenge_cannot_be_used_twice_concurrently(live_server, rsa_keys):
    app = live_server.app
    challenge = challenge_for(app)
    results = []
    context = ssl.create_default_context(cafile=live_server.ca_file)

    def attempt(key):
        with httpx.Client(verify=context, timeout=60) as client:
            url = f"{live_server.url}/scep"
            ca_cert = scep_client.get_ca_certs(client, url)[0]
            csr = scep_client.build_csr(key, SUBJECT, challenge)
            request = scep_client.build_pki_message(csr, ca_cert, key, scep_client.self_signed(key, SUBJECT))
            try:
                scep_client.read_cert_rep(scep_client.send_pki_message(client, url, request.der), request, ca_cert)
                results.append("issued")
            except ScepError as exc:
                results.append(exc.fail_info)

    threads = [threading.Thread(target=attempt, args=(k,)) for k in rsa_keys[:3]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results, key=str) == sorted(["issued", FailInfo.BAD_REQUEST, FailInfo.BAD_REQUEST], key=str)


# ------------------------------------------------------------------ interop: Debian's scepclient (micromdm)

SCEPCLIENT = shutil.which("scepclient")


def run_scepclient(live_server, tmp_path: Path, challenge: str, name: str) -> subprocess.CompletedProcess:
    # scepclient caches csr.pem next to the key (challenge included): one directory per run.
    workdir = tmp_path / name
    workdir.mkdir()
    # Go reads SSL_CERT_FILE, so scepclient trusts our CA over real TLS without flags.
    env = {**os.environ, "SSL_CERT_FILE": live_server.ca_file}
    return subprocess.run([SCEPCLIENT, "-server-url", f"{live_server.url}/scep", "-challenge", challenge,
                           "-private-key", str(workdir / f"{name}.key"), "-certificate", str(workdir / f"{name}.pem"),
                           "-cn", f"mdm-device-{name}", "-organization", "Test Org"],
                          capture_output=True, text=True, env=env, cwd=workdir, timeout=60)


def test_scepclient_interop_against_the_live_tls_server(live_server, tmp_path):
    assert SCEPCLIENT, "Debian's scep package (scepclient) is required: ./test.sh installs it"
    app = live_server.app
    with app.app_context():
        token = tokens.create_token("scepclient").token
    context = ssl.create_default_context(cafile=live_server.ca_file)
    with httpx.Client(verify=context, timeout=30) as client:
        profile = plistlib.loads(client.get(f"{live_server.url}/enroll/{token}?unsigned=1").content)
    challenge = next(p for p in profile["PayloadContent"]
                     if p["PayloadType"] == "com.apple.security.scep")["PayloadContent"]["Challenge"]

    ok = run_scepclient(live_server, tmp_path, challenge, "one")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    check = subprocess.run(["openssl", "verify", "-CAfile", live_server.ca_file, "-purpose", "sslclient",
                            str(tmp_path / "one" / "one.pem")], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    cert = x509.load_pem_x509_certificate((tmp_path / "one" / "one.pem").read_bytes())
    # scepclient asked for CN=mdm-device-one; the certificate names the enrollment of the challenge (the
    # subject its profile carries), since issue 8.
    scep_payload = next(p for p in profile["PayloadContent"] if p["PayloadType"] == "com.apple.security.scep")
    assert cert.subject == scep_client.subject_from_profile(scep_payload["PayloadContent"]["Subject"])
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value != "mdm-device-one"

    reused = run_scepclient(live_server, tmp_path, challenge, "two")
    assert reused.returncode != 0 and "badRequest" in reused.stdout + reused.stderr
    assert not (tmp_path / "two" / "two.pem").exists()
    wrong = run_scepclient(live_server, tmp_path, "wrong-" + challenge, "three")
    assert wrong.returncode != 0 and "badRequest" in wrong.stdout + wrong.stderr
    assert issued_count(app) == 1


# ------------------------------------------------------------------ from profile to identity, and housekeeping


def test_device_path_from_profile_download_to_identity(app, http):
    """What a device does: read the SCEP payload of its profile, enroll with that challenge and subject."""
    with app.app_context():
        token = tokens.create_token("device path").token
    profile = plistlib.loads(http.get(f"/enroll/{token}?unsigned=1").content)
    payload = next(p for p in profile["PayloadContent"] if p["PayloadType"] == "com.apple.security.scep")
    content = payload["PayloadContent"]
    subject = scep_client.subject_from_profile(content["Subject"])
    assert subject.rfc4514_string() == f"CN={content['Subject'][1][0][1]},O=Test Org"
    key, cert = scep_client.enroll(http, content["URL"], content["Challenge"], subject)
    assert cert.subject == subject
    with app.app_context():
        record = db.session.scalar(select(IssuedCertificate))
        token_id = db.session.scalar(select(ScepChallenge.enrollment_token_id))
        assert record.enrollment_token_id == token_id is not None


def test_stale_challenges_are_purged(app):
    from mdm.enroll.scep import purge_stale_challenges
    fresh = challenge_for(app)
    challenge_for(app)
    with app.app_context():
        old = db.session.scalars(select(ScepChallenge).order_by(ScepChallenge.id)).all()[1]
        old.expires_at = utcnow() - timedelta(days=8)
        db.session.commit()
        assert purge_stale_challenges() == 1
        left = db.session.scalars(select(ScepChallenge.challenge_sha256)).all()
        assert left == [hash_challenge(fresh)]
