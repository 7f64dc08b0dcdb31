"""Mdm-Signature verification and certificate <-> device binding (mdm/protocol/certauth.py), with device
identities and real CMS signatures from tests/support/device_identity.py."""
from __future__ import annotations

import base64
import plistlib
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from device_identity import (DeviceIdentity, checkin_message, device_key, expired_identity, sign_cryptography,
                             sign_openssl, use_topic_of)
from mdm.protocol import certauth
from mdm.pki import create_ca, issue_certificate
from mdm.models import Device, DeviceCertificate
from refusals import assert_refused, auth_failures, stored_counts


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


def test_expired_signer_is_refused(app, ca):
    key, cert = expired_identity(app)
    with pytest.raises(certauth.AuthError, match="expired"):
        certauth.verify_mdm_signature(sign_cryptography(b"x", cert, key), b"x", ca)


# --- through the check-in endpoint: every refusal is a 400, audited, and stores nothing ------------------------

def test_missing_header_is_400_audited_and_stores_nothing(app, client):
    ident = DeviceIdentity(app)
    before = stored_counts(app)
    body = plistlib.dumps(checkin_message(ident.udid, "Authenticate"))
    response = client.put("/mdm/checkin", data=body)
    assert_refused(app, response, 400, "missing Mdm-Signature", before, audited=True)
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
    assert_refused(app, response, 400, reason, before, audited=True)


def test_foreign_ca_signer_is_400(app, client):
    other_key, other_ca = create_ca("Somebody Else")
    key = device_key()
    cert = issue_certificate(other_key, other_ca, key.public_key(),
                             x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intruder")]),
                             days=30, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    before = stored_counts(app)
    body = plistlib.dumps(checkin_message("INTRUDER-0001", "Authenticate"))
    response = client.put("/mdm/checkin", data=body, headers={"Mdm-Signature": sign_cryptography(body, cert, key)})
    assert_refused(app, response, 400, "not issued by our CA", before, audited=True)


def test_expired_cert_is_400(app, client):
    key, cert = expired_identity(app)
    ident = DeviceIdentity(app, key=key, cert=cert)
    before = stored_counts(app)
    response = ident.checkin(client, "Authenticate")
    assert_refused(app, response, 400, "expired", before, audited=True)


def test_valid_signature_over_a_different_body_is_400(app, client):
    ident = DeviceIdentity(app)
    before = stored_counts(app)
    signed = plistlib.dumps(checkin_message(ident.udid, "Authenticate", DeviceName="Original"))
    sent = plistlib.dumps(checkin_message(ident.udid, "Authenticate", DeviceName="Replayed"))
    response = ident.put(client, "/mdm/checkin", sent, signature=ident.sign(signed))
    assert_refused(app, response, 400, "does not match the request body", before, audited=True)


def test_certificate_our_ca_never_issued_through_scep_is_400(app, client):
    ident = DeviceIdentity(app, register=False)
    before = stored_counts(app)
    response = ident.checkin(client, "Authenticate")
    assert_refused(app, response, 400, "not issued by our SCEP service", before, audited=True)


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
        assert_refused(app, response, 400, "bound to another device", before, audited=True)
    response = first.put(client, "/mdm/connect", {"UDID": victim.udid, "Status": "Idle"})
    assert_refused(app, response, 400, "bound to another device", before, audited=True)
    with app.app_context():
        assert Device.query.filter_by(udid=victim.udid).one().enrollment_status == "enrolled"


def test_unbound_certificate_cannot_speak_for_an_enrolled_device(app, client):
    victim = DeviceIdentity(app)
    victim.enroll(client)
    stranger = DeviceIdentity(app, victim.udid)   # our CA issued it, but for another enrollment
    before = stored_counts(app)
    response = stranger.checkin(client, "CheckOut")
    assert_refused(app, response, 400, "not bound to this device", before, audited=True)


def test_message_before_authenticate_is_400(app, client):
    ident = DeviceIdentity(app)
    before = stored_counts(app)
    assert_refused(app, ident.checkin(client, "TokenUpdate"), 400, "Authenticate first", before, audited=True)
    assert_refused(app, ident.connect(client), 400, "Authenticate first", before, audited=True)


def test_same_subject_is_not_a_renewal_and_is_refused_with_the_claimed_udid(app, client):
    """Changed by issue 8: a subject match used to bind a certificate as a "renewal"; now only a SCEP
    RenewalReq signed by the bound certificate does."""
    original = DeviceIdentity(app, subject_cn="mdm-device-renewal-test")
    original.enroll(client)
    same_subject = DeviceIdentity(app, original.udid, subject_cn="mdm-device-renewal-test")
    before = stored_counts(app)
    assert_refused(app, same_subject.connect(client), 400, "not bound to this device", before, audited=True)
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
    assert_refused(app, original.connect(client), 400, "replaced by a newer one", before, audited=True)
    assert renewed.connect(client).status_code == 200
    # ...and a renewal of my certificate does not let anyone else speak for another device.
    other = DeviceIdentity(app)
    other.enroll(client)
    stolen = DeviceIdentity(app, other.udid, renewed_from=original)
    before = stored_counts(app)
    assert_refused(app, stolen.connect(client), 400, "not bound to this device", before, audited=True)


def test_renewal_subject_does_not_transfer_to_another_device(app, client):
    mine = DeviceIdentity(app, subject_cn="mdm-device-mine")
    mine.enroll(client)
    other = DeviceIdentity(app)
    other.enroll(client)
    # A fresh certificate with my subject cannot be used for the other device.
    renewal = DeviceIdentity(app, other.udid, subject_cn="mdm-device-mine")
    before = stored_counts(app)
    assert_refused(app, renewal.connect(client), 400, "not bound to this device", before, audited=True)


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
def proxy_app(app_factory):
    app = app_factory(TRUSTED_PROXY_CERT_HEADER="X-Client-Cert", TRUSTED_PROXY_ADDRESSES="10.0.0.0/8, 127.0.0.1")
    use_topic_of(app)
    return app


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
