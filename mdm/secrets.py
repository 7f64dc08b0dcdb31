"""Secrets at rest: the instance's secrets key and the sealed (encrypted) private-key files.

Every private key the server holds (CA, TLS, profile signing, APNs push, a pending push CSR key) is
written as a *sealed* file: AES-256-GCM under the secrets key, wrapped in an ASCII armour that
deliberately does not contain the words "PRIVATE KEY", so a grep of a disk or a backup finds none.

Where the secrets key comes from, first match wins:

1. ``MDM_SECRETS_KEY``: the key itself (64 hex characters, e.g. ``openssl rand -hex 32``; any other
   string of at least 16 characters is treated as a passphrase and stretched with scrypt);
2. ``MDM_SECRETS_KEY_FILE``: a file holding that value (must exist);
3. ``<instance>/secrets.key``: generated (0600) on first run, when no sealed key exists yet.

A missing key (sealed files exist but no key is configured) or a wrong key (it does not open
``ca.key``) stops start-up with :class:`SecretsKeyError`, whose message says what to do.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from flask import current_app, has_app_context

from .extensions import db

KEY_FILE_NAME = "secrets.key"
ARMOUR_BEGIN = b"-----BEGIN MDM SEALED SECRET-----"
ARMOUR_END = b"-----END MDM SEALED SECRET-----"
_MAGIC = b"MDMS1"
_AAD = b"mdm sealed private key v1"
# Files in CERTS_DIR that hold private keys (the rest are certificates or locks).
KEY_FILE_PATTERN = re.compile(r".*\.key(\.pending)?$")


class SecretsKeyError(RuntimeError):
    """The secrets key is missing, malformed or does not open the sealed keys. The message says what to do."""


@dataclass(frozen=True)
class SecretBox:
    """The secrets key, ready to seal and open. ``source`` says where it came from (for messages)."""
    key: bytes
    source: str

    @property
    def key_id(self) -> bytes:
        # Stored in every sealed file so "wrong key" is told apart from "damaged file".
        return hashlib.sha256(b"mdm secrets key id" + self.key).digest()[:8]

    def seal(self, plaintext: bytes) -> bytes:
        nonce = os.urandom(12)
        blob = _MAGIC + self.key_id + nonce + AESGCM(self.key).encrypt(nonce, plaintext, _AAD)
        body = base64.encodebytes(blob)
        return ARMOUR_BEGIN + b"\n" + body + ARMOUR_END + b"\n"

    def open(self, sealed: bytes, *, what: str = "a sealed file") -> bytes:
        blob = _unarmour(sealed, what)
        key_id, nonce, ciphertext = blob[5:13], blob[13:25], blob[25:]
        if key_id != self.key_id:
            raise SecretsKeyError(
                f"the secrets key from {self.source} does not open {what}: it was sealed with another key. "
                "Start with the key this installation was set up with (MDM_SECRETS_KEY, MDM_SECRETS_KEY_FILE "
                "or instance/secrets.key; see docs/operations.md)")
        try:
            return AESGCM(self.key).decrypt(nonce, ciphertext, _AAD)
        except InvalidTag:
            raise SecretsKeyError(f"{what} is damaged (authentication failed); restore it from a backup") from None


def is_sealed(data: bytes) -> bool:
    return data.lstrip().startswith(ARMOUR_BEGIN)


def _unarmour(sealed: bytes, what: str) -> bytes:
    text = sealed.strip()
    if not (text.startswith(ARMOUR_BEGIN) and text.endswith(ARMOUR_END)):
        raise SecretsKeyError(f"{what} is not a sealed secret")
    try:
        blob = base64.b64decode(b"".join(text[len(ARMOUR_BEGIN):-len(ARMOUR_END)].split()), validate=True)
    except (binascii.Error, ValueError):
        raise SecretsKeyError(f"{what} is damaged (bad base64); restore it from a backup") from None
    if not blob.startswith(_MAGIC) or len(blob) < 25 + 16:
        raise SecretsKeyError(f"{what} is damaged (unknown format); restore it from a backup")
    return blob


# ---------------------------------------------------------------- the key


def parse_key(value: str, source: str) -> SecretBox:
    """64 hex characters or base64 of 32 bytes are the key itself; a longer passphrase is stretched."""
    value = value.strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", value):
        return SecretBox(bytes.fromhex(value), source)
    with contextlib.suppress(binascii.Error, ValueError):
        raw = base64.b64decode(value, validate=True)
        if len(raw) == 32:
            return SecretBox(raw, source)
    if len(value) < 16:
        raise SecretsKeyError(f"the secrets key from {source} is too short: give 64 hex characters "
                              "(`openssl rand -hex 32`) or a passphrase of at least 16 characters")
    stretched = hashlib.scrypt(value.encode(), salt=b"mdm secrets passphrase v1", n=2 ** 14, r=8, p=1, dklen=32)
    return SecretBox(stretched, source)


def sealed_key_files(certs_dir: Path) -> list[Path]:
    certs = Path(certs_dir)
    if not certs.is_dir():
        return []
    return sorted(p for p in certs.iterdir()
                  if KEY_FILE_PATTERN.match(p.name) and p.is_file() and is_sealed(p.read_bytes()))


def resolve_box(config, instance_path: str | Path, *, create: bool = True) -> SecretBox:
    """The secrets key for this configuration (see the module doc). Checks it against ``ca.key``."""
    certs = Path(config["CERTS_DIR"])
    value = os.environ.get("MDM_SECRETS_KEY") or config.get("SECRETS_KEY")
    key_file = os.environ.get("MDM_SECRETS_KEY_FILE") or config.get("SECRETS_KEY_FILE")
    default_file = Path(instance_path) / KEY_FILE_NAME
    if value:
        box = parse_key(str(value), "MDM_SECRETS_KEY")
    elif key_file:
        path = Path(key_file)
        if not path.is_file():
            raise SecretsKeyError(f"MDM_SECRETS_KEY_FILE names {path}, which does not exist")
        box = parse_key(path.read_text(), str(path))
    elif default_file.is_file():
        box = parse_key(default_file.read_text(), str(default_file))
    else:
        sealed = sealed_key_files(certs)
        if sealed:
            raise SecretsKeyError(
                f"the secrets key is missing: {sealed[0]} is encrypted, but neither MDM_SECRETS_KEY nor "
                f"MDM_SECRETS_KEY_FILE is set and {default_file} does not exist. Restore the key you kept "
                "(see docs/operations.md); without it the private keys cannot be opened")
        if not create:
            raise SecretsKeyError(f"no secrets key: set MDM_SECRETS_KEY or MDM_SECRETS_KEY_FILE, "
                                  f"or put the key in {default_file}")
        box = _generate_key_file(default_file)
    check_box(box, certs)
    return box


def check_box(box: SecretBox, certs_dir: Path) -> None:
    """Open ``ca.key`` (or any sealed key) now, so a wrong key stops start-up instead of a later request."""
    certs = Path(certs_dir)
    ca_key = certs / "ca.key"
    candidates = [ca_key] if ca_key.is_file() and is_sealed(ca_key.read_bytes()) else sealed_key_files(certs)[:1]
    for path in candidates:
        box.open(path.read_bytes(), what=str(path))


def _generate_key_file(path: Path) -> SecretBox:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race: use its key
        return parse_key(path.read_text(), str(path))
    with os.fdopen(fd, "w") as fh:
        fh.write(os.urandom(32).hex() + "\n")
    return parse_key(path.read_text(), str(path))


_lock = threading.Lock()


def get_box(app=None) -> SecretBox:
    """The app's secrets key, resolved (and checked) once."""
    app = app or current_app._get_current_object()
    box = app.extensions.get("mdm_secrets")
    if box is None:
        with _lock:
            box = app.extensions.get("mdm_secrets")
            if box is None:
                box = resolve_box(app.config, app.instance_path)
                app.extensions["mdm_secrets"] = box
    return box


