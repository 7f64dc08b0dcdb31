"""Who is talking: the device identity certificate behind a check-in or command request.

Two ways in, like NanoMDM's certauth:
- the ``Mdm-Signature`` header (the enrollment profile sets SignMessage): a base64 CMS SignedData,
  detached, over the exact request body, signed by the device identity our SCEP CA issued;
- optionally, a client certificate forwarded by a trusted TLS-terminating proxy (off by default).
The signature's usual shape (DER, one signer by issuer and serial, signed attributes) is read by a strict
DER walk of only what verification needs (``_fast_signed``); any other shape by asn1crypto. Same checks,
same refusals either way (tests/protocol/test_certauth_fast_path.py compares the two).

Then the binding (``DeviceCertificate``, by SHA-256 fingerprint). A certificate becomes a device's identity
in exactly two ways:
- Authenticate with a certificate our SCEP service issued and no device holds: a new enrollment. The
  certificates the device held before are retired (``retired_at``) and refused from then on, everywhere.
- a SCEP RenewalReq signed by the device's currently bound (not retired) certificate: the SCEP service
  records the signer (``IssuedCertificate.renewed_from_sha256``); on the renewal's first use by that
  device it is bound and its predecessor retired.
Never by subject: two certificates with the same subject are unrelated here (the SCEP service takes the
subject from the enrollment's challenge anyway, mdm/enroll/scep.py). A retired certificate is never
bound again, not even by Authenticate.

Every refusal is an ``AuthError`` with a reason a person can act on and, once the message is read, the
UDID it claimed (``udid``); the HTTP layer audits it (``device.auth_failed``) and answers 400. Nothing
secret (signatures, keys, whole certificates) goes into the reason.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import unquote

from asn1crypto import algos, cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import bindparam, event, literal, select, true
from sqlalchemy.orm import Session, aliased

from ..config import is_trusted_proxy
from ..extensions import db
from ..models import Device, DeviceCertificate, IssuedCertificate, audit, utcnow

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Mdm-Signature"
# A CMS blob with a couple of certificates is a few KB; anything far larger is not a device signature.
MAX_SIGNATURE_HEADER_CHARS = 64 * 1024

_DIGESTS = {"sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
_HASHLIB = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}


class AuthError(Exception):
    """The request is not authenticated or not authorised for this device; ``str(exc)`` is the reason,
    ``udid`` the device the request claimed to be (None when it was refused before it was read)."""

    def __init__(self, reason: str, udid: str | None = None):
        super().__init__(reason)
        self.udid = udid


@dataclass
class Identity:
    """A verified device identity certificate, not yet tied to a device."""
    cert: x509.Certificate
    sha256: str
    via: str   # "signature" or "proxy"

    @property
    def subject(self) -> str:
        return self.cert.subject.rfc4514_string()

    @property
    def serial(self) -> str:
        return format(self.cert.serial_number, "x")


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


# --- the Mdm-Signature header ------------------------------------------------------------------------

def verify_mdm_signature(header_value: str | None, body: bytes, ca_cert: x509.Certificate,
                         now: datetime | None = None) -> x509.Certificate:
    """The signer certificate, after checking the CMS signature covers exactly ``body`` and the signer
    was issued by ``ca_cert`` and is within its validity. Raises AuthError."""
    if not header_value:
        raise AuthError("missing Mdm-Signature header")
    if len(header_value) > MAX_SIGNATURE_HEADER_CHARS:
        raise AuthError("Mdm-Signature header too large")
    try:
        der = base64.b64decode("".join(header_value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise AuthError("Mdm-Signature is not base64") from None
    fast = _fast_signed(der)
    if fast is not None:
        check_issued_by_ca(fast.cert, ca_cert, now)
        if fast.signed_bytes is not None:
            _check_attribute_values(fast.message_digests, fast.content_types, _OID_DATA, fast.digest_name, body)
        _verify_raw_signature(fast.cert, fast.signature_algorithm, fast.signature,
                              fast.signed_bytes if fast.signed_bytes is not None else body, fast.digest_name)
        return fast.cert
    try:
        return _verify_general(der, body, ca_cert, now)
    except AuthError:
        raise
    except (ValueError, TypeError, KeyError):
        # asn1crypto parses lazily: a malformed part the structural parse did not reach (a signed
        # attribute, a name compared later) fails on first use. Before this was caught here, such input
        # escaped as a generic error (400 "could not process the message", no device.auth_failed audit).
        raise AuthError("Mdm-Signature is not a CMS structure") from None


def _verify_general(der: bytes, body: bytes, ca_cert: x509.Certificate, now: datetime | None) -> x509.Certificate:
    """Any BER/DER SignedData shape, through asn1crypto (the fast path hands over what it does not know)."""
    signed_data = _parse_signed_data(der)
    signer_info = _single_signer(signed_data)
    cert = _signer_certificate(signed_data, signer_info)
    check_issued_by_ca(cert, ca_cert, now)
    _verify_signer_info(signer_info, cert, body)
    return cert


def _parse_signed_data(der: bytes):
    try:
        info = cms.ContentInfo.load(der, strict=True)
        if info["content_type"].native != "signed_data":
            raise AuthError("Mdm-Signature is CMS but not SignedData")
        signed_data = info["content"]
        # Force a full parse now so malformed inner structures fail here, not later. A structural parse of
        # every element: converting the whole tree to Python values (``.native``) costs ~1 ms per request,
        # mostly LDAP string preparation of certificate names nobody reads.
        _parse_all(signed_data)
    except AuthError:
        raise
    except Exception:  # asn1crypto raises ValueError/TypeError/KeyError on junk
        raise AuthError("Mdm-Signature is not a CMS structure") from None
    encap = signed_data["encap_content_info"]
    if encap["content"].native is not None:
        # Devices send a detached signature: the signed content is the request body itself.
        raise AuthError("Mdm-Signature must be a detached signature")
    return signed_data


def _parse_all(value) -> None:
    """Parse every constructed element below ``value`` (asn1crypto parses lazily); raises on malformed DER."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, asn1_x509.Certificate) and item.dump() in _cert_cache:
            continue      # parsed whole (and well-formed) by cryptography before
        if isinstance(item, (core.Sequence, core.SequenceOf)):
            item._parse_children(recurse=False)
            stack.extend(child for child in item if child is not None)
        elif isinstance(item, core.Choice):
            stack.append(item.chosen)
        elif isinstance(item, (core.Any, core.ParsableOctetString)) and item.contents is not None:
            parsed = item.parsed
            if parsed is not None:
                stack.append(parsed)
        elif isinstance(item, core.Asn1Value) and not isinstance(item, core.Void):
            item.native  # noqa: B018  (primitive: cheap; checks integers, OIDs, times, strings)


