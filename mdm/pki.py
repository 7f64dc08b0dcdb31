"""Our own PKI: organisation CA, TLS server certificate, profile-signing identity, device identities.

Created on first run in ``CERTS_DIR``; private keys are written with 0600 permissions, sealed with the
instance's secrets key (``mdm.secrets``) and never logged. Plaintext keys left by an earlier release are
sealed in place the first time the server starts with a secrets key.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from flask import current_app

from .secrets import (KEY_FILE_PATTERN, SecretBox, SecretsKeyError, current_box, get_box, is_sealed, load_cert_chain,
                       write_secret_file)

KEY_SIZE = 2048


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def private_key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_private_key(path: Path, key, box: SecretBox | None = None) -> None:
    """Write ``key`` 0600, sealed with ``box`` (the app's secrets key when in an app context).
    Plaintext only without any key at all (the test suite's shared PKI template)."""
    box = box or current_box()
    data = private_key_pem(key)
    write_secret_file(Path(path), box.seal(data) if box else data)


def write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def read_private_key_pem(path: Path, box: SecretBox | None = None) -> bytes:
    """The key in ``path`` as plaintext PEM, in memory only (opened with the secrets key if sealed)."""
    data = Path(path).read_bytes()
    if not is_sealed(data):
        return data
    box = box or current_box()
    if box is None:
        raise SecretsKeyError(f"{path} is sealed and no secrets key is available here")
    return box.open(data, what=str(path))


def load_private_key(path: Path, box: SecretBox | None = None):
    return serialization.load_pem_private_key(read_private_key_pem(path, box), password=None)


def seal_plaintext_keys(certs_dir: Path, box: SecretBox) -> list[str]:
    """Seal every plaintext private key in ``certs_dir`` (an install from before secrets at rest).
    Returns the file names sealed. Idempotent."""
    sealed = []
    for path in sorted(Path(certs_dir).iterdir()):
        if not (KEY_FILE_PATTERN.match(path.name) and path.is_file()):
            continue
        data = path.read_bytes()
        if is_sealed(data):
            continue
        key = serialization.load_pem_private_key(data, password=None)  # refuse to seal garbage
        write_secret_file(path, box.seal(private_key_pem(key)))
        sealed.append(path.name)
    return sealed


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def new_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)


def _name(common_name: str, org: str | None = None) -> x509.Name:
    attrs = []
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def create_ca(org: str):
    key = new_key()
    name = _name(f"{org} CA", org)
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_certificate(ca_key, ca_cert, public_key, subject: x509.Name, *, days: int,
                      eku: list, sans: list | None = None, key_encipherment: bool = True) -> x509.Certificate:
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(ca_cert.subject).public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=key_encipherment, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _san_entries(hostnames: list[str]) -> list:
    entries, seen = [], set()
    for host in hostnames:
        host = host.strip()
        if not host or host in seen:
            continue
        seen.add(host)
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return entries


def tls_hostnames(config) -> list[str]:
    names = [config["SERVER_HOSTNAME"], "localhost", "127.0.0.1"]
    names += [h for h in str(config.get("EXTRA_HOSTNAMES") or "").split(",") if h.strip()]
    return names


@dataclass
class PKI:
    """Loaded key material. Paths are kept so the TLS server can be pointed at the files."""
    certs_dir: Path
    ca_key: object
    ca_cert: x509.Certificate
    signing_key: object
    signing_cert: x509.Certificate
    box: SecretBox | None = None

    @property
    def ca_pem(self) -> bytes:
        return self.ca_cert.public_bytes(serialization.Encoding.PEM)

    @property
    def ca_der(self) -> bytes:
        return self.ca_cert.public_bytes(serialization.Encoding.DER)

    @property
    def tls_cert_path(self) -> Path:
        return self.certs_dir / "tls.pem"

    @property
    def tls_key_path(self) -> Path:
        return self.certs_dir / "tls.key"

    @property
    def ca_cert_path(self) -> Path:
        return self.certs_dir / "ca.pem"

    def tls_context(self):
        """The server's TLS context, its key opened in memory (the file on disk stays sealed)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        load_cert_chain(context, self.tls_cert_path, read_private_key_pem(self.tls_key_path, self.box))
        return context

    def issue_device_identity(self, public_key, subject: x509.Name, days: int) -> x509.Certificate:
        return issue_certificate(self.ca_key, self.ca_cert, public_key, subject, days=days,
                                 eku=[ExtendedKeyUsageOID.CLIENT_AUTH])


def ensure_pki(certs_dir: str | Path, hostnames: list[str], org: str, box: SecretBox | None = None) -> PKI:
    """Create whatever is missing (idempotent). The TLS certificate is re-issued when the host names change.

    With ``box`` every key is sealed (plaintext keys from an earlier release are sealed first); without
    it keys are plaintext, which only the test suite's shared template does."""
    certs = Path(certs_dir)
    certs.mkdir(parents=True, exist_ok=True)
    os.chmod(certs, 0o700)
    if box is not None:
        seal_plaintext_keys(certs, box)
    ca_key_path, ca_cert_path = certs / "ca.key", certs / "ca.pem"
    if not (ca_key_path.exists() and ca_cert_path.exists()):
        key, cert = create_ca(org)
        write_private_key(ca_key_path, key, box)
        write_cert(ca_cert_path, cert)
    ca_key, ca_cert = load_private_key(ca_key_path, box), load_cert(ca_cert_path)

    tls_key_path, tls_cert_path = certs / "tls.key", certs / "tls.pem"
    wanted = {str(e.value) for e in _san_entries(hostnames)}
    reissue = True
    if tls_key_path.exists() and tls_cert_path.exists():
        current = load_cert(tls_cert_path)
        san = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        have = {str(v.value) for v in san}
        reissue = (not wanted <= have or current.issuer != ca_cert.subject
                   or current.not_valid_after_utc < _now() + dt.timedelta(days=30))
    if reissue:
        key = new_key()
        cert = issue_certificate(ca_key, ca_cert, key.public_key(), _name(hostnames[0], org), days=825,
                                 eku=[ExtendedKeyUsageOID.SERVER_AUTH], sans=_san_entries(hostnames))
        write_private_key(tls_key_path, key, box)
        # Serve the chain so clients that only trust the CA still build the path.
        tls_cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) +
                                  ca_cert.public_bytes(serialization.Encoding.PEM))

    sign_key_path, sign_cert_path = certs / "signing.key", certs / "signing.pem"
    if not (sign_key_path.exists() and sign_cert_path.exists()) or load_cert(sign_cert_path).issuer != ca_cert.subject:
        key = new_key()
        cert = issue_certificate(ca_key, ca_cert, key.public_key(), _name(f"{org} Profile Signing", org),
                                 days=1825, eku=[ExtendedKeyUsageOID.CODE_SIGNING, ExtendedKeyUsageOID.EMAIL_PROTECTION],
                                 key_encipherment=False)
        write_private_key(sign_key_path, key, box)
        write_cert(sign_cert_path, cert)
    return PKI(certs, ca_key, ca_cert, load_private_key(sign_key_path, box), load_cert(sign_cert_path), box)


_lock = threading.Lock()


def get_pki(app=None) -> PKI:
    """The app's PKI, created on first use."""
    app = app or current_app._get_current_object()
    pki = app.extensions.get("mdm_pki")
    if pki is None:
        with _lock:
            pki = app.extensions.get("mdm_pki")
            if pki is None:
                pki = ensure_pki(app.config["CERTS_DIR"], tls_hostnames(app.config), app.config["ORGANIZATION"],
                                 get_box(app))
                app.extensions["mdm_pki"] = pki
    return pki