def current_box() -> SecretBox | None:
    """The secrets key of the current app, or None outside an app context."""
    return get_box() if has_app_context() else None


# ---------------------------------------------------------------- files and TLS contexts


def write_secret_file(path: Path, data: bytes) -> None:
    """Atomically write ``data`` with mode 0600 (never readable by others, even for an instant)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def load_cert_chain(context, cert_path, key_pem: bytes) -> None:
    """``ssl.SSLContext.load_cert_chain`` with a key held in memory: OpenSSL reads it from a pipe,
    so the plaintext key never touches the disk."""
    read_fd, write_fd = os.pipe()
    try:
        # A PEM key (a few KB) fits in the pipe buffer (64 KB on Linux), so this never blocks.
        os.write(write_fd, key_pem)
        os.close(write_fd)
        write_fd = None
        context.load_cert_chain(str(cert_path), f"/dev/fd/{read_fd}")
    finally:
        os.close(read_fd)
        if write_fd is not None:
            os.close(write_fd)


# ---------------------------------------------------------------- device secrets in the database

_RAW_MAGIC = b"MDMS1"


def seal_raw(box: SecretBox, plaintext: bytes) -> bytes:
    """Binary form for database columns: magic, key id, nonce, AES-256-GCM ciphertext."""
    nonce = os.urandom(12)
    return _RAW_MAGIC + box.key_id + nonce + AESGCM(box.key).encrypt(nonce, plaintext, b"mdm sealed column v1")


def is_sealed_raw(value: bytes | None) -> bool:
    return bool(value) and bytes(value[:5]) == _RAW_MAGIC


def open_raw(box: SecretBox, value: bytes) -> bytes:
    value = bytes(value)
    if value[5:13] != box.key_id:
        raise SecretsKeyError(f"a sealed database value was sealed with another key than the one from {box.source}")
    try:
        return AESGCM(box.key).decrypt(value[13:25], value[25:], b"mdm sealed column v1")
    except InvalidTag:
        raise SecretsKeyError("a sealed database value is damaged (authentication failed)") from None


def _column_box() -> SecretBox:
    box = current_box()
    if box is None:
        raise SecretsKeyError("sealed database columns are only readable inside the application")
    return box


try:
    from sqlalchemy import LargeBinary
    from sqlalchemy.types import TypeDecorator
except ImportError:  # pragma: no cover  (SQLAlchemy is a dependency)
    TypeDecorator = object


class SealedBytes(TypeDecorator):
    """A LargeBinary column whose values are sealed with the secrets key (device UnlockToken and
    BootstrapToken). Rows written before sealing existed read back as they are and are sealed by
    ``seal_device_tokens`` at start-up. Same column type in the schema, so no migration is needed."""
    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        return seal_raw(_column_box(), bytes(value))

    def process_result_value(self, value, dialect):
        if value is None or not is_sealed_raw(value):
            return value
        return open_raw(_column_box(), value)


SEALED_DEVICE_COLUMNS = ("unlock_token", "bootstrap_token")


def seal_device_tokens(box: SecretBox) -> int:
    """Seal device tokens stored in the clear by an earlier release. Idempotent; returns rows changed."""
    changed = 0
    # Only the rows still in the clear (a cheap scan on later starts; substr works on BLOB and bytea).
    rows = db.session.execute(db.text(
        "SELECT id, unlock_token, bootstrap_token FROM devices "
        "WHERE (unlock_token IS NOT NULL AND substr(unlock_token, 1, 5) <> :magic) "
        "OR (bootstrap_token IS NOT NULL AND substr(bootstrap_token, 1, 5) <> :magic)"),
        {"magic": _RAW_MAGIC}).all()
    for row in rows:
        updates = {name: seal_raw(box, bytes(value)) for name, value in zip(SEALED_DEVICE_COLUMNS, row[1:])
                   if value is not None and not is_sealed_raw(value)}
        if updates:
            assignments = ", ".join(f"{name} = :{name}" for name in updates)
            db.session.execute(db.text(f"UPDATE devices SET {assignments} WHERE id = :id"), {**updates, "id": row[0]})
            changed += 1
    db.session.commit()
    return changed