def _single_signer(signed_data):
    signer_infos = signed_data["signer_infos"]
    if len(signer_infos) != 1:
        raise AuthError(f"Mdm-Signature must have exactly one signer, has {len(signer_infos)}")
    return signer_infos[0]


def _signer_certificate(signed_data, signer_info) -> x509.Certificate:
    sid = signer_info["sid"]
    for choice in signed_data["certificates"] or []:
        if choice.name != "certificate":
            continue
        cert = choice.chosen
        if sid.name == "issuer_and_serial_number":
            issuer = sid.chosen["issuer"]
            # Byte-equal names are equal; only differently encoded ones need RFC 5280 comparison.
            match = (cert.serial_number == sid.chosen["serial_number"].native
                     and (cert["tbs_certificate"]["issuer"].dump() == issuer.dump() or cert.issuer == issuer))
        else:
            match = cert.key_identifier == sid.chosen.native
        if match:
            return _load_certificate(cert.dump())
    raise AuthError("Mdm-Signature does not contain the signer's certificate")


# A device sends the same identity certificate with every request: parse it, fingerprint it and check
# our CA's signature on it once per process (the validity window is still checked on every request).
_CERT_CACHE_SIZE = 4096
_cert_cache: dict[bytes, x509.Certificate] = {}
_ca_checked: dict[tuple[bytes, bytes], bool] = {}
_cache_lock = threading.Lock()


