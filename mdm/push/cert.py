"""The MDM push identity: the APNs client certificate and key in ``CERTS_DIR`` (push.pem, push.key).

Until an Apple-issued MDM push certificate is installed, a clearly labelled *placeholder* identity signed
by our own CA stands in, so enrollment profiles have a topic and the simulator works out of the box.
Apple's servers refuse it; ``status()`` says so.

Getting (or renewing) the certificate, in four steps (docs/push.md; the request format is in
``mdm.push.cert_request``):

1. a route: the shop's own MDM vendor certificate, or a CSR-signing service (mdmcert.download's API);
2. the request: ``create_vendor_request()`` (vendor .p12 → Apple's push certificate request), or
   ``submit_to_signing_service()`` then ``open_signing_service_reply()`` (the e-mailed, encrypted reply);
   each writes a new key to push.key.pending (the installed identity keeps working) and keeps the
   request (no secret) in push.request.b64 for download; ``generate_csr()`` gives a bare CSR instead;
3. the operator uploads the request at identity.apple.com;
4. ``install_certificate()`` takes the returned certificate and moves the pending key into place. A
   certificate with another topic than the installed Apple one is refused unless explicitly allowed:
   devices keep the topic they enrolled with, so a renewal must keep it.

What step the operator is at is kept in push.pending.json (no secret). Private keys are written 0600,
sealed with the instance's secrets key (``mdm.secrets``), and never logged. Every change is audited.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from flask import current_app

from ..pki import (get_pki, issue_certificate, load_private_key, new_key, read_private_key_pem,
                         write_private_key)
from . import cert_request as push_request
from ..extensions import db
from ..models import Device, audit
from .cert_request import PushRequestError
from ..secrets import load_cert_chain

KEY_FILE = "push.key"
CERT_FILE = "push.pem"
PENDING_KEY_FILE = "push.key.pending"
LOCK_FILE = "push.lock"
PENDING_STATE_FILE = "push.pending.json"     # which route and step the pending key is at (no secret)
REQUEST_FILE = "push.request.b64"            # the latest request to upload to Apple (no secret)
ENCRYPT_CERT_FILE = "push.encrypt.pem"       # the certificate the signing service encrypts its reply to
RENEW_WARNING_DAYS = 30                      # the dashboard and Settings warn from this many days before expiry
ROUTE_VENDOR, ROUTE_SERVICE, ROUTE_CSR = "vendor", "service", "csr"
# An MDM push certificate's subject carries the topic as UID (OID 0.9.2342.19200300.100.1.1).
TOPIC_PREFIX = "com.apple.mgmt."
PLACEHOLDER_LABEL = "Placeholder push identity (not from Apple)"

log = logging.getLogger(__name__)


class PushCertError(ValueError):
    """A push certificate operation refused; the message tells the operator what to do."""


@dataclass(frozen=True)
class PushIdentity:
    cert: x509.Certificate
    cert_path: Path
    key_path: Path
    topic: str
    is_placeholder: bool


# ---------------------------------------------------------------- set-up


def init_app(app) -> None:
    """Register the first-run hook that makes sure a push identity exists (placeholder if need be)."""
    hooks = app.extensions.setdefault("mdm_init_hooks", [])
    if _init_hook not in hooks:
        hooks.append(_init_hook)


def _init_hook() -> list[str]:
    info = status()
    if info["is_placeholder"]:
        return [f"Push topic: {info['topic']} (PLACEHOLDER identity: pushes to Apple will not work; "
                "see `flask mdm push csr`)"]
    renew = "; renew it now (Settings → Push certificate)" if info["renew_soon"] else ""
    return [f"Push topic: {info['topic']} (expires {info['not_after']:%Y-%m-%d}, {info['days_left']} days left{renew})"]


# ---------------------------------------------------------------- reading


def current_topic() -> str:
    """The APNs topic (UID of the push certificate subject) that enrollment profiles must carry."""
    return current_identity().topic


def current_identity() -> PushIdentity:
    """The installed push identity, creating the placeholder on first use."""
    certs = _certs_dir()
    cert_path = certs / CERT_FILE
    if not (cert_path.exists() and (certs / KEY_FILE).exists()):
        with _locked(certs):
            if not (cert_path.exists() and (certs / KEY_FILE).exists()):
                _create_placeholder(certs)
    return _load_identity(certs)


def status() -> dict:
    """What the operator needs to know: topic, expiry, whether pushes to Apple can work at all."""
    identity = current_identity()
    not_after = identity.cert.not_valid_after_utc.replace(tzinfo=None)
    remaining = identity.cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)
    days_left = remaining.days
    return {
        "topic": identity.topic,
        "not_after": not_after,
        "days_left": days_left,
        "is_placeholder": identity.is_placeholder,
        "subject": identity.cert.subject.rfc4514_string(),
        "issuer": identity.cert.issuer.rfc4514_string(),
        "pending_csr": (_certs_dir() / PENDING_KEY_FILE).exists(),
        "renew_soon": remaining <= dt.timedelta(days=RENEW_WARNING_DAYS),
        "pending": pending_state(),
    }


def pending_state() -> dict | None:
    """Where a certificate request stands: route, created_at, email, request_ready (a request to upload
    to Apple is kept in push.request.b64). None when no pending key waits for its certificate."""
    certs = _certs_dir()
    if not (certs / PENDING_KEY_FILE).exists():
        return None
    try:
        state = json.loads((certs / PENDING_STATE_FILE).read_text())
    except (OSError, ValueError):
        state = {"route": ROUTE_CSR}
    state["request_ready"] = (certs / REQUEST_FILE).exists()
    return state


def pending_request() -> bytes | None:
    """The request made for the pending key (base64 plist), to download again."""
    certs = _certs_dir()
    if not (certs / PENDING_KEY_FILE).exists() or not (certs / REQUEST_FILE).exists():
        return None
    return (certs / REQUEST_FILE).read_bytes()


def signing_service_settings() -> dict:
    """The CSR-signing service the shop configured (PUSH_SIGNING_SERVICE_URL / _API_KEY / _EMAIL)."""
    config = current_app.config
    return {"url": (config.get("PUSH_SIGNING_SERVICE_URL") or "").strip(),
            "api_key_set": bool(config.get("PUSH_SIGNING_SERVICE_API_KEY")),
            "email": (config.get("PUSH_SIGNING_SERVICE_EMAIL") or "").strip()}


def topic_of(cert: x509.Certificate) -> str | None:
    values = cert.subject.get_attributes_for_oid(NameOID.USER_ID)
    return str(values[0].value) if values else None


_cache_lock = threading.Lock()
_cache: dict = {}


def _load_identity(certs: Path) -> PushIdentity:
    """Parsed from disk, cached until push.pem or push.key changes (another process may install one)."""
    cert_path, key_path = certs / CERT_FILE, certs / KEY_FILE
    stamp = (str(certs), _file_stamp(cert_path), _file_stamp(key_path))
    with _cache_lock:
        cached = _cache.get(str(certs))
        if cached and cached[0] == stamp:
            return cached[1]
    cert = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    topic = topic_of(cert)
    if not topic:
        raise PushCertError(f"{cert_path} has no UID (topic) in its subject; install a push certificate")
    identity = PushIdentity(cert, cert_path, key_path, topic, _signed_by_our_ca(cert))
    with _cache_lock:
        _cache[str(certs)] = (stamp, identity)
    return identity


def load_client_identity(context) -> None:
    """Load the push certificate and key into an ``ssl.SSLContext`` as its TLS client identity,
    never half-way through an install (which writes the two files under the same lock)."""
    identity = current_identity()
    with _locked(_certs_dir()):
        # The key file is sealed: it is opened in memory and handed to OpenSSL through a pipe.
        load_cert_chain(context, identity.cert_path, read_private_key_pem(identity.key_path))


def identity_stamp() -> tuple:
    """Changes whenever the installed push identity changes (the APNs client is rebuilt on change)."""
    certs = _certs_dir()
    return (str(certs), _file_stamp(certs / CERT_FILE), _file_stamp(certs / KEY_FILE))


def _file_stamp(path: Path):
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _signed_by_our_ca(cert: x509.Certificate) -> bool:
    # Anything our own CA signed cannot be an Apple push certificate, so it is a placeholder.
    ca = get_pki().ca_cert
    if cert.issuer != ca.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# ---------------------------------------------------------------- placeholder


def _create_placeholder(certs: Path) -> None:
    pki = get_pki()
    org = current_app.config["ORGANIZATION"]
    topic = f"com.apple.mgmt.External.{uuid.uuid4()}"
    key = new_key()
    subject = x509.Name([
        x509.NameAttribute(NameOID.USER_ID, topic),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
        x509.NameAttribute(NameOID.COMMON_NAME, PLACEHOLDER_LABEL),
    ])
    cert = issue_certificate(pki.ca_key, pki.ca_cert, key.public_key(), subject, days=825,
                             eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    write_private_key(certs / KEY_FILE, key)
    _write_pem(certs / CERT_FILE, [cert])
    # Logged, not audited: this can run inside a device's request and must not commit its transaction.
    log.warning("no push certificate installed: created a placeholder identity with topic %s "
                "(pushes to Apple will not work until an Apple push certificate is installed)", topic)


# ---------------------------------------------------------------- CSR and install


def generate_csr(*, actor: str = "system") -> bytes:
    """A new key (push.key.pending, 0600) and its CSR in PEM. The installed identity stays in use."""
    key, csr = _new_key_and_csr()
    _start_pending(key, {"route": ROUTE_CSR})
    audit("push_certificate.csr", actor=actor, object_type="push_certificate",
          detail="new push key and CSR generated (push.key.pending)")
    db.session.commit()
    return csr.public_bytes(serialization.Encoding.PEM)


def create_vendor_request(vendor_p12: bytes, vendor_password: str | bytes | None,
                          apple_chain_pem: bytes | None = None, *, actor: str = "system") -> bytes:
    """Route 1: a new pending key, its CSR signed with the shop's own MDM vendor certificate; returns
    Apple's push certificate request (base64 of the plist) to upload at identity.apple.com."""
    with _as_push_cert_error():
        vendor = push_request.load_vendor_identity(vendor_p12, vendor_password, apple_chain_pem)
    if vendor.cert.not_valid_after_utc <= dt.datetime.now(dt.timezone.utc):
        raise PushCertError(f"the vendor certificate expired on {vendor.cert.not_valid_after_utc:%Y-%m-%d}; "
                            "renew it in your Apple Developer account")
    key, csr = _new_key_and_csr()
    request_b64 = push_request.build_push_request(csr.public_bytes(serialization.Encoding.DER), vendor)
    _start_pending(key, {"route": ROUTE_VENDOR, "vendor": vendor.cert.subject.rfc4514_string()},
                   request_b64=request_b64)
    audit("push_certificate.request", actor=actor, object_type="push_certificate",
          detail=f"new push key; request signed with the vendor certificate {vendor.cert.subject.rfc4514_string()}")
    db.session.commit()
    return request_b64


