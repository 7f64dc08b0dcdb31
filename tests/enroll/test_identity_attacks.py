"""Device identity, tried as an attacker holding one enrollment URL would (issue 8), against the real TLS
server (``live_server``) with certificates from Debian's ``scepclient``:

- a certificate asked for with the victim's subject, from another enrollment's challenge, never speaks for
  the victim: every check-in, command and DDM request gets 400, the victim is untouched, and each refusal
  is audited with the UDID it claimed;
- a legitimate renewal (a SCEP RenewalReq signed by the bound certificate) is bound and replaces it;
- after a re-enrollment (Authenticate with a new certificate) the old certificate gets 400 everywhere and
  the old queue is cancelled;
- a Topic that is not ours is refused on every message type that carries one;
- the command endpoint takes 2 MiB and refuses more with 413 before parsing.
"""
from __future__ import annotations

import os
import plistlib
import shutil
import ssl
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from device_identity import sign_cryptography
from mdm.protocol import certauth, queue
from mdm.enroll import scep_client, tokens
from mdm.extensions import db
from mdm.models import AuditEvent, Command, Device, DeviceCertificate

SCEPCLIENT = shutil.which("scepclient")
ORG = "Test Org"


# --- a device (or an attacker) that talks to the live server ----------------------------------------------------

def download_profile(server) -> dict:
    """What an enrollment URL gives anyone who opens it: the SCEP payload's challenge and subject."""
    with server.app.app_context():
        token = tokens.create_token("identity attack test").token
    with httpx.Client(verify=tls(server), timeout=30) as client:
        profile = plistlib.loads(client.get(f"{server.url}/enroll/{token}?unsigned=1").content)
    return next(p for p in profile["PayloadContent"] if p["PayloadType"] == "com.apple.security.scep")["PayloadContent"]


def tls(server) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=server.ca_file)


def scepclient(server, workdir: Path, challenge: str, cn: str) -> tuple:
    """Run Debian's scepclient (PKCSReq; RenewalReq when the certificate file already exists)."""
    assert SCEPCLIENT, "Debian's scep package (scepclient) is required: ./test.sh installs it"
    workdir.mkdir(exist_ok=True)
    env = {**os.environ, "SSL_CERT_FILE": server.ca_file}
    run = subprocess.run([SCEPCLIENT, "-server-url", f"{server.url}/scep", "-challenge", challenge,
                          "-private-key", str(workdir / "device.key"), "-certificate", str(workdir / "device.pem"),
                          "-cn", cn, "-organization", ORG], capture_output=True, text=True, env=env, cwd=workdir,
                         timeout=60)
    return run