def _load_certificate(der: bytes) -> x509.Certificate:
    cert = _cert_cache.get(der)
    if cert is None:
        try:
            cert = x509.load_der_x509_certificate(der)
        except Exception as exc:    # cryptography also raises InvalidVersion, not a ValueError
            raise ValueError(f"not a certificate: {exc}") from None
        with _cache_lock:
            if len(_cert_cache) >= _CERT_CACHE_SIZE:
                _cert_cache.clear()
            _cert_cache[der] = cert
    return cert


def _issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    key = (cert.tbs_certificate_bytes + cert.signature, ca_cert.tbs_certificate_bytes)
    known = _ca_checked.get(key)
    if known is None:
        try:
            cert.verify_directly_issued_by(ca_cert)
            known = True
        except (ValueError, TypeError, InvalidSignature):
            known = False
        with _cache_lock:
            if len(_ca_checked) >= _CERT_CACHE_SIZE:
                _ca_checked.clear()
            _ca_checked[key] = known
    return known


def check_issued_by_ca(cert: x509.Certificate, ca_cert: x509.Certificate, now: datetime | None = None) -> None:
    """Directly issued by our CA (our SCEP CA signs device identities itself) and valid right now."""
    if not _issued_by(cert, ca_cert):
        raise AuthError("signer certificate was not issued by our CA")
    now = now or datetime.now(timezone.utc)
    if now < cert.not_valid_before_utc:
        raise AuthError("signer certificate is not yet valid")
    if now > cert.not_valid_after_utc:
        raise AuthError("signer certificate has expired")


def _verify_signer_info(signer_info, cert: x509.Certificate, body: bytes) -> None:
    digest_name = signer_info["digest_algorithm"]["algorithm"].native
    if digest_name not in _DIGESTS:
        raise AuthError(f"unsupported digest algorithm {digest_name}")
    signature = signer_info["signature"].native
    signed_attrs = signer_info["signed_attrs"]
    if signed_attrs.native is not None and len(signed_attrs):
        _check_signed_attributes(signed_attrs, digest_name, body)
        # RFC 5652 5.4: the signature covers the DER of the attributes as a SET OF (tag 0x31),
        # not the [0] IMPLICIT form they are carried in. asn1crypto keeps the received bytes.
        signed_bytes = b"\x31" + signed_attrs.dump()[1:]
    else:
        signed_bytes = body
    _verify_raw_signature(cert, signer_info["signature_algorithm"]["algorithm"].native, signature, signed_bytes,
                          digest_name)


def _check_signed_attributes(signed_attrs, digest_name: str, body: bytes) -> None:
    digests = [a["values"][0].native for a in signed_attrs if a["type"].native == "message_digest"]
    content_types = [a["values"][0].native for a in signed_attrs if a["type"].native == "content_type"]
    _check_attribute_values(digests, content_types, "data", digest_name, body)


def _check_attribute_values(digests: list, content_types: list, data, digest_name: str, body: bytes) -> None:
    """Exactly one messageDigest, equal to the body's digest; content type, when given, is ``data``."""
    if len(digests) != 1:
        raise AuthError("signed attributes must carry exactly one messageDigest")
    if content_types and content_types != [data]:
        raise AuthError("signed content type is not data")
    actual = _HASHLIB[digest_name](body).digest()
    if not hmac.compare_digest(digests[0], actual):
        raise AuthError("Mdm-Signature does not match the request body")


def _verify_raw_signature(cert, algo: str, signature: bytes, data: bytes, digest_name: str) -> None:
    public_key = cert.public_key()
    hash_algorithm = _DIGESTS[digest_name]()
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            if algo not in ("rsassa_pkcs1v15", f"{digest_name}_rsa"):
                raise AuthError(f"unsupported signature algorithm {algo}")
            public_key.verify(signature, data, padding.PKCS1v15(), hash_algorithm)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            if algo not in ("ecdsa", f"{digest_name}_ecdsa"):
                raise AuthError(f"unsupported signature algorithm {algo}")
            public_key.verify(signature, data, ec.ECDSA(hash_algorithm))
        else:
            raise AuthError("unsupported signer key type")
    except InvalidSignature:
        raise AuthError("Mdm-Signature signature is invalid") from None