def submit_to_signing_service(email: str | None = None, *, actor: str = "system") -> dict:
    """Route 2, first half: a new pending key, its CSR and an encryption certificate sent to the
    configured signing service, which e-mails the signed request back. Returns what was sent where."""
    settings = signing_service_settings()
    email = (email or settings["email"]).strip()
    if not settings["url"] or not settings["api_key_set"]:
        raise PushCertError("no CSR-signing service configured: set PUSH_SIGNING_SERVICE_URL and "
                            "PUSH_SIGNING_SERVICE_API_KEY (instance/config.py or MDM_ environment variables)")
    if "@" not in email:
        raise PushCertError("give the e-mail address you registered with the signing service; its reply goes there")
    key, csr = _new_key_and_csr(email)
    encrypt_cert = push_request.encryption_certificate(key, f"{current_app.config['ORGANIZATION']} push request")
    pem = serialization.Encoding.PEM
    body = push_request.signing_service_body(email=email, api_key=str(current_app.config["PUSH_SIGNING_SERVICE_API_KEY"]),
                                             csr_pem=csr.public_bytes(pem), encrypt_cert_pem=encrypt_cert.public_bytes(pem))
    with _as_push_cert_error():
        push_request.submit_to_signing_service(settings["url"], body, user_agent="self-hosted-mdm/pushcert",
                                               verify=_service_verify())
    # Kept only once the service accepted: a refused submission leaves an earlier pending request usable.
    _start_pending(key, {"route": ROUTE_SERVICE, "email": email, "service_url": settings["url"]},
                   encrypt_cert=encrypt_cert)
    audit("push_certificate.request", actor=actor, object_type="push_certificate",
          detail=f"new push key; CSR sent to the signing service {settings['url']} (reply e-mailed to {email})")
    db.session.commit()
    return {"url": settings["url"], "email": email}


