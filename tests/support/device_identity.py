"""A device as the tests see it (no tests here): a SCEP identity issued by the app's CA and recorded as
IssuedCertificate, as our SCEP service would, real CMS signatures over request bodies (cryptography, and
openssl for SHA-1), and check-in messages with the app's push topic."""
from __future__ import annotations

import base64
import datetime as dt
import plistlib
import subprocess
import uuid

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from apps import make_app
from mdm.pki import get_pki
from mdm.extensions import db
from mdm.models import IssuedCertificate
from mdm.protocol import certauth

TEST_TOPIC = "com.apple.mgmt.External.11111111-2222-3333-4444-555555555555"

def device_key():
    """A device's RSA key, 2048 bits as Apple's SCEP payload asks for."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def sign_cryptography(body: bytes, cert, key, *, attributes: bool = True) -> str:
    options = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]
    if not attributes:
        options.append(pkcs7.PKCS7Options.NoAttributes)
    der = (pkcs7.PKCS7SignatureBuilder().set_data(body).add_signer(cert, key, hashes.SHA256())
           .sign(serialization.Encoding.DER, options))
    return base64.b64encode(der).decode()


def sign_openssl(body: bytes, cert, key, tmp_path, digest: str = "sha1") -> str:
    """The real openssl, as a second independent signer (cryptography refuses SHA-1 signing)."""
    cert_file, key_file, data_file = tmp_path / "signer.pem", tmp_path / "signer.key", tmp_path / "body"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    data_file.write_bytes(body)
    der = subprocess.run(["openssl", "cms", "-sign", "-binary", "-md", digest, "-signer", str(cert_file),
                          "-inkey", str(key_file), "-in", str(data_file), "-outform", "DER"],
                         check=True, capture_output=True).stdout
    return base64.b64encode(der).decode()


class DeviceIdentity:
    """A device's SCEP identity: key + certificate from the app's CA, recorded as IssuedCertificate."""

    def __init__(self, app, udid: str | None = None, *, key=None, cert=None, register: bool = True,
                 subject_cn: str | None = None, renewed_from: "DeviceIdentity | None" = None):
        self.app = app
        self.udid = udid or str(uuid.uuid4()).upper()
        self.key = key or device_key()
        with app.app_context():
            if cert is None:
                cn = subject_cn or f"mdm-device-{uuid.uuid4()}"
                subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Org"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, cn)])
                cert = get_pki().issue_device_identity(self.key.public_key(), subject, days=365)
            self.cert = cert
            if register:
                issued = IssuedCertificate(
                    serial=format(cert.serial_number, "x"), sha256=certauth.fingerprint(cert),
                    subject=cert.subject.rfc4514_string(),
                    not_after=cert.not_valid_after_utc.replace(tzinfo=None))
                if renewed_from is not None:   # what the SCEP service records for a RenewalReq
                    issued.renewed_from_sha256 = certauth.fingerprint(renewed_from.cert)
                db.session.add(issued)
                db.session.commit()

    def sign(self, body: bytes) -> str:
        return sign_cryptography(body, self.cert, self.key)

    def put(self, client, path: str, message, *, signature: str | None = None, headers: dict | None = None):
        body = message if isinstance(message, bytes) else plistlib.dumps(message, fmt=plistlib.FMT_XML)
        all_headers = {"Mdm-Signature": signature if signature is not None else self.sign(body),
                       "Content-Type": "application/x-apple-aspen-mdm-checkin"}
        all_headers.update(headers or {})
        return client.put(path, data=body, headers=all_headers)

    def checkin(self, client, message_type: str, **fields):
        return self.put(client, "/mdm/checkin", checkin_message(self.udid, message_type, **fields))

    def connect(self, client, status: str = "Idle", **fields):
        message = {"UDID": self.udid, "Status": status, **fields}
        return self.put(client, "/mdm/connect", message)

    def enroll(self, client):
        """Authenticate + TokenUpdate, as a device installing the enrollment profile does."""
        assert self.checkin(client, "Authenticate").status_code == 200
        assert self.checkin(client, "TokenUpdate").status_code == 200


def drain(ident, client) -> None:
    """Answer every waiting command (the enrollment's DeviceInformation, SecurityInfo, ProfileList)."""
    response = ident.connect(client)
    while response.data:
        uuid = plistlib.loads(response.data)["CommandUUID"]
        response = ident.connect(client, "Acknowledged", CommandUUID=uuid)


def enrolled_and_drained(app, client) -> "DeviceIdentity":
    """A new enrolled device whose queue is empty: its next Idle changes nothing."""
    ident = DeviceIdentity(app)
    ident.enroll(client)
    drain(ident, client)
    return ident


def checkin_message(udid: str, message_type: str, **fields) -> dict:
    base = {"MessageType": message_type, "UDID": udid}
    if message_type == "Authenticate":
        # An iPhone's key set (Model, ModelName and DeviceName are macOS-only in authenticate.yaml).
        base.update(Topic=TEST_TOPIC, SerialNumber="F5JM992LF193", ProductName="iPhone15,2",
                    OSVersion="17.5.1", BuildVersion="21F90")
    elif message_type == "TokenUpdate":
        base.update(Topic=TEST_TOPIC, Token=bytes.fromhex("ab" * 32), PushMagic=str(uuid.uuid4()).upper())
    elif message_type == "CheckOut":
        base.update(Topic=TEST_TOPIC)
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def make_protocol_app(tmp_path, pki_template, **overrides):
    """An app built outside the fixtures (``make_app``) whose push topic ``checkin_message`` uses."""
    app = make_app(tmp_path, pki_template, **overrides)
    use_topic_of(app)
    return app


def use_topic_of(app) -> None:
    """Check-in messages carry ``app``'s push topic from now on (the push room's placeholder identity,
    made per app, is in charge of the topic). The ``app`` fixture calls this."""
    global TEST_TOPIC
    with app.app_context():
        from mdm.protocol.checkin import server_topic
        topic = server_topic()
    if topic != TEST_TOPIC:
        TEST_TOPIC = topic


def expired_identity(app) -> tuple:
    key = device_key()
    with app.app_context():
        pki = get_pki()
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mdm-device-expired")]))
                .issuer_name(pki.ca_cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=400)).not_valid_after(now - dt.timedelta(days=1))
                .sign(pki.ca_key, hashes.SHA256()))
    return key, cert