# --- a certificate forwarded by a trusted proxy ---------------------------------------------------------

def proxy_certificate(config, remote_addr: str | None, headers) -> x509.Certificate | None:
    """The client certificate a trusted proxy forwarded (URL-encoded PEM, like nginx's
    $ssl_client_escaped_cert), or None when the feature is off, the header absent, or the sender is not
    a trusted proxy (then the header is ignored and the Mdm-Signature is required)."""
    header = (config.get("TRUSTED_PROXY_CERT_HEADER") or "").strip()
    if not header or not headers.get(header):
        return None
    if not is_trusted_proxy(config.get("TRUSTED_PROXY_ADDRESSES") or "", remote_addr):
        log.warning("ignoring %s header from untrusted address %s", header, remote_addr)
        return None
    try:
        return x509.load_pem_x509_certificate(unquote(headers[header]).encode())
    except ValueError:
        raise AuthError(f"{header} header is not a URL-encoded PEM certificate") from None


def identify(config, remote_addr: str | None, headers, body: bytes, ca_cert: x509.Certificate) -> Identity:
    """The verified identity certificate of this request (proxy-forwarded when allowed, else the signature)."""
    cert = proxy_certificate(config, remote_addr, headers)
    if cert is not None:
        check_issued_by_ca(cert, ca_cert)
        return Identity(cert, fingerprint(cert), "proxy")
    cert = verify_mdm_signature(headers.get(SIGNATURE_HEADER), body, ca_cert)
    return Identity(cert, fingerprint(cert), "signature")


# --- binding certificates to devices ---------------------------------------------------------------------

# What authorisation needs about a certificate and a UDID, in one round trip: the SCEP record of the
# certificate (either case of hex, as before), its binding, and the device the message names.
_issued = IssuedCertificate.__table__
_bound = DeviceCertificate.__table__
_devices = Device.__table__


def _facts_statement():
    """Built once (a constant statement is compiled once and then found in SQLAlchemy's cache)."""
    base = select(literal(1).label("one")).subquery("base")
    issued = (select(_issued.c.id, _issued.c.renewed_from_sha256)
              .where(_issued.c.sha256.in_([bindparam("sha256"), bindparam("sha256_upper")]))
              .limit(1).subquery("issued"))
    bound = _bound.alias("bound")
    device = aliased(Device)
    return (select(device, issued.c.id.label("issued_id"), issued.c.renewed_from_sha256,
                   bound.c.device_id.label("bound_device_id"), bound.c.retired_at)
            .select_from(base)
            .outerjoin(issued, true())
            .outerjoin(bound, bound.c.sha256 == bindparam("sha256"))
            .outerjoin(device, device.udid == bindparam("udid")))


_FACTS = _facts_statement()
_BOUND_TO = (select(_bound.c.device_id, _bound.c.retired_at, _devices.c.udid)
             .select_from(_bound.join(_devices, _devices.c.id == _bound.c.device_id))
             .where(_bound.c.sha256 == bindparam("sha256")))


def authorize(identity: Identity, udid: str, *, enrolling: bool) -> Device | None:
    """Check the certificate may speak for ``udid``. Returns the device (None only when ``enrolling`` and
    the device is new). Raises AuthError (with ``udid``). A renewal is bound here (its predecessor
    retired); for Authenticate call ``bind_new_enrollment`` once the device row exists.

    One query (``_facts_statement``) reads the certificate's SCEP record, its binding and the device."""
    generation = _cache_generation
    row = db.session.execute(_FACTS, {"sha256": identity.sha256, "sha256_upper": identity.sha256.upper(),
                                      "udid": udid}).one()
    device, issued_id, renewed_from = row[0], row.issued_id, row.renewed_from_sha256
    if issued_id is None:
        raise AuthError("signer certificate was not issued by our SCEP service", udid)
    if row.bound_device_id is not None:
        if device is None or row.bound_device_id != device.id:
            raise AuthError("certificate is bound to another device", udid)
        if row.retired_at is not None:
            raise AuthError("certificate was replaced by a newer one for this device "
                            "(re-enrollment or renewal); it is no longer accepted", udid)
        _remember(identity.sha256, device.id, udid, generation)
        return device
    if enrolling:
        return device            # Authenticate: the certificate is bound to this UDID next
    if device is None:
        raise AuthError("unknown device: Authenticate first", udid)
    predecessor = _bound_predecessor(renewed_from, device)
    if predecessor is None:
        raise AuthError("certificate is not bound to this device", udid)
    bind(identity, device)
    predecessor.retired_at = utcnow()
    forget(predecessor.sha256)
    audit("device.certificate_renewed", actor="device", object_type="device", object_id=device.udid,
          detail=f"certificate {identity.sha256[:16]} renews {predecessor.sha256[:16]}, now retired")
    log.info("renewed identity certificate for %s", device.udid)
    return device