def open_signing_service_reply(data: bytes, *, actor: str = "system") -> bytes:
    """Route 2, second half: decrypt the service's e-mailed reply with the pending key; returns the
    request to upload to Apple (also kept for download). Its CSR must be the pending key's."""
    certs = _certs_dir()
    state = pending_state()
    if state is None or not (certs / ENCRYPT_CERT_FILE).exists():
        raise PushCertError("no request is waiting for a signing service's reply: send one first "
                            "(Settings → Push certificate, or `flask mdm push submit`)")
    key = load_private_key(certs / PENDING_KEY_FILE)
    encrypt_cert = x509.load_pem_x509_certificate((certs / ENCRYPT_CERT_FILE).read_bytes())
    with _as_push_cert_error():
        request_b64 = push_request.open_signing_service_reply(data, encrypt_cert, key)
        parsed = push_request.parse_push_request(request_b64)
    if not _same_public_key(parsed.csr.public_key(), key.public_key()):
        raise PushCertError("the decrypted request is for another CSR than the pending one; use the e-mail "
                            "answering your latest request")
    with _locked(certs):
        _write_atomic(certs / REQUEST_FILE, request_b64 + b"\n")
    audit("push_certificate.request_decrypted", actor=actor, object_type="push_certificate",
          detail=f"signing service reply decrypted; request signed by {parsed.chain[0].subject.rfc4514_string()}")
    db.session.commit()
    return request_b64


