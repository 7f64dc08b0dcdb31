"""Apple's MDM push-certificate request, and the two ways open-source MDMs get one signed. Pure: no
files, no database (``mdm.push.cert`` holds the keys and the audit trail).

Apple only issues an MDM push certificate (identity.apple.com) for a *push certificate request*
signed by an MDM vendor (Apple: "Setting up push notifications for your MDM customers", section
"Sign the CSR"). The request is base64 of an XML property list with three strings:

- ``PushCertRequestCSR``: base64 of the customer's CSR in DER;
- ``PushCertCertificateChain``: PEM certificates, the vendor's MDM CSR signing certificate first,
  then Apple's WWDR intermediate, then Apple's root;
- ``PushCertSignature``: base64 of the signature over the exact CSR DER bytes with the vendor
  certificate's private key (RSA PKCS#1 v1.5 with SHA-256, as micromdm's mdmcertutil does).

Route 1, own vendor certificate: :func:`load_vendor_identity` reads the vendor ``.p12`` (Apple's chain
from the ``.p12`` or from a separate PEM), :func:`build_push_request` signs.

Route 2, a CSR-signing service with the API of mdmcert.download (as micromdm's ``mdmctl
mdmcert.download`` calls it): ``POST <url>`` with JSON ``{"csr": base64(PEM CSR), "email": ...,
"key": <API key>, "encrypt": base64(PEM certificate)}``; the service answers ``{"result":
"success"}`` (or ``{"result": "failure", "reason": ...}``) and emails the signed request as CMS
EnvelopedData encrypted to the ``encrypt`` certificate, hex-encoded DER (a ``*.plist.b64.p7``
attachment). :func:`open_signing_service_reply` decrypts it (hex, base64, PEM or DER accepted).
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import os
import plistlib
import re
import subprocess
from dataclasses import dataclass

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from cryptography.x509.oid import NameOID

APPLE_PORTAL_URL = "https://identity.apple.com/pushcert/"
# Where Apple publishes the two certificates the chain needs (docs/push.md explains how to convert them).
APPLE_WWDR_URL = "https://www.apple.com/certificateauthority/AppleWWDRCAG3.cer"
APPLE_ROOT_URL = "https://www.apple.com/appleca/AppleIncRootCertificate.cer"
REQUEST_KEYS = ("PushCertRequestCSR", "PushCertCertificateChain", "PushCertSignature")
SIGNING_SERVICE_TIMEOUT_SECONDS = 30
ENCRYPTION_CERT_DAYS = 90   # long enough for the service's e-mail round trip
_HEX = re.compile(rb"[0-9a-fA-F\s]+")
_BASE64 = re.compile(rb"[A-Za-z0-9+/=\s]+")


class PushRequestError(ValueError):
    """A request could not be built, sent or opened; the message tells the operator what to do."""


@dataclass(frozen=True)
class VendorIdentity:
    """The MDM vendor's CSR signing key and certificate, and Apple's certificates above it."""
    key: rsa.RSAPrivateKey
    cert: x509.Certificate
    chain: tuple[x509.Certificate, ...]   # vendor certificate, WWDR intermediate, Apple root

    def chain_pem(self) -> str:
        return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in self.chain)


# ---------------------------------------------------------------- route 1: own vendor certificate


def load_vendor_identity(p12: bytes, password: str | bytes | None,
                         apple_chain_pem: bytes | None = None) -> VendorIdentity:
    """The vendor identity from its PKCS#12 export, with Apple's intermediate and root taken from the
    ``.p12`` or from ``apple_chain_pem``. Refuses a chain that does not link up to a self-signed root."""
    if isinstance(password, str):
        password = password.encode()
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(p12, password or None)
    except ValueError:
        raise PushRequestError("cannot open the vendor .p12 file: wrong password, or not a PKCS#12 file") from None
    if key is None or cert is None:
        raise PushRequestError("the vendor .p12 file must contain the MDM CSR signing certificate and its private key")
    if not isinstance(key, rsa.RSAPrivateKey):
        raise PushRequestError("the vendor key is not an RSA key; Apple's MDM CSR signing certificates use RSA")
    pool = list(extra or []) + _certificates_from_pem(apple_chain_pem)
    return VendorIdentity(key, cert, _chain_up_from(cert, pool))


def _certificates_from_pem(data: bytes | None) -> list[x509.Certificate]:
    if not data:
        return []
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        try:
            return [x509.load_der_x509_certificate(data)]
        except ValueError:
            raise PushRequestError("the Apple chain file holds no PEM or DER certificate") from None


def _chain_up_from(leaf: x509.Certificate, pool: list[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    chain = [leaf]
    while chain[-1].issuer != chain[-1].subject and len(chain) < 5:
        issuer = next((c for c in pool if c.subject == chain[-1].issuer and _issued(chain[-1], c)), None)
        if issuer is None:
            raise PushRequestError(
                f"Apple's certificate {chain[-1].issuer.rfc4514_string()!r} (issuer of "
                f"{chain[-1].subject.rfc4514_string()!r}) is missing: the .p12 does not carry Apple's WWDR "
                f"intermediate and root. Download {APPLE_WWDR_URL} and {APPLE_ROOT_URL}, convert them to PEM "
                "(openssl x509 -inform DER) and give them as the Apple chain file (--apple-chain)")
        chain.append(issuer)
    if len(chain) < 3:
        raise PushRequestError("the vendor certificate must be issued by Apple's WWDR intermediate, which is "
                               "issued by Apple's root; this chain has only "
                               f"{len(chain)} certificate(s). Is this the MDM CSR signing certificate?")
    return tuple(chain)


def _issued(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def build_push_request(csr_der: bytes, vendor: VendorIdentity) -> bytes:
    """Apple's push certificate request for this CSR: base64 of the XML plist (the file to upload)."""
    signature = vendor.key.sign(csr_der, padding.PKCS1v15(), hashes.SHA256())
    plist = plistlib.dumps({
        "PushCertRequestCSR": base64.b64encode(csr_der).decode(),
        "PushCertCertificateChain": vendor.chain_pem(),
        "PushCertSignature": base64.b64encode(signature).decode(),
    }, fmt=plistlib.FMT_XML)
    return base64.b64encode(plist)