def _bound_predecessor(renewed_from_sha256: str | None, device: Device) -> DeviceCertificate | None:
    """The device's current certificate that signed the SCEP RenewalReq this certificate was issued for."""
    renewed_from = (renewed_from_sha256 or "").lower()
    if not renewed_from:
        return None
    return DeviceCertificate.query.filter_by(device_id=device.id, sha256=renewed_from, retired_at=None).first()


# --- the per-certificate cache of the hot path ---------------------------------------------------------
#
# ``authorized_device_id`` answers "is this certificate bound, not retired, to the device with this UDID"
# from a per-process cache keyed by the certificate's fingerprint, for AUTH_CACHE_SECONDS. Only that one
# fact is cached (the state that grants access); every other state (unknown, unbound, retired, renewal,
# bound elsewhere) is decided by ``authorize`` against the database, every time.
#
# Staleness, explicitly:
# - In this process: never. Every change that takes a certificate's access away (retirement on
#   re-enrollment or renewal, rebinding) calls ``forget`` when it is made; from just before its transaction
#   commits until it has ended (``before_commit`` .. ``after_transaction_end`` below) the cache is
#   neither read nor filled (every request reads the database), and the entries are dropped again after
#   the commit; an entry is only stored when no such change happened between the read that found it and
#   the store (``_cache_generation``). So once a retirement has committed, no request of this process
#   accepts the certificate: a request either read the binding before the commit, or reads it after.
# - In another worker process of the same server: for at most AUTH_CACHE_SECONDS after the retirement
#   committed, that process may still accept the retired certificate for requests that need no write
#   (an Idle with nothing queued: it learns nothing and changes nothing). Every request that writes goes
#   through ``authorize``, which reads the committed state. Why this is safe: what the cached answer can
#   give is only ever an empty reply to an Idle (when a command waits, or the last-seen time is due, the
#   request goes to ``authorize``, which refuses the retired certificate), so the old key gets no command,
#   learns nothing and changes nothing; and a certificate is retired only because the same device
#   re-enrolled or renewed (the old key was the device's own a moment ago). A deleted device's binding
#   goes with it; the cached id and UDID then find no device row and ``authorize`` refuses the request.
AUTH_CACHE_SECONDS = 5.0
_AUTH_CACHE_SIZE = 100_000
_auth_cache: dict[str, tuple[int, str, float]] = {}   # sha256 -> (device id, UDID, expires, monotonic)
_cache_generation = 0


_commits_in_flight = 0    # transactions that forget certificates, between before_commit and its end


def _remember(sha256: str, device_id: int, udid: str, generation: int) -> None:
    with _cache_lock:
        if generation != _cache_generation or _commits_in_flight:
            return       # a change was made, or is being committed, since the facts were read
        if len(_auth_cache) >= _AUTH_CACHE_SIZE:
            _auth_cache.clear()
        _auth_cache[sha256] = (device_id, udid, time.monotonic() + AUTH_CACHE_SECONDS)


def _drop(sha256s) -> None:
    global _cache_generation
    _cache_generation += 1
    for sha256 in sha256s:
        _auth_cache.pop(sha256, None)


def forget(*sha256s: str) -> None:
    """Drop these certificates from the cache now, keep the cache out of use while the current transaction
    commits, and drop them again once it has."""
    with _cache_lock:
        _drop(sha256s)
    db.session.info.setdefault("mdm_certauth_forget", set()).update(sha256s)