def _new_key_and_csr(email: str | None = None):
    org = current_app.config["ORGANIZATION"]
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                  x509.NameAttribute(NameOID.COMMON_NAME, "MDM push certificate request")]
    if email:
        attributes.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, email))
    key = new_key()
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes)).sign(key, hashes.SHA256())
    return key, csr


def _start_pending(key, state: dict, *, request_b64: bytes | None = None, encrypt_cert=None) -> None:
    """Replace the pending key and everything that belonged to the previous one."""
    certs = _certs_dir()
    state = {**state, "created_at": dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds")}
    with _locked(certs):
        _clear_pending_files(certs)
        write_private_key(certs / PENDING_KEY_FILE, key)
        _write_atomic(certs / PENDING_STATE_FILE, json.dumps(state).encode())
        if request_b64 is not None:
            _write_atomic(certs / REQUEST_FILE, request_b64 + b"\n")
        if encrypt_cert is not None:
            _write_pem(certs / ENCRYPT_CERT_FILE, [encrypt_cert])


def _clear_pending_files(certs: Path) -> None:
    for name in (PENDING_STATE_FILE, REQUEST_FILE, ENCRYPT_CERT_FILE):
        (certs / name).unlink(missing_ok=True)


def _service_verify():
    # A private test stand-in or an in-house service may use its own CA (like APNS_CA_FILE for APNs).
    return current_app.config.get("PUSH_SIGNING_SERVICE_CA_FILE") or True


@contextlib.contextmanager
def _as_push_cert_error():
    try:
        yield
    except PushRequestError as exc:
        raise PushCertError(str(exc)) from None


def install_certificate(data: bytes, password: str | bytes | None = None, *,
                        allow_topic_change: bool = False, actor: str = "system") -> dict:
    """Install an MDM push certificate from PEM, DER or PKCS#12 bytes. Returns the new ``status()``.

    With a private key inside (PKCS#12, or PEM with a key) that key replaces ours. A bare certificate
    must match the pending CSR key or the installed key. Raises PushCertError with the reason.
    Commits the audit event: the files have changed whatever the caller does next.
    """
    certs = _certs_dir()
    cert_list, key = _parse_bundle(data, password)
    leaf = _pick_leaf(cert_list, key)
    topic = topic_of(leaf)
    if not topic or not topic.startswith(TOPIC_PREFIX):
        raise PushCertError("not an MDM push certificate: its subject has no UID starting with "
                            f"{TOPIC_PREFIX!r} (found {leaf.subject.rfc4514_string()!r})")
    if leaf.not_valid_after_utc <= dt.datetime.now(dt.timezone.utc):
        raise PushCertError(f"this certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d}; "
                            "renew it at identity.apple.com")

    with _locked(certs):
        before = status()
        used_pending = False
        if key is None:
            key, used_pending = _matching_held_key(certs, leaf)
        _refuse_topic_change(before, topic, allow_topic_change)
        chain = [leaf] + [c for c in cert_list if c != leaf and not _is_self_signed(c)]
        write_private_key(certs / KEY_FILE, key)
        _write_pem(certs / CERT_FILE, chain)
        if used_pending:
            (certs / PENDING_KEY_FILE).unlink()
            _clear_pending_files(certs)
        after = status()
    audit("push_certificate.install", actor=actor, object_type="push_certificate", object_id=topic,
          before=_auditable(before), after=_auditable(after),
          detail="installed with its own private key" if not used_pending else "installed for the pending CSR key")
    db.session.commit()
    return after


def _parse_bundle(data: bytes, password) -> tuple[list[x509.Certificate], object | None]:
    if isinstance(password, str):
        password = password.encode()
    if not data or not data.strip():
        raise PushCertError("the file is empty")
    if b"-----BEGIN" in data:
        try:
            cert_list = x509.load_pem_x509_certificates(data)
        except ValueError:
            raise PushCertError("the PEM file contains no certificate") from None
        key = None
        if b"PRIVATE KEY-----" in data:
            try:
                key = serialization.load_pem_private_key(data, password=password or None)
            except TypeError:
                raise PushCertError("the private key in the PEM file is encrypted: give its password") from None
            except ValueError:
                raise PushCertError("cannot read the private key in the PEM file (wrong password?)") from None
        return cert_list, key
    try:
        return [x509.load_der_x509_certificate(data)], None
    except ValueError:
        pass
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, password or None)
    except ValueError:
        raise PushCertError("not a PEM or DER certificate, and not a PKCS#12 file this password opens "
                            "(wrong or missing --password?)") from None
    if cert is None:
        raise PushCertError("the PKCS#12 file contains no certificate")
    return [cert] + list(extra or []), key


