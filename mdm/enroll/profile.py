"""The enrollment profile: our CA, a SCEP payload with a one-time challenge, and the MDM payload.

Keys follow Apple's schemas in shared/apple-schema/mdm/profiles/ (TopLevel.yaml, com.apple.security.root.yaml,
com.apple.security.scep.yaml, com.apple.mdm.yaml). Each download builds a fresh profile: new payload UUIDs,
a new SCEP challenge (stored only as its SHA-256) and a unique certificate subject derived from that
challenge (``challenge_common_name``), so the SCEP service knows the subject of the enrollment from the
challenge alone and never takes it from the request.
"""
from __future__ import annotations

import hashlib
import logging
import secrets
import uuid
from datetime import timedelta

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from flask import current_app

from .. import plistio
from ..extensions import db
from ..models import EnrollmentToken, ScepChallenge, audit, utcnow
from ..push.cert import PushCertError, current_topic
from ..pki import get_pki
from .tokens import TokenError, TokenRefused, redeem_token

log = logging.getLogger(__name__)

# com.apple.mdm.yaml AccessRights: 8191 = every right (1..4096), as a device-enrollment MDM needs.
ACCESS_RIGHTS_ALL = 8191
SERVER_CAPABILITIES = ["com.apple.mdm.per-user-connections", "com.apple.mdm.bootstraptoken"]
# com.apple.security.scep.yaml "Key Usage": 1 signing + 4 encryption (the identity signs MDM messages
# and the CA encrypts the SCEP reply to it).
SCEP_KEY_USAGE = 5
SCEP_KEY_SIZE = 2048
CHALLENGE_BYTES = 24


class ProfileUnavailable(Exception):
    """The server cannot build a profile right now (e.g. no push topic); the reason is for the operator."""

    status_code = 503

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def hash_challenge(challenge: str | bytes) -> str:
    if isinstance(challenge, str):
        challenge = challenge.encode()
    return hashlib.sha256(challenge).hexdigest()


def challenge_common_name(challenge: str | bytes) -> str:
    """The certificate CN of the enrollment this challenge belongs to: ``mdm-device-<uuid>``, the uuid a
    one-way function of the challenge (seeing the CN reveals nothing of the challenge)."""
    if isinstance(challenge, str):
        challenge = challenge.encode()
    digest = hashlib.sha256(b"mdm-device-subject\0" + challenge).digest()
    return f"mdm-device-{uuid.UUID(bytes=digest[:16], version=4)}"


def new_scep_challenge(token: EnrollmentToken | None) -> str:
    """A one-time challenge, stored hashed with its expiry in the caller's transaction. Returns the plain value."""
    challenge = secrets.token_urlsafe(CHALLENGE_BYTES)
    minutes = int(current_app.config["SCEP_CHALLENGE_MINUTES"])
    db.session.add(ScepChallenge(challenge_sha256=hash_challenge(challenge),
                                 enrollment_token_id=token.id if token is not None else None,
                                 expires_at=utcnow() + timedelta(minutes=minutes)))
    return challenge


def _identifier_prefix(hostname: str) -> str:
    """Reverse-DNS prefix for PayloadIdentifier, stable per server so a re-install replaces the profile."""
    labels = [label for label in (hostname or "localhost").lower().split(".") if label]
    return ".".join(reversed(labels)) + ".mdm"


def _uuid() -> str:
    return str(uuid.uuid4()).upper()


def build_enrollment_profile(token: EnrollmentToken | None, topic: str | None = None) -> dict:
    """The profile as a dict (call profile_bytes to serialise). Adds a ScepChallenge to the session;
    the caller commits. ``topic`` defaults to mdm.push.cert.current_topic()."""
    cfg = current_app.config
    server_url, org = cfg["SERVER_URL"], cfg["ORGANIZATION"]
    if topic is None:
        topic = current_topic()
    prefix = _identifier_prefix(cfg["SERVER_HOSTNAME"])
    pki = get_pki()
    root_uuid, scep_uuid, mdm_uuid = _uuid(), _uuid(), _uuid()
    challenge = new_scep_challenge(token)

    root_payload = {
        "PayloadType": "com.apple.security.root",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{prefix}.ca.{root_uuid}",
        "PayloadUUID": root_uuid,
        "PayloadDisplayName": f"{org} CA",
        "PayloadCertificateFileName": "ca.cer",
        "PayloadContent": pki.ca_der,
    }
    scep_payload = {
        "PayloadType": "com.apple.security.scep",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{prefix}.scep.{scep_uuid}",
        "PayloadUUID": scep_uuid,
        "PayloadDisplayName": "Device identity (SCEP)",
        "PayloadContent": {
            "URL": f"{server_url}/scep",
            "Challenge": challenge,
            "Keysize": SCEP_KEY_SIZE,
            "Key Type": "RSA",
            "Key Usage": SCEP_KEY_USAGE,
            # Subject is an array of RDNs, each an array of [OID, value] pairs (com.apple.security.scep.yaml).
            "Subject": [[["O", org]], [["CN", challenge_common_name(challenge)]]],
        },
    }
    mdm_payload = {
        "PayloadType": "com.apple.mdm",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{prefix}.mdm.{mdm_uuid}",
        "PayloadUUID": mdm_uuid,
        "PayloadDisplayName": "Mobile Device Management",
        "ServerURL": f"{server_url}/mdm/connect",
        "CheckInURL": f"{server_url}/mdm/checkin",
        "Topic": topic,
        "IdentityCertificateUUID": scep_uuid,
        "SignMessage": True,
        "AccessRights": ACCESS_RIGHTS_ALL,
        "CheckOutWhenRemoved": True,
        "ServerCapabilities": list(SERVER_CAPABILITIES),
    }
    return {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{prefix}.enrollment",
        "PayloadUUID": _uuid(),
        "PayloadDisplayName": f"{org} MDM Enrollment",
        "PayloadDescription": f"Enrolls this device in {org}'s device management.",
        "PayloadOrganization": org,
        "PayloadContent": [root_payload, scep_payload, mdm_payload],
    }


def profile_bytes(profile: dict) -> bytes:
    return plistio.dumps(profile)


def sign_profile(data: bytes) -> bytes:
    """DER CMS SignedData with the content inside, signed by our profile-signing identity; the signing
    certificate and the CA are included so a device can build the chain to the CA it is about to trust."""
    pki = get_pki()
    return (pkcs7.PKCS7SignatureBuilder()
            .set_data(data)
            .add_signer(pki.signing_cert, pki.signing_key, hashes.SHA256())
            .add_certificate(pki.ca_cert)
            .sign(serialization.Encoding.DER, []))


def download_enrollment_profile(token_value: str, *, signed: bool = True, source: str | None = None) -> bytes:
    """What GET /enroll/<token> serves: counts one use of the token, stores the challenge, commits.
    Raises TokenNotFound / TokenRefused (nothing stored) or ProfileUnavailable."""
    try:
        topic = current_topic()
    except PushCertError as exc:
        raise ProfileUnavailable(f"no usable push topic: {exc}") from None
    try:
        token = redeem_token(token_value)
    except TokenError as exc:
        db.session.rollback()
        if isinstance(exc, TokenRefused):
            # A known token used after it stopped working: worth an audit line for the admin.
            audit("enrollment_token.refused", actor="device", source=source, object_type="enrollment_token",
                  object_id=exc.token_id, detail=exc.reason)
            db.session.commit()
        raise
    profile = build_enrollment_profile(token, topic=topic)
    db.session.commit()
    log.info("enrollment profile served for token %s (use %s)", token.id, token.uses)
    data = profile_bytes(profile)
    return sign_profile(data) if signed else data