@event.listens_for(Session, "before_commit")
def _before_commit(session) -> None:
    global _commits_in_flight
    pending = session.info.get("mdm_certauth_forget")
    if pending and not session.info.get("mdm_certauth_in_flight"):
        with _cache_lock:
            _commits_in_flight += 1
            _drop(pending)
        session.info["mdm_certauth_in_flight"] = True


@event.listens_for(Session, "after_transaction_end")
def _after_transaction(session, transaction) -> None:
    """The outermost transaction ended (committed or rolled back; savepoints do not count)."""
    global _commits_in_flight
    if transaction.parent is not None:
        return
    pending = session.info.pop("mdm_certauth_forget", None)
    in_flight = session.info.pop("mdm_certauth_in_flight", False)
    if pending or in_flight:
        with _cache_lock:
            _drop(pending or ())
            if in_flight:
                _commits_in_flight -= 1


def authorized_device_id(identity: Identity, udid: str, connection=None) -> int | None:
    """The id of the device with ``udid`` when this certificate is bound to it and not retired; None when
    anything else is true or unknown (then call ``authorize``, which decides and explains). Never writes:
    the read path of a check-in that changes nothing. Cached per certificate (see above). Reads through
    ``connection`` (a Core connection in a read transaction) when given, else the session."""
    entry = None if _commits_in_flight else _auth_cache.get(identity.sha256)
    if entry is not None and entry[2] > time.monotonic():
        return entry[0] if entry[1] == udid else None
    generation = _cache_generation
    row = (connection or db.session).execute(_BOUND_TO, {"sha256": identity.sha256}).one_or_none()
    if row is None or row.retired_at is not None:
        return None
    # Bound (only ever to a certificate our SCEP service issued: binding requires its record).
    _remember(identity.sha256, row.device_id, row.udid, generation)
    return row.device_id if row.udid == udid else None


def bind(identity: Identity, device: Device) -> DeviceCertificate:
    """Record that this certificate speaks for ``device`` (idempotent; in the current transaction)."""
    row = DeviceCertificate.query.filter_by(sha256=identity.sha256).one_or_none()
    if row is None:
        row = DeviceCertificate(device_id=device.id, sha256=identity.sha256, serial=identity.serial,
                                subject=identity.subject[:255],
                                not_after=identity.cert.not_valid_after_utc.replace(tzinfo=None))
        db.session.add(row)
        forget(identity.sha256)
        log.info("bound certificate %s to device %s", identity.sha256[:16], device.udid)
    return row


def bind_new_enrollment(identity: Identity, device: Device) -> list[str]:
    """Authenticate: bind this certificate and retire every other certificate of the device (they belong
    to its previous enrollment). Returns the fingerprints retired (in the current transaction)."""
    bind(identity, device)
    now = utcnow()
    retired = []
    for row in DeviceCertificate.query.filter(DeviceCertificate.device_id == device.id,
                                              DeviceCertificate.sha256 != identity.sha256,
                                              DeviceCertificate.retired_at.is_(None)):
        row.retired_at = now
        retired.append(row.sha256)
    if retired:
        forget(*retired)
    return retired


# --- the fast path: a strict DER walk of only what verification needs ------------------------------------
#
# Devices send the same shape every time: DER ContentInfo / SignedData, one SignerInfo identified by
# issuer and serial number, signed attributes, the identity certificate (sometimes its chain). Walking
# that with a few dozen byte slices costs a tenth of asn1crypto's object tree. Every TLV's length is
# checked against its parent (no trailing bytes, no overruns), constructed parts that are not
# interpreted are still walked to the end, certificates are parsed by ``cryptography`` (cached by
# their bytes). Anything else (BER indefinite lengths, an unknown algorithm, a subject key identifier,
# several signers, embedded content, a name that only matches after RFC 5280 comparison, ...) returns
# None and the asn1crypto path above decides, with its refusals and messages. The fast path therefore
# accepts a signature only when that path would too, and refuses with the same messages.

class _Unusual(Exception):
    """Not the common shape: let the general parser decide."""


