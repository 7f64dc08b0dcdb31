"""The MDM push identity: the APNs client certificate and key in ``CERTS_DIR`` (push.pem, push.key).

Until an Apple-issued MDM push certificate is installed, a clearly labelled *placeholder* identity signed
by our own CA stands in, so enrollment profiles have a topic and the simulator works out of the box.
Apple's servers refuse it; ``status()`` says so.

Renewal flow: ``generate_csr()`` writes a new key to push.key.pending (the installed identity keeps
working), the operator has the CSR signed (vendor signing + identity.apple.com), then
``install_certificate()`` takes the returned certificate and moves the pending key into place.
Private keys are written 0600, sealed with the instance's secrets key (``mdm.secrets``), and never logged.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
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

from .enroll.pki import (get_pki, issue_certificate, load_private_key, new_key, read_private_key_pem,
                        write_private_key)
from .extensions import db
from .models import Device, audit

KEY_FILE = "push.key"
CERT_FILE = "push.pem"
PENDING_KEY_FILE = "push.key.pending"
LOCK_FILE = "push.lock"
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
    return [f"Push topic: {info['topic']} (expires {info['not_after']:%Y-%m-%d}, {info['days_left']} days left)"]


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
    days_left = (identity.cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)).days
    return {
        "topic": identity.topic,
        "not_after": not_after,
        "days_left": days_left,
        "is_placeholder": identity.is_placeholder,
        "subject": identity.cert.subject.rfc4514_string(),
        "issuer": identity.cert.issuer.rfc4514_string(),
        "pending_csr": (_certs_dir() / PENDING_KEY_FILE).exists(),
    }


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
    from .secrets import load_cert_chain
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
    certs = _certs_dir()
    org = current_app.config["ORGANIZATION"]
    key = new_key()
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                                    x509.NameAttribute(NameOID.COMMON_NAME, "MDM push certificate request")]))
           .sign(key, hashes.SHA256()))
    with _locked(certs):
        write_private_key(certs / PENDING_KEY_FILE, key)
    audit("push_certificate.csr", actor=actor, object_type="push_certificate",
          detail="new push key and CSR generated (push.key.pending)")
    db.session.commit()
    return csr.public_bytes(serialization.Encoding.PEM)


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
    if allowed or before["is_placeholder"] or before["topic"] == new_topic:
        return
    enrolled = db.session.scalar(db.select(db.func.count(Device.id)).where(
        Device.enrollment_status == "enrolled", Device.topic == before["topic"]))
    if enrolled:
        raise PushCertError(
            f"this certificate's topic {new_topic} differs from the installed {before['topic']}, which "
            f"{enrolled} enrolled device(s) use; they would stop receiving pushes until re-enrolled. "
            "Renew the existing certificate at identity.apple.com (same topic), or allow the topic change")


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


def _same_public_key(a, b) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return a.public_bytes(*fmt) == b.public_bytes(*fmt)


def _is_self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


def _auditable(info: dict) -> dict:
    return {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in info.items()}