def load_identity(workdir: Path) -> tuple:
    key = serialization.load_pem_private_key((workdir / "device.key").read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate((workdir / "device.pem").read_bytes())
    return key, cert


class LiveDevice:
    """Signs its requests with a key and certificate, as a device with SignMessage does."""

    def __init__(self, server, udid: str, key, cert):
        self.server, self.udid, self.key, self.cert = server, udid, key, cert
        with server.app.app_context():
            from mdm.protocol.checkin import server_topic
            self.topic = server_topic()

    def put(self, path: str, message: dict | bytes, **headers) -> httpx.Response:
        body = message if isinstance(message, bytes) else plistlib.dumps(message, fmt=plistlib.FMT_XML)
        with httpx.Client(verify=tls(self.server), timeout=60) as client:
            return client.put(f"{self.server.url}{path}", content=body,
                              headers={"Mdm-Signature": sign_cryptography(body, self.cert, self.key), **headers})

    def message(self, message_type: str, **fields) -> dict:
        base = {"MessageType": message_type, "UDID": self.udid}
        if message_type == "Authenticate":
            base.update(Topic=self.topic, SerialNumber="F5JM992LF193", ProductName="iPhone15,2", OSVersion="17.5.1",
                        BuildVersion="21F90")
        elif message_type == "TokenUpdate":
            base.update(Topic=self.topic, Token=os.urandom(32), PushMagic=str(uuid.uuid4()).upper())
        elif message_type == "CheckOut":
            base.update(Topic=self.topic)
        base.update(fields)
        return {k: v for k, v in base.items() if v is not None}

    def checkin(self, message_type: str, **fields) -> httpx.Response:
        return self.put("/mdm/checkin", self.message(message_type, **fields))

    def connect(self, status: str = "Idle", **fields) -> httpx.Response:
        return self.put("/mdm/connect", {"UDID": self.udid, "Status": status, **fields})

    def ddm(self, endpoint: str, data: bytes | None = None) -> httpx.Response:
        return self.checkin("DeclarativeManagement", Endpoint=endpoint, Data=data)


def enroll_device(server, workdir: Path, udid: str | None = None) -> LiveDevice:
    """A real device's path: profile download, SCEP with the profile's challenge and subject,
    Authenticate, TokenUpdate."""
    payload = download_profile(server)
    subject = scep_client.subject_from_profile(payload["Subject"])
    cn = subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    run = scepclient(server, workdir, payload["Challenge"], cn)
    assert run.returncode == 0, run.stdout + run.stderr
    key, cert = load_identity(workdir)
    assert cert.subject == subject
    device = LiveDevice(server, udid or str(uuid.uuid4()).upper(), key, cert)
    assert device.checkin("Authenticate").status_code == 200
    assert device.checkin("TokenUpdate").status_code == 200
    return device


def snapshot(server, udid: str) -> dict:
    """Everything an impersonator could want to change about a device."""
    with server.app.app_context():
        device = Device.query.filter_by(udid=udid).one()
        return {
            "status": device.enrollment_status, "push_token": device.push_token, "push_magic": device.push_magic,
            "topic": device.topic, "unenrolled_at": device.unenrolled_at, "bootstrap": device.bootstrap_token,
            "queue": [(c.uuid, c.status, c.response, c.completed_at)
                      for c in Command.query.filter_by(device_id=device.id).order_by(Command.id)],
            "certificates": sorted((c.sha256, c.retired_at) for c in DeviceCertificate.query.filter_by(
                device_id=device.id)),
        }


def audits(server, action: str, udid: str | None = None) -> list[AuditEvent]:
    with server.app.app_context():
        query = AuditEvent.query.filter_by(action=action)
        if udid is not None:
            query = query.filter_by(object_type="device", object_id=udid)
        return query.order_by(AuditEvent.id).all()


# --- 1. impersonation through SCEP -------------------------------------------------------------------------------

def test_victim_subject_from_another_enrollments_challenge_never_speaks_for_the_victim(live_server, tmp_path):
    victim = enroll_device(live_server, tmp_path / "victim")
    # The victim takes its first command; one is "sent" and two wait in its queue.
    taken = plistlib.loads(victim.connect().content)["CommandUUID"]
    with live_server.app.app_context():
        device = Device.query.filter_by(udid=victim.udid).one()
        queued = queue.enqueue(device, "DeviceLock", queued_by="admin", push=False).uuid
        db.session.commit()
    before = snapshot(live_server, victim.udid)
    victim_cn = victim.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value

    # The attacker opens another enrollment URL and asks SCEP for the victim's subject with its challenge.
    payload = download_profile(live_server)
    run = scepclient(live_server, tmp_path / "attacker", payload["Challenge"], victim_cn)
    assert run.returncode == 0, run.stdout + run.stderr          # issued, but not what was asked for:
    key, cert = load_identity(tmp_path / "attacker")
    assert cert.subject == scep_client.subject_from_profile(payload["Subject"]) != victim.cert.subject
    assert audits(live_server, "scep.subject_replaced")[-1].detail.startswith(f"asked for CN={victim_cn}")

    attacker = LiveDevice(live_server, victim.udid, key, cert)
    attempts = {
        "TokenUpdate": attacker.checkin("TokenUpdate"),
        "Idle": attacker.connect("Idle"),
        "Acknowledged": attacker.connect("Acknowledged", CommandUUID=taken),
        "Acknowledged (queued)": attacker.connect("Acknowledged", CommandUUID=queued),
        "NotNow": attacker.connect("NotNow", CommandUUID=taken),
        "DeclarativeManagement": attacker.ddm("tokens"),
        "SetBootstrapToken": attacker.checkin("SetBootstrapToken", BootstrapToken=b"stolen"),
        "GetBootstrapToken": attacker.checkin("GetBootstrapToken"),
        "CheckOut": attacker.checkin("CheckOut"),
    }
    for name, response in attempts.items():
        assert response.status_code == 400, (name, response.text)
        assert "not bound to this device" in response.text, name
    assert snapshot(live_server, victim.udid) == before
    refused = audits(live_server, "device.auth_failed", victim.udid)
    assert len(refused) == len(attempts)
    assert all(e.actor == "device" and victim.udid in e.detail for e in refused)

    # The victim carries on as if nothing happened.
    assert victim.connect("Acknowledged", CommandUUID=taken).status_code == 200
    with live_server.app.app_context():
        assert Command.query.filter_by(uuid=taken).one().status == "Acknowledged"


def test_same_subject_alone_never_binds(live_server, tmp_path):
    """Even a certificate carrying exactly the victim's subject (as an older server issued them) is not a
    renewal: only a RenewalReq signed by the bound certificate is."""
    victim = enroll_device(live_server, tmp_path / "victim")
    before = snapshot(live_server, victim.udid)
    from device_identity import DeviceIdentity
    twin = DeviceIdentity(live_server.app, victim.udid, subject_cn=victim.cert.subject.get_attributes_for_oid(
        NameOID.COMMON_NAME)[0].value)
    impostor = LiveDevice(live_server, victim.udid, twin.key, twin.cert)
    assert impostor.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == \
        victim.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    response = impostor.connect()
    assert response.status_code == 400 and "not bound to this device" in response.text
    assert snapshot(live_server, victim.udid) == before
    assert audits(live_server, "device.auth_failed", victim.udid)


def test_renewal_signed_by_the_bound_certificate_is_bound_and_replaces_it(live_server, tmp_path):
    device = enroll_device(live_server, tmp_path / "device")
    # A RenewalReq (scepclient sends one when its certificate file exists), signed by the bound certificate.
    old_cert = device.cert
    (tmp_path / "device" / "csr.pem").unlink(missing_ok=True)
    run = scepclient(live_server, tmp_path / "device", "", "ignored-on-renewal")
    assert run.returncode == 0, run.stdout + run.stderr
    _, new_cert = load_identity(tmp_path / "device")
    assert new_cert.serial_number != old_cert.serial_number and new_cert.subject == old_cert.subject

    with live_server.app.app_context():
        from mdm.models import IssuedCertificate
        record = IssuedCertificate.query.filter_by(sha256=certauth.fingerprint(new_cert)).one()
        assert record.renewed_from_sha256 == certauth.fingerprint(old_cert)     # it was a RenewalReq
    renewed = LiveDevice(live_server, device.udid, device.key, new_cert)
    assert renewed.connect().status_code == 200
    with live_server.app.app_context():
        rows = {c.sha256: c.retired_at for c in DeviceCertificate.query}
    assert rows[certauth.fingerprint(new_cert)] is None
    assert rows[certauth.fingerprint(old_cert)] is not None          # rebound: the old one is retired
    assert audits(live_server, "device.certificate_renewed", device.udid)
    refused = device.connect()
    assert refused.status_code == 400 and "replaced by a newer one" in refused.text
    assert renewed.checkin("TokenUpdate").status_code == 200


def test_a_retired_certificate_cannot_renew(live_server, tmp_path):
    device = enroll_device(live_server, tmp_path / "first")
    enroll_device(live_server, tmp_path / "second", udid=device.udid)      # re-enrolled: first is retired
    with httpx.Client(verify=tls(live_server), timeout=60) as client:
        with pytest.raises(scep_client.ScepError) as excinfo:
            scep_client.renew(client, f"{live_server.url}/scep", device.key, device.cert)
    assert excinfo.value.fail_info.name == "BAD_REQUEST"
    assert "re-enrollment replaced" in audits(live_server, "scep.refused")[-1].detail


# --- 2. re-enrollment --------------------------------------------------------------------------------------------

def test_after_reenrollment_the_old_certificate_gets_400_everywhere_and_the_old_queue_is_cancelled(
        live_server, tmp_path):
    old = enroll_device(live_server, tmp_path / "old")
    with live_server.app.app_context():
        device = Device.query.filter_by(udid=old.udid).one()
        admin_command = queue.enqueue(device, "DeviceLock", queued_by="admin", push=False).uuid
        db.session.commit()
    sent = plistlib.loads(old.connect().content)["CommandUUID"]   # one sent, the rest queued
    with live_server.app.app_context():
        waiting = {c.uuid for c in Command.query.filter(Command.status.in_(("queued", "sent")))}
    assert {sent, admin_command} <= waiting

    # The profile is installed again: new SCEP identity, Authenticate.
    payload = download_profile(live_server)
    cn = scep_client.subject_from_profile(payload["Subject"]).get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert scepclient(live_server, tmp_path / "new", payload["Challenge"], cn).returncode == 0
    new = LiveDevice(live_server, old.udid, *load_identity(tmp_path / "new"))
    assert new.checkin("Authenticate").status_code == 200

    with live_server.app.app_context():
        states = {c.uuid: c.status for c in Command.query}
        assert all(states[u] == "cancelled" for u in waiting)
        assert Command.query.filter(Command.status.in_(("queued", "sent"))).count() == 0
    assert audits(live_server, "device.reenrolled", old.udid)
    before = snapshot(live_server, old.udid)

    attempts = {
        "Authenticate": old.checkin("Authenticate"),
        "TokenUpdate": old.checkin("TokenUpdate"),
        "CheckOut": old.checkin("CheckOut"),
        "GetBootstrapToken": old.checkin("GetBootstrapToken"),
        "Idle": old.connect("Idle"),
        "Acknowledged": old.connect("Acknowledged", CommandUUID=sent),
        "ddm tokens": old.ddm("tokens"),
        "ddm declaration-items": old.ddm("declaration-items"),
        "ddm status": old.ddm("status", b'{"StatusItems": {}}'),
    }
    for name, response in attempts.items():
        assert response.status_code == 400, (name, response.text)
        assert "replaced by a newer one" in response.text, name
    assert snapshot(live_server, old.udid) == before
    assert len(audits(live_server, "device.auth_failed", old.udid)) == len(attempts)

    # The new enrollment starts with an empty queue; its TokenUpdate queues the inventory commands and a
    # DDM sync afresh (the old enrollment's sync command was among those cancelled).
    assert new.connect().content == b""
    assert new.checkin("TokenUpdate").status_code == 200
    with live_server.app.app_context():
        fresh = [c.request_type for c in Command.query.filter_by(status="queued").order_by(Command.id)]
    assert fresh[:3] == ["DeviceInformation", "SecurityInfo", "ProfileList"]
    assert "DeclarativeManagement" in fresh
    assert plistlib.loads(new.connect().content)["Command"]["RequestType"] == "DeviceInformation"
    late = new.connect("Acknowledged", CommandUUID=admin_command)    # a late answer to a cancelled command
    assert late.status_code == 200
    with live_server.app.app_context():
        assert Command.query.filter_by(uuid=admin_command).one().status == "cancelled"


# --- 3. topic ----------------------------------------------------------------------------------------------------

WRONG_TOPIC = "com.apple.mgmt.External.00000000-0000-0000-0000-000000000000"
# Every message type we handle; Authenticate, TokenUpdate and CheckOut carry a Topic by schema, the others
# are refused when a Topic is added.
TOPIC_CASES = {
    "Authenticate": {},
    "TokenUpdate": {},
    "CheckOut": {},
    "DeclarativeManagement": {"Endpoint": "tokens"},
    "GetBootstrapToken": {},
    "SetBootstrapToken": {"BootstrapToken": b"token"},
    "UserAuthenticate": {"UserID": "A1B2C3D4-0000-0000-0000-000000000001"},
    "GetToken": {"TokenServiceType": "com.apple.maid"},
}


def test_wrong_topic_is_400_on_every_message_type(live_server, tmp_path):
    device = enroll_device(live_server, tmp_path / "device")
    before = snapshot(live_server, device.udid)
    for message_type, fields in TOPIC_CASES.items():
        response = device.checkin(message_type, Topic=WRONG_TOPIC, **fields)
        assert response.status_code == 400, (message_type, response.text)
        assert "not this server's push topic" in response.text, message_type
    for message_type in ("Authenticate", "TokenUpdate", "CheckOut"):
        message = device.message(message_type)
        del message["Topic"]
        response = device.put("/mdm/checkin", message)
        assert response.status_code == 400 and "Topic" in response.text, message_type
    assert snapshot(live_server, device.udid) == before
    refused = audits(live_server, "device.topic_refused", device.udid)
    assert len(refused) == len(TOPIC_CASES)
    assert all(WRONG_TOPIC in e.detail for e in refused)
    # Without a Topic, the types that need none still work; with ours, too.
    assert device.checkin("GetBootstrapToken").status_code == 200
    assert device.checkin("GetBootstrapToken", Topic=device.topic).status_code == 200
    assert device.checkin("DeclarativeManagement", Endpoint="tokens", Topic=device.topic).status_code == 200


# --- 5. size -----------------------------------------------------------------------------------------------------

def _installed_apps_body(udid: str, command_uuid: str, apps: int) -> bytes:
    return plistlib.dumps({"UDID": udid, "Status": "Acknowledged", "CommandUUID": command_uuid,
                           "InstalledApplicationList": [
                               {"Identifier": f"com.example.app{n:05d}", "Name": f"Example App {n}",
                                "ShortVersion": "1.0", "Version": "100", "BundleSize": 123456789,
                                "DynamicSize": 0, "IsValidated": True, "ExternalVersionIdentifier": n}
                               for n in range(apps)]}, fmt=plistlib.FMT_XML)


def test_command_results_up_to_2_mib_are_accepted_and_larger_get_413_before_parsing(live_server, tmp_path):
    assert live_server.app.config["MAX_COMMAND_RESPONSE_BYTES"] == 2 * 1024 * 1024
    device = enroll_device(live_server, tmp_path / "device")
    taken = plistlib.loads(device.connect().content)["CommandUUID"]
    large = _installed_apps_body(device.udid, taken, 4000)
    assert 1024 * 1024 < len(large) <= 2 * 1024 * 1024
    assert device.put("/mdm/connect", large).status_code == 200
    with live_server.app.app_context():
        assert Command.query.filter_by(uuid=taken).one().status == "Acknowledged"

    too_big = b"\x00" * (2 * 1024 * 1024 + 1)          # signed, but not even a plist: size is checked first
    response = device.put("/mdm/connect", too_big)
    assert response.status_code == 413, response.text
    assert "exceeds the limit of 2097152" in response.text
    chunked_body = _installed_apps_body(device.udid, taken, 7000)
    with httpx.Client(verify=tls(live_server), timeout=60) as client:
        chunked = client.put(f"{live_server.url}/mdm/connect",
                             content=iter([chunked_body[:1000], chunked_body[1000:]]),
                             headers={"Mdm-Signature": sign_cryptography(chunked_body, device.cert, device.key)})
    assert chunked.status_code == 413
    refused = audits(live_server, "device.body_too_large")
    assert len(refused) == 2 and all(e.detail.startswith("connect:") for e in refused)