def _pick_leaf(cert_list: list[x509.Certificate], key) -> x509.Certificate:
    if key is not None:
        for cert in cert_list:
            if _same_public_key(cert.public_key(), key.public_key()):
                return cert
        raise PushCertError("the private key in the file does not belong to any certificate in it")
    for cert in cert_list:
        topic = topic_of(cert)
        if topic and topic.startswith(TOPIC_PREFIX):
            return cert
    return cert_list[0]


def _matching_held_key(certs: Path, cert: x509.Certificate):
    """The key we hold for this certificate: the pending CSR key first, then the installed one."""
    for name, is_pending in ((PENDING_KEY_FILE, True), (KEY_FILE, False)):
        path = certs / name
        if path.exists():
            key = load_private_key(path)
            if _same_public_key(cert.public_key(), key.public_key()):
                return key, is_pending
    raise PushCertError("this certificate's public key matches none of our keys (neither the pending CSR "
                        "key nor the installed push key): it was issued for a CSR made elsewhere. Install "
                        "it as a PKCS#12 file with its private key, or make a new CSR with `flask mdm push csr`")


def _refuse_topic_change(before: dict, new_topic: str, allowed: bool) -> None:
    # Devices keep the topic they enrolled with: a new topic cuts every enrolled device off from pushes.
    # Only the placeholder (which Apple never knew) may be replaced by any topic without asking.
    if allowed or before["is_placeholder"] or before["topic"] == new_topic:
        return
    enrolled = db.session.scalar(db.select(db.func.count(Device.id)).where(
        Device.enrollment_status == "enrolled", Device.topic == before["topic"]))
    raise PushCertError(
        f"this certificate's topic {new_topic} differs from the installed {before['topic']}, which "
        f"{enrolled} enrolled device(s) use; they would stop receiving pushes until re-enrolled. "
        "Renew the existing certificate at identity.apple.com with the same Apple Account (Renew keeps the "
        "topic), or allow the topic change explicitly if every device will be re-enrolled")


# ---------------------------------------------------------------- helpers


def _certs_dir() -> Path:
    certs = Path(current_app.config["CERTS_DIR"])
    certs.mkdir(parents=True, exist_ok=True)
    return certs


@contextlib.contextmanager
def _locked(certs: Path):
    """One writer at a time across threads and processes (server, CLI), so both files always agree.
    Re-entrant within a thread (flock on a second descriptor would wait for ourselves)."""
    with _thread_lock:
        if getattr(_held, "depth", 0):
            _held.depth += 1
            try:
                yield
            finally:
                _held.depth -= 1
            return
        fd = os.open(certs / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _held.depth = 1
            yield
        finally:
            _held.depth = 0
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


_thread_lock = threading.RLock()
_held = threading.local()


def _write_pem(path: Path, cert_list: list[x509.Certificate]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in cert_list))
    os.replace(tmp, path)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _same_public_key(a, b) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return a.public_bytes(*fmt) == b.public_bytes(*fmt)


def _is_self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


def _auditable(info: dict) -> dict:
    return {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in info.items()}
