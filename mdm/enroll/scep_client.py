"""A SCEP client, as a device runs it: used by the device simulator and the tests.

It generates its own RSA key, signs the PKCSReq with a self-signed certificate for that key, encrypts the
CSR to the CA it fetched with GetCACert, and checks the CA's signature and nonce on the CertRep - so the
server's code path is exactly the one an iPhone or a Mac takes.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
from dataclasses import dataclass

import httpx
from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import AttributeOID, NameOID

from . import cms
from .scep import (OID_FAIL_INFO, OID_MESSAGE_TYPE, OID_PKI_STATUS, OID_RECIPIENT_NONCE, OID_SENDER_NONCE,
                   OID_TRANSACTION_ID, FailInfo, MessageType, PKIStatus, printable)


class ScepError(Exception):
    """The CA answered FAILURE (``fail_info`` is a FailInfo), or its answer did not check out (fail_info None)."""

    def __init__(self, fail_info: FailInfo | None, message: str = ""):
        name = fail_info.name if fail_info is not None else "invalid response"
        super().__init__(f"SCEP {name}{': ' + message if message else ''}")
        self.fail_info = fail_info


def get_ca_caps(http_client: httpx.Client, scep_url: str) -> set[str]:
    response = http_client.get(scep_url, params={"operation": "GetCACaps"})
    response.raise_for_status()
    return {line.strip() for line in response.text.splitlines() if line.strip()}


def get_ca_certs(http_client: httpx.Client, scep_url: str) -> list[x509.Certificate]:
    response = http_client.get(scep_url, params={"operation": "GetCACert"})
    response.raise_for_status()
    kind = response.headers.get("content-type", "").split(";")[0].strip()
    if kind == "application/x-x509-ca-cert":
        return [x509.load_der_x509_certificate(response.content)]
    if kind == "application/x-x509-ca-ra-cert":
        return cms.parse_degenerate(response.content)
    raise ScepError(None, f"GetCACert answered {kind!r}")


def self_signed(key, subject: x509.Name) -> x509.Certificate:
    """The throw-away certificate a requester without a certificate signs its PKCSReq with."""
    now = dt.datetime.now(dt.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))


_SHORT_NAMES = {"C": NameOID.COUNTRY_NAME, "L": NameOID.LOCALITY_NAME, "ST": NameOID.STATE_OR_PROVINCE_NAME,
                "O": NameOID.ORGANIZATION_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME, "CN": NameOID.COMMON_NAME}


def subject_from_profile(subject: list) -> x509.Name:
    """The x509.Name a device builds from a SCEP payload's Subject: [[["O", "Org"]], [["CN", "name"]]]
    (com.apple.security.scep.yaml); OIDs may be short names or dotted numbers."""
    rdns = []
    for rdn in subject:
        attributes = []
        for oid, value in rdn:
            name_oid = _SHORT_NAMES.get(oid) or x509.ObjectIdentifier(oid)
            attributes.append(x509.NameAttribute(name_oid, value))
        rdns.append(x509.RelativeDistinguishedName(attributes))
    return x509.Name(rdns)


def build_csr(key, subject: x509.Name, challenge: str | None) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if challenge is not None:
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
    return builder.sign(key, hashes.SHA256())


@dataclass
class PKIRequest:
    """A built PKIOperation message and what is needed to check the answer."""
    der: bytes
    transaction_id: str
    sender_nonce: bytes
    signer_key: object
    signer_cert: x509.Certificate


def build_pki_message(csr: x509.CertificateSigningRequest, ca_cert: x509.Certificate, signer_key,
                      signer_cert: x509.Certificate, *, message_type: MessageType = MessageType.PKCS_REQ,
                      cipher: str = "aes256_cbc", digest: str = "sha256") -> PKIRequest:
    """PKCSReq/RenewalReq: SignedData(signer) over EnvelopedData(to the CA) of the CSR."""
    spki = csr.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    transaction_id = hashlib.sha256(spki).hexdigest()   # RFC 8894 suggests a hash of the public key
    sender_nonce = os.urandom(16)
    envelope = cms.encrypt_enveloped(csr.public_bytes(serialization.Encoding.DER), ca_cert, cipher=cipher)
    der = cms.build_signed_data(envelope, signer_key, signer_cert, digest=digest, attributes=[
        cms.attribute(OID_MESSAGE_TYPE, printable(str(int(message_type)))),
        cms.attribute(OID_TRANSACTION_ID, printable(transaction_id)),
        cms.attribute(OID_SENDER_NONCE, core.OctetString(sender_nonce)),
    ])
    return PKIRequest(der, transaction_id, sender_nonce, signer_key, signer_cert)


def send_pki_message(http_client: httpx.Client, scep_url: str, message: bytes, *, use_post: bool = True) -> bytes:
    if use_post:
        response = http_client.post(scep_url, params={"operation": "PKIOperation"}, content=message,
                                    headers={"Content-Type": "application/x-pki-message"})
    else:
        response = http_client.get(scep_url, params={"operation": "PKIOperation",
                                                      "message": base64.b64encode(message).decode()})
    if response.status_code != 200:
        raise ScepError(None, f"PKIOperation answered HTTP {response.status_code}: {response.text[:200]}")
    return response.content


def read_cert_rep(response: bytes, request: PKIRequest, ca_cert: x509.Certificate) -> x509.Certificate:
    """Check the CertRep (CA signature, nonce, transaction) and return the issued certificate.
    Raises ScepError(fail_info) on FAILURE."""
    try:
        reply = cms.parse_signed_data(response)
        reply.verify(ca_cert.public_key())
    except cms.CMSError as exc:
        raise ScepError(None, f"CertRep does not verify against the CA: {exc}") from None
    if reply.attribute(OID_MESSAGE_TYPE) != str(int(MessageType.CERT_REP)):
        raise ScepError(None, "not a CertRep")
    if reply.attribute(OID_RECIPIENT_NONCE) != request.sender_nonce:
        raise ScepError(None, "recipientNonce does not match our senderNonce")
    if reply.attribute(OID_TRANSACTION_ID) != request.transaction_id:
        raise ScepError(None, "transactionID does not match")
    status = reply.attribute(OID_PKI_STATUS)
    if status == str(int(PKIStatus.FAILURE)):
        raw = reply.attribute(OID_FAIL_INFO)
        try:
            fail_info = FailInfo(int(raw))
        except (TypeError, ValueError):
            raise ScepError(None, f"FAILURE with unreadable failInfo {raw!r}") from None
        raise ScepError(fail_info)
    if status != str(int(PKIStatus.SUCCESS)):
        raise ScepError(None, f"pkiStatus {status!r} (PENDING is not supported by this client)")
    degenerate = cms.decrypt_enveloped(reply.content, request.signer_key, request.signer_cert).content
    for cert in cms.parse_degenerate(degenerate):
        if cert.issuer == ca_cert.subject:
            return cert
    raise ScepError(None, "no certificate from our CA in the CertRep")


def enroll(http_client: httpx.Client, scep_url: str, challenge: str, subject: x509.Name,
           *, key_size: int = 2048) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """PKCSReq with a fresh RSA key. Returns (private key, issued certificate); raises ScepError."""
    caps = get_ca_caps(http_client, scep_url)
    ca_cert = get_ca_certs(http_client, scep_url)[0]
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    csr = build_csr(key, subject, challenge)
    request = build_pki_message(csr, ca_cert, key, self_signed(key, subject), **_choices(caps))
    response = send_pki_message(http_client, scep_url, request.der, use_post="POSTPKIOperation" in caps)
    cert = read_cert_rep(response, request, ca_cert)
    _check_same_key(cert, key)
    return key, cert


def renew(http_client: httpx.Client, scep_url: str, key, cert: x509.Certificate,
          *, key_size: int = 2048) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """RenewalReq: a new key, the request signed with the current identity (no challenge)."""
    caps = get_ca_caps(http_client, scep_url)
    ca_cert = get_ca_certs(http_client, scep_url)[0]
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    csr = build_csr(new_key, cert.subject, None)
    request = build_pki_message(csr, ca_cert, key, cert, message_type=MessageType.RENEWAL_REQ, **_choices(caps))
    response = send_pki_message(http_client, scep_url, request.der, use_post="POSTPKIOperation" in caps)
    new_cert = read_cert_rep(response, request, ca_cert)
    _check_same_key(new_cert, new_key)
    return new_key, new_cert


def _choices(caps: set[str]) -> dict:
    return {"cipher": "aes256_cbc" if "AES" in caps else "tripledes_3key",
            "digest": "sha256" if "SHA-256" in caps else "sha1"}


def _check_same_key(cert: x509.Certificate, key) -> None:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if cert.public_key().public_bytes(*fmt) != key.public_key().public_bytes(*fmt):
        raise ScepError(None, "the issued certificate is not for our key")
