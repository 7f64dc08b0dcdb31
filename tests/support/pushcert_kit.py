"""Test kit for the push certificate routes (no tests here): an "Apple" root and WWDR intermediate,
an MDM vendor identity under them, Apple's push CA issuing the final certificate, and a local
stand-in for the CSR-signing service (mdmcert.download's API) that signs with its own vendor
identity using the `openssl` command and "e-mails" the encrypted reply into an outbox."""
from __future__ import annotations

import base64
import datetime as dt
import json
import plistlib
import subprocess
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mdm.pki import issue_certificate, new_key

SERVICE_PATH = "/api/v1/signrequest"


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass
class AppleChain:
    root_key: object
    root: x509.Certificate
    wwdr_key: object
    wwdr: x509.Certificate

    def pem(self) -> bytes:
        return pem(self.wwdr) + pem(self.root)


def make_apple_chain() -> AppleChain:
    """A test "Apple Root CA" and "Apple WWDR" intermediate (a CA itself)."""
    root_key, wwdr_key = new_key(), new_key()
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Apple Root CA"),
                           x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Apple Inc.")])
    wwdr_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Apple Worldwide Developer Relations CA"),
                           x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Apple Inc.")])
    root = _ca_certificate(root_name, root_name, root_key.public_key(), root_key, path_length=None)
    wwdr = _ca_certificate(wwdr_name, root_name, wwdr_key.public_key(), root_key, path_length=0)
    return AppleChain(root_key, root, wwdr_key, wwdr)


def _ca_certificate(subject, issuer, public_key, signing_key, path_length):
    now = dt.datetime.now(dt.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(signing_key, hashes.SHA256()))


@dataclass
class Vendor:
    key: object
    cert: x509.Certificate

    def p12(self, password: bytes, chain: AppleChain | None) -> bytes:
        extra = [chain.wwdr, chain.root] if chain else None
        return pkcs12.serialize_key_and_certificates(b"MDM vendor", self.key, self.cert, extra,
                                                     serialization.BestAvailableEncryption(password))


def make_vendor(chain: AppleChain, name: str = "MDM Vendor: Test Shop") -> Vendor:
    key = new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "TESTTEAM01")])
    cert = issue_certificate(chain.wwdr_key, chain.wwdr, key.public_key(), subject, days=365,
                             eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    return Vendor(key, cert)


def apple_push_certificate(apple_ca, public_key, topic: str | None = None, days: int = 365) -> x509.Certificate:
    """What identity.apple.com returns: the topic as UID in the subject (OID 0.9.2342.19200300.100.1.1)."""
    ca_key, ca_cert = apple_ca[0], apple_ca[1]
    topic = topic or f"com.apple.mgmt.External.{uuid.uuid4()}"
    subject = x509.Name([x509.NameAttribute(NameOID.USER_ID, topic),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"APSP:{uuid.uuid4()}"),
                         x509.NameAttribute(NameOID.COUNTRY_NAME, "US")])
    return issue_certificate(ca_key, ca_cert, public_key, subject, days=days, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])


def csr_of_request(request_b64: bytes) -> x509.CertificateSigningRequest:
    plist = plistlib.loads(base64.b64decode(request_b64))
    return x509.load_der_x509_csr(base64.b64decode(plist["PushCertRequestCSR"]))


def openssl(*args: str, input: bytes | None = None) -> bytes:
    result = subprocess.run(["openssl", *args], input=input, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


@dataclass
class Mail:
    to: str
    filename: str
    attachment: bytes


@dataclass
class SigningService:
    """mdmcert.download's API, locally: POST JSON {csr, email, key, encrypt}; 200 {"result": "success"}
    or {"result": "failure", "reason": ...}; the signed request goes out by "mail", hex-encoded DER
    CMS EnvelopedData encrypted to the ``encrypt`` certificate."""
    workdir: Path
    vendor: Vendor
    chain: AppleChain
    api_key: str = "test-api-key-0123456789abcdef"
    registered: set = field(default_factory=lambda: {"it@shop.example"})
    cipher: str = "aes256"
    received: list = field(default_factory=list)
    outbox: list = field(default_factory=list)

    def __enter__(self):
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, answer = service.handle(self.path, self.headers.get("Content-Type", ""), body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{SERVICE_PATH}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def handle(self, path: str, content_type: str, body: bytes):
        if path != SERVICE_PATH:
            return 404, {"result": "failure", "reason": "not found"}
        try:
            request = json.loads(body)
        except ValueError:
            return 400, {"result": "failure", "reason": "invalid JSON"}
        self.received.append({"content_type": content_type, **request})
        if request.get("key") != self.api_key:
            return 200, {"result": "failure", "reason": "Invalid API key."}
        if request.get("email") not in self.registered:
            return 200, {"result": "failure",
                         "reason": "Invalid email address. Have you registered yet at the service?"}
        csr_pem, encrypt_pem = base64.b64decode(request["csr"]), base64.b64decode(request["encrypt"])
        self.outbox.append(Mail(request["email"], f"mdm_signed_request.{uuid.uuid4().hex[:8]}.plist.b64.p7",
                                self._signed_encrypted_reply(csr_pem, encrypt_pem)))
        return 200, {"result": "success"}

    def _signed_encrypted_reply(self, csr_pem: bytes, encrypt_pem: bytes) -> bytes:
        work = self.workdir / uuid.uuid4().hex
        work.mkdir(parents=True)
        (work / "vendor.key").write_bytes(key_pem(self.vendor.key))
        (work / "encrypt.pem").write_bytes(encrypt_pem)
        csr_der = openssl("req", "-in", "/dev/stdin", "-outform", "DER", input=csr_pem)
        signature = openssl("dgst", "-sha256", "-sign", str(work / "vendor.key"), input=csr_der)
        plist = plistlib.dumps({"PushCertRequestCSR": base64.b64encode(csr_der).decode(),
                                "PushCertCertificateChain": (pem(self.vendor.cert) + self.chain.pem()).decode(),
                                "PushCertSignature": base64.b64encode(signature).decode()})
        envelope = openssl("smime", "-encrypt", "-binary", f"-{self.cipher}", "-outform", "DER",
                           str(work / "encrypt.pem"), input=base64.b64encode(plist))
        return envelope.hex().encode()