@dataclass(frozen=True)
class PushRequest:
    """A parsed push certificate request."""
    csr: x509.CertificateSigningRequest
    chain: tuple[x509.Certificate, ...]
    signature: bytes


def parse_push_request(data: bytes) -> PushRequest:
    """Read a push certificate request (base64 of the plist, or the plist itself) and check that its
    signature verifies with the first certificate of its chain over the exact CSR bytes."""
    text = data.strip()
    if not text.startswith(b"<"):
        try:
            text = base64.b64decode(text, validate=False)
        except (binascii.Error, ValueError):
            raise PushRequestError("not a push certificate request (neither base64 nor a property list)") from None
    try:
        plist = plistlib.loads(text)
    except Exception:
        raise PushRequestError("not a push certificate request (no property list inside)") from None
    if not isinstance(plist, dict) or any(not isinstance(plist.get(k), str) for k in REQUEST_KEYS):
        raise PushRequestError(f"not a push certificate request: it must hold {', '.join(REQUEST_KEYS)}")
    try:
        csr_der = base64.b64decode(plist["PushCertRequestCSR"])
        csr = x509.load_der_x509_csr(csr_der)
        chain = tuple(x509.load_pem_x509_certificates(plist["PushCertCertificateChain"].encode()))
        signature = base64.b64decode(plist["PushCertSignature"])
    except (binascii.Error, ValueError):
        raise PushRequestError("the push certificate request is damaged (CSR, chain or signature unreadable)") from None
    try:
        chain[0].public_key().verify(signature, csr_der, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, TypeError, AttributeError):
        raise PushRequestError("the push certificate request's signature does not verify with its vendor "
                               "certificate: Apple would refuse it") from None
    return PushRequest(csr, chain, signature)


# ---------------------------------------------------------------- route 2: a CSR-signing service


def encryption_certificate(key: rsa.RSAPrivateKey, common_name: str) -> x509.Certificate:
    """A self-signed certificate the signing service encrypts its e-mailed reply to."""
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=ENCRYPTION_CERT_DAYS))
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=True,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))


