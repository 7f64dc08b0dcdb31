"""SCEP server protocol (RFC 8894): GetCACaps, GetCACert and PKIOperation (PKCSReq, RenewalReq).

A PKIOperation request is a SignedData (signed by the requester's self-signed certificate, or for a renewal
by a certificate we issued) whose content is an EnvelopedData, encrypted to our CA, holding a PKCS#10 CSR.
We answer with a CertRep: a SignedData signed by the CA carrying the status attributes and, on success,
an EnvelopedData encrypted to the requester holding a degenerate SignedData with the issued certificate.
A request we cannot even read (no transactionID or nonce to answer to) is a ScepRequestError (HTTP 400).

Whose certificate: a PKCSReq is issued only for the enrollment its challenge belongs to. The subject is
that enrollment's (``O=<ORGANIZATION>, CN=<challenge_common_name(challenge)>``, the subject the profile
download put in the SCEP payload); the subject the CSR asks for is IGNORED, not refused: a different one
is replaced, logged and audited (``scep.subject_replaced``), so holding one enrollment's challenge never
yields a certificate naming another device. A RenewalReq keeps the subject of the certificate that signs
it and records it (``renewed_from_sha256``); a certificate retired by a re-enrollment cannot renew.
Issuing a certificate binds it to no device: that happens at Authenticate, or for a renewal on its first
use by the device its signer is bound to (mdm/protocol/certauth.py).
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from enum import IntEnum

from asn1crypto import core
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.exceptions import UnsupportedAlgorithm as CryptographyUnsupported
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import AttributeOID, NameOID
from flask import current_app
from sqlalchemy import delete, select, update

from ..extensions import db
from ..models import DeviceCertificate, EnrollmentToken, IssuedCertificate, ScepChallenge, audit, utcnow
from ..scheduler import register_job
from . import cms
from ..pki import get_pki
from .profile import challenge_common_name, hash_challenge

log = logging.getLogger(__name__)

# SCEP attributes (RFC 8894 section 3.2.1), under the VeriSign arc 2.16.840.1.113733.1.9.
OID_MESSAGE_TYPE = "2.16.840.1.113733.1.9.2"
OID_PKI_STATUS = "2.16.840.1.113733.1.9.3"
OID_FAIL_INFO = "2.16.840.1.113733.1.9.4"
OID_SENDER_NONCE = "2.16.840.1.113733.1.9.5"
OID_RECIPIENT_NONCE = "2.16.840.1.113733.1.9.6"
OID_TRANSACTION_ID = "2.16.840.1.113733.1.9.7"


class MessageType(IntEnum):
    CERT_REP = 3
    RENEWAL_REQ = 17
    PKCS_REQ = 19
    CERT_POLL = 20
    GET_CERT = 21
    GET_CRL = 22


class PKIStatus(IntEnum):
    SUCCESS = 0
    FAILURE = 2
    PENDING = 3


class FailInfo(IntEnum):
    BAD_ALG = 0
    BAD_MESSAGE_CHECK = 1
    BAD_REQUEST = 2
    BAD_TIME = 3
    BAD_CERT_ID = 4


CA_CAPABILITIES = ("POSTPKIOperation", "SHA-256", "SHA-1", "AES", "DES3", "SCEPStandard", "Renewal")
MAX_MESSAGE_BYTES = 64 * 1024      # a PKIOperation with a 4096-bit CSR is under 8 KB
MIN_RSA_BITS = 2048
NONCE_BYTES = 16
# transactionID is a PrintableString (RFC 8894 3.2.1.1); we echo it, so it must stay one.
_PRINTABLE = re.compile(r"^[A-Za-z0-9 '()+,\-./:=?]{1,128}$")
_MESSAGE_TYPE = re.compile(r"^[0-9]{1,3}$")


class ScepRequestError(ValueError):
    """Not a PKIMessage we can answer (HTTP 400). The message says why."""


class Refusal(Exception):
    """A readable request we refuse: answered with CertRep FAILURE and this failInfo."""

    def __init__(self, fail_info: FailInfo, reason: str):
        super().__init__(reason)
        self.fail_info = fail_info
        self.reason = reason


@dataclass
class PKIOperationResult:
    response: bytes                     # the DER CertRep to send back
    status: PKIStatus
    fail_info: FailInfo | None = None
    reason: str | None = None           # why it was refused (for logs; never sent to the device)
    certificate: x509.Certificate | None = None


def ca_caps() -> str:
    return "\n".join(CA_CAPABILITIES)


def ca_cert_der() -> bytes:
    # Our CA also signs CertReps and decrypts requests (no RA), so a single certificate is the answer.
    return get_pki().ca_der


def printable(value: str) -> core.PrintableString:
    return core.PrintableString(value)


@dataclass
class _Request:
    message: cms.SignedMessage
    message_type: int
    transaction_id: str
    sender_nonce: bytes
    reply_digest: str
    source: str | None = None       # the requester's address, for the audit trail


def _read_request(message: bytes) -> _Request:
    if not message:
        raise ScepRequestError("empty PKIOperation message")
    if len(message) > MAX_MESSAGE_BYTES:
        raise ScepRequestError(f"PKIOperation message over {MAX_MESSAGE_BYTES} bytes")
    try:
        signed = cms.parse_signed_data(message)
    except cms.CMSError as exc:
        raise ScepRequestError(f"not a SCEP PKIMessage: {exc}") from None
    message_type = signed.attribute(OID_MESSAGE_TYPE)
    transaction_id = signed.attribute(OID_TRANSACTION_ID)
    sender_nonce = signed.attribute(OID_SENDER_NONCE)
    if not isinstance(message_type, str) or not _MESSAGE_TYPE.match(message_type):
        raise ScepRequestError("missing or malformed messageType attribute")
    if not isinstance(transaction_id, str) or not _PRINTABLE.match(transaction_id):
        raise ScepRequestError("missing or malformed transactionID attribute")
    if not isinstance(sender_nonce, bytes) or not 8 <= len(sender_nonce) <= 64:
        raise ScepRequestError("missing or malformed senderNonce attribute")
    # Answer with the requester's digest when we know it (SHA-1 or SHA-2), so old clients can check us.
    reply_digest = signed.digest_algorithm if signed.digest_algorithm in ("sha1", "sha256", "sha384", "sha512") \
        else "sha256"
    return _Request(signed, int(message_type), transaction_id, sender_nonce, reply_digest)


def handle_pki_operation(message: bytes, *, source: str | None = None) -> PKIOperationResult:
    """Answer one PKIOperation. Commits the issued certificate (or the audit line of a refusal).
    Raises ScepRequestError when the message cannot be answered with a CertRep at all."""
    request = _read_request(message)
    request.source = source
    pki = get_pki()
    try:
        cert, reply_cipher = _issue(request, pki)
    except Refusal as refusal:
        db.session.rollback()
        log.warning("SCEP request %s from %s refused (failInfo %s): %s", request.transaction_id, source,
                    refusal.fail_info.name, refusal.reason)
        audit("scep.refused", actor="device", source=source, object_type="scep_transaction",
              object_id=request.transaction_id, detail=f"{refusal.fail_info.name}: {refusal.reason}")
        db.session.commit()
        response = _cert_rep(request, pki, PKIStatus.FAILURE, fail_info=refusal.fail_info)
        return PKIOperationResult(response, PKIStatus.FAILURE, refusal.fail_info, refusal.reason)
    db.session.commit()
    log.info("SCEP issued certificate serial %x to %s (transaction %s)", cert.serial_number,
             cert.subject.rfc4514_string(), request.transaction_id)
    degenerate = cms.build_degenerate([cert])
    envelope = cms.encrypt_enveloped(degenerate, request.message.signer_cert, cipher=reply_cipher)
    response = _cert_rep(request, pki, PKIStatus.SUCCESS, content=envelope)
    return PKIOperationResult(response, PKIStatus.SUCCESS, certificate=cert)


def _issue(request: _Request, pki) -> tuple[x509.Certificate, str]:
    """Check everything, then consume the challenge and issue. Raises Refusal; stores nothing when it does."""
    try:
        return _check_and_issue(request, pki)
    except (ValueError, TypeError, CryptographyUnsupported) as exc:
        # Certificates and names inside the message are parsed lazily: a malformed one is the sender's fault.
        raise Refusal(FailInfo.BAD_REQUEST, f"unreadable value in the request: {type(exc).__name__}") from None


def _check_and_issue(request: _Request, pki) -> tuple[x509.Certificate, str]:
    signed = request.message
    try:
        signed.verify()
    except cms.UnsupportedAlgorithm as exc:
        raise Refusal(FailInfo.BAD_ALG, str(exc)) from None
    except cms.BadSignature as exc:
        raise Refusal(FailInfo.BAD_MESSAGE_CHECK, str(exc)) from None
    try:
        message_type = MessageType(request.message_type)
    except ValueError:
        raise Refusal(FailInfo.BAD_REQUEST, f"unknown messageType {request.message_type}") from None
    if message_type not in (MessageType.PKCS_REQ, MessageType.RENEWAL_REQ):
        # We never answer PENDING, so there is nothing to poll for; GetCert/GetCRL are not offered.
        raise Refusal(FailInfo.BAD_REQUEST, f"messageType {message_type.name} is not supported")
    signer = signed.signer_cert
    if not isinstance(signer.public_key(), rsa.RSAPublicKey):
        raise Refusal(FailInfo.BAD_ALG, "the signer certificate must hold an RSA key (the reply is encrypted to it)")

    try:
        decrypted = cms.decrypt_enveloped(signed.content, pki.ca_key, pki.ca_cert)
    except cms.UnsupportedAlgorithm as exc:
        raise Refusal(FailInfo.BAD_ALG, str(exc)) from None
    except cms.CMSError as exc:
        raise Refusal(FailInfo.BAD_MESSAGE_CHECK, str(exc)) from None
    csr = _load_csr(decrypted.content)
    # Never answer with single DES: a client that can send it can read 3DES.
    reply_cipher = "tripledes_3key" if decrypted.cipher == "des" else decrypted.cipher

    if message_type is MessageType.PKCS_REQ:
        # RFC 8894 2.3: without an existing certificate the request is signed by a self-signed certificate
        # for the CSR's own key - that is how the requester proves it holds the key.
        if not _same_key(signer.public_key(), csr.public_key()):
            raise Refusal(FailInfo.BAD_REQUEST, "PKCSReq signed with a key other than the CSR's")
        challenge = _challenge_password(csr)
        token_id = _consume_challenge(challenge)
        subject, renewed_from = enrollment_subject(challenge), None
        if csr.subject != subject:
            _note_replaced_subject(request, csr.subject, subject, token_id)
    else:
        issued = _issued_by_us(signer, pki)
        token_id, renewed_from = issued.enrollment_token_id, issued.sha256
        subject = signer.subject    # a renewal keeps its identity; the CSR cannot rename it

    days = int(current_app.config["DEVICE_CERT_DAYS"])
    cert = pki.issue_device_identity(csr.public_key(), subject, days)
    db.session.add(IssuedCertificate(
        serial=format(cert.serial_number, "x"), sha256=cms.cert_sha256(cert),
        subject=subject.rfc4514_string()[:255], enrollment_token_id=token_id,
        renewed_from_sha256=renewed_from, not_after=cert.not_valid_after_utc.replace(tzinfo=None)))
    return cert, reply_cipher


def enrollment_subject(challenge: bytes | str) -> x509.Name:
    """The subject of the enrollment a challenge belongs to, exactly as its profile asked for it."""
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, current_app.config["ORGANIZATION"]),
                      x509.NameAttribute(NameOID.COMMON_NAME, challenge_common_name(challenge))])


def _note_replaced_subject(request: _Request, asked: x509.Name, issued: x509.Name, token_id: int | None) -> None:
    asked_text = asked.rfc4514_string()[:255]
    log.warning("SCEP transaction %s asked for subject %r; issuing the enrollment's own %r instead",
                request.transaction_id, asked_text, issued.rfc4514_string())
    audit("scep.subject_replaced", actor="device", source=request.source, object_type="scep_transaction",
          object_id=request.transaction_id,
          detail=f"asked for {asked_text}, issued {issued.rfc4514_string()} (enrollment token {token_id})")


def _load_csr(der: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_der_x509_csr(der)
        valid = csr.is_signature_valid
        key = csr.public_key()
        subject = csr.subject.rfc4514_string()
    except (ValueError, TypeError, x509.UnsupportedGeneralNameType) as exc:
        raise Refusal(FailInfo.BAD_REQUEST, f"the enveloped content is not a readable PKCS#10 CSR: {exc}") from None
    except Exception as exc:   # cryptography raises UnsupportedAlgorithm etc. for exotic keys
        raise Refusal(FailInfo.BAD_ALG, f"CSR uses an unsupported algorithm: {type(exc).__name__}") from None
    if not valid:
        raise Refusal(FailInfo.BAD_MESSAGE_CHECK, "the CSR's own signature does not verify")
    # RSA only: SCEP encrypts its reply to the requester's key (com.apple.security.scep.yaml: "Key Type" RSA).
    if not isinstance(key, rsa.RSAPublicKey):
        raise Refusal(FailInfo.BAD_ALG, f"{type(key).__name__} keys are not accepted; use RSA")
    if key.key_size < MIN_RSA_BITS:
        raise Refusal(FailInfo.BAD_REQUEST, f"RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} required")
    if not subject or len(subject) > 255:
        raise Refusal(FailInfo.BAD_REQUEST, "the CSR subject is empty or longer than 255 characters")
    return csr


def _same_key(a, b) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return a.public_bytes(*fmt) == b.public_bytes(*fmt)


def _challenge_password(csr: x509.CertificateSigningRequest) -> bytes:
    try:
        value = csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD).value
    except x509.AttributeNotFound:
        raise Refusal(FailInfo.BAD_REQUEST, "the CSR has no challengePassword") from None
    if not value or len(value) > 255:
        raise Refusal(FailInfo.BAD_REQUEST, "the challengePassword is empty or too long")
    return value


def _consume_challenge(challenge: bytes) -> int | None:
    """Mark the challenge used, atomically (one conditional UPDATE), and return its enrollment token id."""
    digest = hash_challenge(challenge)
    now = utcnow()
    result = db.session.execute(
        update(ScepChallenge)
        .where(ScepChallenge.challenge_sha256 == digest, ScepChallenge.used_at.is_(None),
               ScepChallenge.expires_at > now)
        .values(used_at=now)
        .execution_options(synchronize_session=False))
    row = db.session.execute(select(ScepChallenge.enrollment_token_id, ScepChallenge.used_at,
                                    ScepChallenge.expires_at)
                             .where(ScepChallenge.challenge_sha256 == digest)).first()
    if result.rowcount == 1:
        # Revoking a URL also stops the challenges handed out by its downloads (the refusal rolls back).
        token = db.session.get(EnrollmentToken, row.enrollment_token_id) if row.enrollment_token_id else None
        if token is not None and token.revoked_at is not None:
            raise Refusal(FailInfo.BAD_REQUEST, f"challenge from enrollment token {token.id}, which is revoked")
        return row.enrollment_token_id
    if row is None:
        raise Refusal(FailInfo.BAD_REQUEST, "unknown challenge")
    if row.used_at is not None:
        raise Refusal(FailInfo.BAD_REQUEST, "challenge already used")
    raise Refusal(FailInfo.BAD_REQUEST, "challenge expired")


def _issued_by_us(signer: x509.Certificate, pki) -> IssuedCertificate:
    """A RenewalReq must be signed by a still-valid certificate that this CA issued and recorded."""
    try:
        signer.verify_directly_issued_by(pki.ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise Refusal(FailInfo.BAD_REQUEST, "RenewalReq not signed by a certificate this CA issued") from None
    issued = db.session.scalar(select(IssuedCertificate).where(IssuedCertificate.sha256 == cms.cert_sha256(signer)))
    if issued is None:
        raise Refusal(FailInfo.BAD_REQUEST, "RenewalReq signed by a certificate we have no record of")
    if signer.not_valid_after_utc.replace(tzinfo=None) <= utcnow():
        raise Refusal(FailInfo.BAD_REQUEST, "RenewalReq signed by an expired certificate")
    retired = db.session.scalar(select(DeviceCertificate.retired_at).where(
        DeviceCertificate.sha256 == issued.sha256))
    if retired is not None:
        raise Refusal(FailInfo.BAD_REQUEST, "RenewalReq signed by a certificate a re-enrollment replaced")
    return issued


def purge_stale_challenges(app=None, *, keep_days: int = 7) -> int:
    """Delete challenges that expired more than ``keep_days`` ago (used or not). Scheduled daily."""
    result = db.session.execute(delete(ScepChallenge).where(
        ScepChallenge.expires_at < utcnow() - timedelta(days=keep_days)))
    db.session.commit()
    return result.rowcount


def init_app(app) -> None:
    """The SCEP room's wiring (called by ``create_app``): the daily purge of stale challenges."""
    register_job(purge_stale_challenges, "interval", hours=24)


def _cert_rep(request: _Request, pki, status: PKIStatus, *, fail_info: FailInfo | None = None,
              content: bytes | None = None) -> bytes:
    attributes = [
        cms.attribute(OID_MESSAGE_TYPE, printable(str(int(MessageType.CERT_REP)))),
        cms.attribute(OID_PKI_STATUS, printable(str(int(status)))),
        cms.attribute(OID_TRANSACTION_ID, printable(request.transaction_id)),
        cms.attribute(OID_SENDER_NONCE, core.OctetString(os.urandom(NONCE_BYTES))),
        cms.attribute(OID_RECIPIENT_NONCE, core.OctetString(request.sender_nonce)),
    ]
    if fail_info is not None:
        attributes.append(cms.attribute(OID_FAIL_INFO, printable(str(int(fail_info)))))
    return cms.build_signed_data(content, pki.ca_key, pki.ca_cert, attributes=attributes,
                                 digest=request.reply_digest)
