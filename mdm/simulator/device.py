"""One simulated device: enrollment profile -> SCEP identity -> signed check-ins -> command loop.

Everything goes over real HTTPS to a real server. The device verifies the signed enrollment profile
against the CA it was told to trust, gets its identity from SCEP, and signs every check-in and
command request with ``Mdm-Signature`` (CMS, detached, SHA-256) exactly as iOS does.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import plistlib
import ssl
import uuid
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

import httpx
from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID
from mdm.enroll.scep_client import enroll as scep_enroll

# Builds of the versions a simulated device is usually started on (from Apple's feed).
KNOWN_BUILDS = {
    "16.7.10": "20H350", "17.4": "21E219", "17.5": "21F79", "17.5.1": "21F90", "17.6": "21G80",
    "17.7": "21H16", "18.0": "22A3354", "18.1": "22B83", "18.5": "22F76", "18.6": "22G86",
    "26.0": "23A341", "26.5": "23F77", "26.6": "23G71",
    # Targets in the packaged feed (mdm/ddm/data/gdmf-pmv.json), for the build reported after an install.
    "17.7.11": "21H461", "18.7.8": "22H352", "18.7.9": "22H355", "18.7.10": "22H374",
    "26.5.1": "23F81", "26.5.2": "23F84", "26.6.1": "23G83",
}

MARKETING_MODELS = {"iPhone": "MQ0G3LL/A", "iPad": "MK2K3LL/A"}


class SimulatorError(RuntimeError):
    pass


@dataclass
class DeviceProfile:
    """What kind of device to simulate (default: a supervised iPhone 14 Pro on iOS 17.5)."""
    product_name: str = "iPhone15,2"
    os_version: str = "17.5"
    build_version: str | None = None
    supervised: bool = True
    device_name: str | None = None
    time_zone: str | None = None      # IANA name answered to DeviceInformation "TimeZone" (iOS 14+)

    def resolved_build(self) -> str:
        return self.build_version or KNOWN_BUILDS.get(self.os_version) or "21F79"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


@dataclass
class SimulatedDevice:
    server_url: str
    ca_file: str
    profile: DeviceProfile = field(default_factory=DeviceProfile)
    udid: str = field(default_factory=lambda: str(uuid.uuid4()).upper())
    serial_number: str = field(default_factory=lambda: "SIM" + os.urandom(5).hex().upper()[:9])
    clock: Callable[[], dt.datetime] = _utcnow
    # RequestTypes answered NotNow (once each) before being accepted: to exercise NotNow handling.
    not_now_once: set = field(default_factory=set)

    def __post_init__(self):
        self.product_name = self.profile.product_name
        self.os_version = self.profile.os_version
        self.build_version = self.profile.resolved_build()
        self.supervised = self.profile.supervised
        self.device_name = self.profile.device_name or f"Simulated {self.product_name} {self.serial_number[-4:]}"
        self.model_name = "iPad" if self.product_name.startswith("iPad") else "iPhone"
        self.key = None
        self.cert: x509.Certificate | None = None
        self.topic = None
        self.checkin_url = None
        self.server_mdm_url = None
        self.push_token = os.urandom(32)
        self.push_magic = str(uuid.uuid4()).upper()
        self.unlock_token = os.urandom(64)
        self.installed_profiles: dict[str, bytes] = {}
        self.received_commands: list[dict] = []
        self._not_now_done: set = set()
        self.command_handlers: dict[str, Callable[[SimulatedDevice, dict], dict]] = dict(DEFAULT_HANDLERS)
        context = ssl.create_default_context(cafile=self.ca_file)
        self.http = httpx.Client(verify=context, timeout=30)

    # ---- enrollment -------------------------------------------------------------------------
    def enroll(self, enrollment_url: str) -> None:
        """Download and verify the signed profile, run SCEP, Authenticate, TokenUpdate."""
        response = self.http.get(enrollment_url)
        if response.status_code != 200:
            raise SimulatorError(f"profile download failed: HTTP {response.status_code}")
        if response.headers.get("content-type", "").split(";")[0] != "application/x-apple-aspen-config":
            raise SimulatorError("profile has the wrong content type")
        profile = plistlib.loads(verify_signed_profile(response.content, self.ca_file))
        payloads = {p["PayloadType"]: p for p in profile["PayloadContent"]}
        scep = payloads["com.apple.security.scep"]["PayloadContent"]
        mdm = payloads["com.apple.mdm"]
        if mdm["IdentityCertificateUUID"] != payloads["com.apple.security.scep"]["PayloadUUID"]:
            raise SimulatorError("MDM payload does not point at the SCEP identity")
        self.topic = mdm["Topic"]
        self.checkin_url = mdm.get("CheckInURL") or mdm["ServerURL"]
        self.server_mdm_url = mdm["ServerURL"]

        subject = x509.Name([x509.NameAttribute(_oid(n), v) for part in scep["Subject"] for n, v in part])
        self.key, self.cert = scep_enroll(self.http, scep["URL"], scep["Challenge"], subject)

        self._expect_ok(self.checkin(self.authenticate_message()), "Authenticate")
        self._expect_ok(self.checkin({
            "MessageType": "TokenUpdate", "UDID": self.udid, "Topic": self.topic,
            "Token": self.push_token, "PushMagic": self.push_magic, "UnlockToken": self.unlock_token,
        }), "TokenUpdate")

    def authenticate_message(self) -> dict:
        """What iOS sends (DeviceName, Model and ModelName are macOS-only in authenticate.yaml)."""
        return {"MessageType": "Authenticate", "UDID": self.udid, "Topic": self.topic,
                "BuildVersion": self.build_version, "OSVersion": self.os_version,
                "ProductName": self.product_name, "SerialNumber": self.serial_number}

    def checkout(self) -> httpx.Response:
        return self.checkin({"MessageType": "CheckOut", "UDID": self.udid, "Topic": self.topic})

    # ---- signed transport -------------------------------------------------------------------
    def sign(self, body: bytes) -> str:
        signature = (pkcs7.PKCS7SignatureBuilder().set_data(body)
                     .add_signer(self.cert, self.key, hashes.SHA256())
                     .sign(serialization.Encoding.DER,
                           [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]))
        return base64.b64encode(signature).decode()

    def _put(self, url: str, message: dict) -> httpx.Response:
        body = plistlib.dumps(message, fmt=plistlib.FMT_XML)
        return self.http.put(url, content=body, headers={
            "Content-Type": "application/x-apple-aspen-mdm-checkin" if url == self.checkin_url
            else "application/x-apple-aspen-mdm",
            "Mdm-Signature": self.sign(body),
        })

    def checkin(self, message: dict) -> httpx.Response:
        return self._put(self.checkin_url, message)

    def _expect_ok(self, response: httpx.Response, what: str) -> None:
        if response.status_code != 200:
            raise SimulatorError(f"{what} failed: HTTP {response.status_code} {response.text[:200]}")

    # ---- command loop -----------------------------------------------------------------------
    def connect(self, max_commands: int = 1000) -> int:
        """What a device does after a push: Idle, then answer commands until the server has none.
        Returns the number of commands answered (NotNow included)."""
        response = self._put(self.server_mdm_url, {"UDID": self.udid, "Status": "Idle"})
        answered = 0
        while answered < max_commands:
            self._expect_ok(response, "connect")
            if not response.content.strip():
                return answered
            command = plistlib.loads(response.content)
            self.received_commands.append(command)
            request_type = command["Command"]["RequestType"]
            answered += 1
            if request_type in self.not_now_once and request_type not in self._not_now_done:
                self._not_now_done.add(request_type)
                # A device answering NotNow expects nothing more on this connection.
                response = self._put(self.server_mdm_url, {"UDID": self.udid, "Status": "NotNow",
                                                           "CommandUUID": command["CommandUUID"]})
                self._expect_ok(response, "NotNow")
                return answered
            handler = self.command_handlers.get(request_type)
            if handler is None:
                result = {"Status": "Error", "ErrorChain": [{
                    "ErrorCode": 12021, "ErrorDomain": "MCMDMErrorDomain",
                    "LocalizedDescription": f"Unknown command {request_type}"}]}
            else:
                result = handler(self, command)
            result.update({"UDID": self.udid, "CommandUUID": command["CommandUUID"]})
            response = self._put(self.server_mdm_url, result)
        return answered

    # ---- inventory ----------------------------------------------------------------------------
    def device_information(self) -> dict:
        return {
            "UDID": self.udid, "DeviceName": self.device_name, "OSVersion": self.os_version,
            "BuildVersion": self.build_version, "ModelName": self.model_name,
            "Model": MARKETING_MODELS[self.model_name], "ProductName": self.product_name,
            "SerialNumber": self.serial_number, "IsSupervised": self.supervised,
            "SoftwareUpdateDeviceID": self.product_name,
            **({"TimeZone": self.profile.time_zone} if self.profile.time_zone else {}),
        }

    def close(self) -> None:
        self.http.close()


# ---- command handlers: realistic responses ---------------------------------------------------
def _device_information(device: SimulatedDevice, command: dict) -> dict:
    known = device.device_information()
    queries = command["Command"].get("Queries") or list(known)
    return {"Status": "Acknowledged", "QueryResponses": {q: known[q] for q in queries if q in known}}


def _security_info(device: SimulatedDevice, command: dict) -> dict:
    return {"Status": "Acknowledged", "SecurityInfo": {
        "HardwareEncryptionCaps": 3, "PasscodePresent": True, "PasscodeCompliant": True,
        "PasscodeCompliantWithProfiles": True,
        "ManagementStatus": {"EnrolledViaDEP": False, "UserApprovedEnrollment": True,
                             "IsUserEnrollment": False}}}


def _profile_list(device: SimulatedDevice, command: dict) -> dict:
    items = [{"PayloadIdentifier": ident, "PayloadUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, ident)).upper(),
              "PayloadVersion": 1, "IsManaged": True, "PayloadContent": []}
             for ident in sorted(device.installed_profiles)]
    return {"Status": "Acknowledged", "ProfileList": items}


def _installed_applications(device: SimulatedDevice, command: dict) -> dict:
    return {"Status": "Acknowledged", "InstalledApplicationList": [
        {"Identifier": "com.apple.mobilesafari", "Name": "Safari", "Version": "8617", "ShortVersion": device.os_version}]}


def _install_profile(device: SimulatedDevice, command: dict) -> dict:
    payload = command["Command"]["Payload"]
    try:
        identifier = plistlib.loads(payload)["PayloadIdentifier"]
    except Exception:
        return {"Status": "Error", "ErrorChain": [{"ErrorCode": 1000, "ErrorDomain": "MCProfileErrorDomain",
                                                   "LocalizedDescription": "The profile is malformed."}]}
    device.installed_profiles[identifier] = payload
    return {"Status": "Acknowledged"}


def _remove_profile(device: SimulatedDevice, command: dict) -> dict:
    identifier = command["Command"]["Identifier"]
    if device.installed_profiles.pop(identifier, None) is None:
        return {"Status": "Error", "ErrorChain": [{"ErrorCode": 1001, "ErrorDomain": "MCProfileErrorDomain",
                                                   "LocalizedDescription": "The profile is not installed."}]}
    return {"Status": "Acknowledged"}


def _acknowledge(device: SimulatedDevice, command: dict) -> dict:
    return {"Status": "Acknowledged"}


def _available_os_updates(device: SimulatedDevice, command: dict) -> dict:
    return {"Status": "Acknowledged", "AvailableOSUpdates": []}


def _os_update_status(device: SimulatedDevice, command: dict) -> dict:
    return {"Status": "Acknowledged", "OSUpdateStatus": []}


def _schedule_os_update(device: SimulatedDevice, command: dict) -> dict:
    return {"Status": "Acknowledged", "UpdateResults": []}


DEFAULT_HANDLERS = {
    "DeviceInformation": _device_information,
    "SecurityInfo": _security_info,
    "ProfileList": _profile_list,
    "InstalledApplicationList": _installed_applications,
    "InstallProfile": _install_profile,
    "RemoveProfile": _remove_profile,
    "RestartDevice": _acknowledge,
    "DeviceLock": _acknowledge,
    "EraseDevice": _acknowledge,
    "AvailableOSUpdates": _available_os_updates,
    "OSUpdateStatus": _os_update_status,
    "ScheduleOSUpdate": _schedule_os_update,
}


_OIDS = {"CN": NameOID.COMMON_NAME, "O": NameOID.ORGANIZATION_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
         "C": NameOID.COUNTRY_NAME, "ST": NameOID.STATE_OR_PROVINCE_NAME, "L": NameOID.LOCALITY_NAME}


def _oid(short_name: str):
    if short_name not in _OIDS:
        raise SimulatorError(f"unsupported subject attribute {short_name}")
    return _OIDS[short_name]


# ---- profile signature check, as the device does it (independent of the server's code) -------
_HASHES = {"sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}


def verify_signed_profile(der: bytes, ca_file: str) -> bytes:
    """Return the signed content after checking: signer chains to the CA, signature valid, digest matches."""
    ca = x509.load_pem_x509_certificate(open(ca_file, "rb").read())
    info = cms.ContentInfo.load(der)
    if info["content_type"].native != "signed_data":
        raise SimulatorError("profile is not CMS signed data")
    signed = info["content"]
    content = signed["encap_content_info"]["content"].native
    if content is None:
        raise SimulatorError("signed profile has no content")
    certs = [x509.load_der_x509_certificate(c.chosen.dump()) for c in signed["certificates"]]
    signer_info = signed["signer_infos"][0]
    serial = signer_info["sid"].chosen["serial_number"].native
    signer = next((c for c in certs if c.serial_number == serial), None)
    if signer is None:
        raise SimulatorError("signer certificate not included")
    signer.verify_directly_issued_by(ca)
    now = dt.datetime.now(dt.timezone.utc)
    if not (signer.not_valid_before_utc <= now <= signer.not_valid_after_utc):
        raise SimulatorError("signer certificate not valid now")
    hash_name = signer_info["digest_algorithm"]["algorithm"].native
    hash_cls = _HASHES[hash_name]
    attrs = signer_info["signed_attrs"]
    digest = hashlib.new(hash_name, content).digest()
    message_digest = next(a["values"][0].native for a in attrs if a["type"].native == "message_digest")
    if message_digest != digest:
        raise SimulatorError("profile digest mismatch")
    # The signature covers the DER of the attributes as a SET OF (tag 0x31), not the [0] implicit tag.
    signed_bytes = b"\x31" + attrs.dump()[1:]
    signer.public_key().verify(signer_info["signature"].native, signed_bytes,
                               padding.PKCS1v15(), hash_cls())
    return content


def server_host(url: str) -> str:
    return urlsplit(url).hostname