def signing_service_body(*, email: str, api_key: str, csr_pem: bytes, encrypt_cert_pem: bytes) -> dict:
    return {"csr": base64.b64encode(csr_pem).decode(), "email": email, "key": api_key,
            "encrypt": base64.b64encode(encrypt_cert_pem).decode()}


def submit_to_signing_service(url: str, body: dict, *, user_agent: str,
                              timeout_seconds: float = SIGNING_SERVICE_TIMEOUT_SECONDS, verify=True) -> None:
    """POST the request; returns when the service said ``success``, raises PushRequestError otherwise."""
    try:
        response = httpx.post(url, json=body, timeout=timeout_seconds, verify=verify,
                              headers={"User-Agent": user_agent})
    except httpx.HTTPError as exc:
        raise PushRequestError(f"cannot reach the signing service at {url}: {type(exc).__name__}: {exc}") from None
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    if not isinstance(answer, dict):
        answer = {}
    if response.status_code == 200 and answer.get("result") == "success":
        return
    reason = answer.get("reason") or answer.get("result") or response.reason_phrase or "no reason given"
    raise PushRequestError(f"the signing service refused the request (HTTP {response.status_code}): {reason}. "
                           "Check its URL, your API key and that the e-mail address is registered with it")


def open_signing_service_reply(data: bytes, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> bytes:
    """Decrypt the service's e-mailed reply; returns the push certificate request (base64 of the plist)."""
    der = _envelope_der(data)
    try:
        content = pkcs7.pkcs7_decrypt_der(der, cert, key, [])
    except UnsupportedAlgorithm:
        content = _openssl_decrypt(der, cert, key)   # DES / 3DES content encryption: OpenSSL does those
    except ValueError as exc:
        raise PushRequestError(_decrypt_failure(str(exc))) from None
    content = content.strip()
    if content.startswith(b"<"):   # a service that sends the plist itself: Apple wants it in base64
        content = base64.b64encode(content)
    parse_push_request(content)
    return b"".join(content.split())


def _decrypt_failure(detail: str) -> str:
    return ("cannot decrypt the signing service's reply with the pending push key: it was encrypted for "
            "another request (a newer request replaces the pending key; submit again and use the newest "
            f"e-mail) ({detail})")


def _envelope_der(data: bytes) -> bytes:
    text = data.strip()
    if not text:
        raise PushRequestError("the file is empty")
    if text.startswith(b"-----BEGIN"):
        body = b"".join(line for line in text.splitlines() if not line.startswith(b"-----"))
        return base64.b64decode(body)
    if _HEX.fullmatch(text) and len(b"".join(text.split())) % 2 == 0:
        return bytes.fromhex(b"".join(text.split()).decode())
    if _BASE64.fullmatch(text):
        try:
            return base64.b64decode(b"".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            pass
    if text[:1] == b"\x30":
        return data
    raise PushRequestError("not the signing service's reply: expected the hex (or base64) encoded PKCS#7 "
                           "file attached to its e-mail (…plist.b64.p7)")


def _openssl_decrypt(der: bytes, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> bytes:
    """``openssl cms -decrypt`` with certificate and key handed over through pipes (never on disk)."""
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    last_error = ""
    for providers in (["-provider", "default", "-provider", "legacy"], []):
        fds = [_pipe_with(cert_pem), _pipe_with(key_pem)]
        try:
            result = subprocess.run(
                ["openssl", "cms", "-decrypt", "-binary", "-inform", "DER", "-recip", f"/dev/fd/{fds[0]}",
                 "-inkey", f"/dev/fd/{fds[1]}", *providers], input=der, capture_output=True, pass_fds=fds,
                timeout=60, check=False)
        except FileNotFoundError:
            raise PushRequestError("this reply uses DES/3DES encryption, which needs the `openssl` command; "
                                   "install it (apt-get install openssl)") from None
        finally:
            for fd in fds:
                os.close(fd)
        if result.returncode == 0:
            return result.stdout
        last_error = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        last_error = last_error[0]
    raise PushRequestError(_decrypt_failure(f"openssl: {last_error}"))


def _pipe_with(data: bytes) -> int:
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, data)   # a PEM certificate or key fits the pipe buffer (64 KB on Linux)
    finally:
        os.close(write_fd)
    return read_fd