def _oid(dotted: str) -> bytes:
    return core.ObjectIdentifier(dotted).contents


_OID_SIGNED_DATA = _oid("1.2.840.113549.1.7.2")
_OID_DATA = _oid("1.2.840.113549.1.7.1")
_OID_CONTENT_TYPE = _oid("1.2.840.113549.1.9.3")
_OID_MESSAGE_DIGEST = _oid("1.2.840.113549.1.9.4")
_DIGEST_OIDS = {_oid(dotted): name for dotted, name in algos.DigestAlgorithmId._map.items() if name in _DIGESTS}
_SIGNATURE_OIDS = {_oid(dotted): name for dotted, name in algos.SignedDigestAlgorithmId._map.items()}


def _tlv(buf: bytes, pos: int, end: int) -> tuple[int, int, int, int]:
    """(tag, start of the TLV, start of the contents, end of the contents) of the element at ``pos``."""
    if pos + 2 > end:
        raise _Unusual
    tag, length = buf[pos], buf[pos + 1]
    if tag & 0x1F == 0x1F:
        raise _Unusual                      # high tag numbers: not in this shape
    head = pos + 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or head + count > end:
            raise _Unusual                  # indefinite (BER) or absurd lengths
        length = int.from_bytes(buf[head:head + count], "big")
        head += count
    if head + length > end:
        raise _Unusual
    return tag, pos, head, head + length


def _children(buf: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    out = []
    while start < end:
        item = _tlv(buf, start, end)
        out.append(item)
        start = item[3]
    return out


def _walk(buf: bytes, start: int, end: int) -> None:
    """Check the framing of every element below a part that is not interpreted."""
    for tag, _, head, stop in _children(buf, start, end):
        if tag & 0x20:
            _walk(buf, head, stop)


def _expect(item, tag: int):
    if item[0] != tag:
        raise _Unusual
    return item


@dataclass
class _Signed:
    cert: x509.Certificate
    digest_name: str
    signature_algorithm: str
    signature: bytes
    signed_bytes: bytes | None        # the DER SET OF the signed attributes, None when there are none
    message_digests: list[bytes]
    content_types: list[bytes]


def _fast_signed(der: bytes) -> _Signed | None:
    try:
        return _fast_walk(der)
    except (_Unusual, ValueError):   # ValueError: a part with fewer or more elements than expected
        return None


def _fast_walk(der: bytes) -> _Signed:
    _, _, head, stop = _expect(_tlv(der, 0, len(der)), 0x30)
    if stop != len(der):
        raise _Unusual
    content_type, explicit = _children(der, head, stop)
    if (_expect(content_type, 0x06) and der[content_type[2]:content_type[3]] != _OID_SIGNED_DATA
            or explicit[0] != 0xA0):
        raise _Unusual
    (signed_data,) = _children(der, explicit[2], explicit[3])
    parts = _children(der, *_expect(signed_data, 0x30)[2:])
    if len(parts) < 4:
        raise _Unusual
    version, digest_algorithms, encap, *rest = parts
    _expect(version, 0x02)
    for algorithm in _children(der, *_expect(digest_algorithms, 0x31)[2:]):
        _walk(der, *_expect(algorithm, 0x30)[2:])
    encap_parts = _children(der, *_expect(encap, 0x30)[2:])
    if len(encap_parts) != 1 or encap_parts[0][0] != 0x06:
        raise _Unusual                       # embedded content: the general path refuses it
    certificates = []
    if rest and rest[0][0] == 0xA0:
        certificates = _children(der, rest[0][2], rest[0][3])
        rest = rest[1:]
    if rest and rest[0][0] == 0xA1:
        _walk(der, rest[0][2], rest[0][3])   # CRLs: not used, framing checked
        rest = rest[1:]
    if len(rest) != 1:
        raise _Unusual
    signer_infos = _children(der, *_expect(rest[0], 0x31)[2:])
    if len(signer_infos) != 1:
        raise _Unusual
    return _fast_signer(der, signer_infos[0], certificates)


def _fast_signer(der: bytes, signer_info, certificates) -> _Signed:
    fields = _children(der, *_expect(signer_info, 0x30)[2:])
    if len(fields) < 5:
        raise _Unusual
    version, sid, digest_algorithm, *fields = fields
    _expect(version, 0x02)
    issuer, serial = _children(der, *_expect(sid, 0x30)[2:])   # issuerAndSerialNumber only
    _walk(der, *_expect(issuer, 0x30)[2:])
    _expect(serial, 0x02)
    digest_name = _algorithm(der, digest_algorithm, _DIGEST_OIDS)
    signed_bytes, digests, content_types = None, [], []
    if fields[0][0] == 0xA0:
        attributes = fields.pop(0)
        for attribute in _children(der, attributes[2], attributes[3]):
            attr_type, values = _children(der, *_expect(attribute, 0x30)[2:])
            _expect(attr_type, 0x06)
            values = _children(der, *_expect(values, 0x31)[2:])
            if not values:
                raise _Unusual
            for value in values:
                if value[0] & 0x20:
                    _walk(der, value[2], value[3])
            oid = der[attr_type[2]:attr_type[3]]
            if oid == _OID_MESSAGE_DIGEST:
                digests.append(der[_expect(values[0], 0x04)[2]:values[0][3]])
            elif oid == _OID_CONTENT_TYPE:
                content_types.append(der[_expect(values[0], 0x06)[2]:values[0][3]])
        if attributes[3] > attributes[2]:
            signed_bytes = b"\x31" + der[attributes[1] + 1:attributes[3]]
    if len(fields) not in (2, 3):
        raise _Unusual
    signature_algorithm = _algorithm(der, fields[0], _SIGNATURE_OIDS)
    signature = der[_expect(fields[1], 0x04)[2]:fields[1][3]]
    if len(fields) == 3:
        _walk(der, *_expect(fields[2], 0xA1)[2:])   # unsigned attributes: not used, framing checked
    cert = _fast_signer_certificate(der, certificates, der[issuer[1]:issuer[3]], der[serial[2]:serial[3]])
    return _Signed(cert, digest_name, signature_algorithm, signature, signed_bytes, digests, content_types)


def _algorithm(der: bytes, item, names: dict[bytes, str]) -> str:
    parts = _children(der, *_expect(item, 0x30)[2:])
    if not parts or len(parts) > 2:
        raise _Unusual
    name = names.get(der[_expect(parts[0], 0x06)[2]:parts[0][3]])
    if name is None:
        raise _Unusual                      # the general path names the unsupported algorithm
    if len(parts) == 2 and parts[1][0] & 0x20:
        _walk(der, parts[1][2], parts[1][3])
    return name


def _fast_signer_certificate(der: bytes, certificates, issuer: bytes, serial: bytes) -> x509.Certificate:
    """The certificate whose issuer and serial are byte-equal to the signer identifier's; every
    certificate carried is parsed (by ``cryptography``, cached by its bytes)."""
    found = None
    for item in certificates:
        if item[0] != 0x30:
            raise _Unusual                  # other certificate formats
        cert_der = der[item[1]:item[3]]
        try:
            cert = _load_certificate(cert_der)
        except ValueError:
            raise _Unusual from None
        if found is None and _issuer_and_serial(cert_der) == (issuer, serial):
            found = cert
    if found is None:
        raise _Unusual
    return found


_names_cache: dict[bytes, tuple[bytes, bytes]] = {}


def _issuer_and_serial(cert_der: bytes) -> tuple[bytes, bytes]:
    """The issuer Name (whole TLV) and serialNumber contents of a certificate cryptography parsed."""
    known = _names_cache.get(cert_der)
    if known is None:
        tbs = _children(cert_der, *_tlv(cert_der, 0, len(cert_der))[2:])[0]
        fields = _children(cert_der, tbs[2], tbs[3])
        if fields[0][0] == 0xA0:
            fields = fields[1:]
        serial, _, issuer = fields[:3]
        known = (cert_der[issuer[1]:issuer[3]], cert_der[serial[2]:serial[3]])
        with _cache_lock:
            if len(_names_cache) >= _CERT_CACHE_SIZE:
                _names_cache.clear()
            _names_cache[cert_der] = known
    return known
