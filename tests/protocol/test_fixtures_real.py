"""Real device captures (/work/shared/fixtures/real-devices/) through the real endpoints.

The bodies are sent byte for byte, signed by a test device identity; only the Topic is rewritten to
ours (the captures come from other servers' push certificates).
"""
from __future__ import annotations

import base64
import plistlib

import pytest

from apps import FIXTURES
from device_identity import DeviceIdentity, checkin_message
from mdm.extensions import db
from mdm.models import Command, Device
from mdm.plistio import loads_xml
from mdm.signals import device_facts_changed

CAPTURED_TOPIC = b"com.apple.mgmt.External.e0bd1eac-1f17-4c8e-8a63-dd17d3dd35d9"




def capture(name: str, app=None) -> bytes:
    body = (FIXTURES / name).read_bytes()
    if app is not None:
        with app.app_context():
            from mdm.protocol.checkin import server_topic
            body = body.replace(CAPTURED_TOPIC, server_topic().encode())
    return body


def device(app, udid) -> Device:
    with app.app_context():
        found = Device.query.filter_by(udid=udid).one()
        db.session.expunge(found)
        return found


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.plist")))
def test_every_capture_parses_strictly(name):
    message = loads_xml((FIXTURES / name).read_bytes())
    assert message.get("MessageType") or message.get("Status") == "Acknowledged"


def test_ipad_ios9_authenticate_and_token_update(app, client):
    auth = capture("nanomdm-Authenticate.iPad2-5-iOS9.3.5.plist", app)
    udid = loads_xml(auth)["UDID"]
    ident = DeviceIdentity(app, udid)
    assert ident.put(client, "/mdm/checkin", auth).status_code == 200
    found = device(app, udid)
    assert (found.serial_number, found.product_name, found.os_version, found.build_version) == (
        "F5JM992LF193", "iPad2,5", "9.3.5", "13G36")
    assert found.device_name is None and found.platform == "iPadOS"

    token_update = capture("nanomdm-TokenUpdate.iPad2-5-iOS9.3.5.plist", app)
    assert ident.put(client, "/mdm/checkin", token_update).status_code == 200
    found = device(app, udid)
    expected = plistlib.loads(token_update)
    assert found.enrollment_status == "enrolled"
    assert found.push_token == base64.b64decode("R+juwGLC9ynsFwPBs+GPGXHYXwC+dkRdNAgLqnAbX1E=").hex()
    assert found.push_magic == "CEFDF0BD-E342-4A27-8742-E930EA116B0A"
    assert found.unlock_token == expected["UnlockToken"]
    with app.app_context():
        assert [c.request_type for c in Command.query.order_by(Command.id)] == [
            "DeviceInformation", "SecurityInfo", "ProfileList"]


def test_imac_authenticate_token_update_and_device_information(app, client):
    auth = capture("nanomdm-Authenticate.iMac14-2-macOS10.12.6.plist", app)
    udid = loads_xml(auth)["UDID"]
    ident = DeviceIdentity(app, udid)
    assert ident.put(client, "/mdm/checkin", auth).status_code == 200
    assert ident.put(client, "/mdm/checkin", capture("nanomdm-TokenUpdate.iMac14-2-macOS10.12.6.plist", app)
                     ).status_code == 200
    found = device(app, udid)
    assert (found.device_name, found.model, found.model_name, found.product_name, found.os_version) == (
        "Fruit", "iMac14,2", "iMac", "iMac14,2", "10.12.6")
    assert found.platform == "macOS" and found.enrollment_status == "enrolled"

    # The captured answer names its own CommandUUID: give this device a sent command with that UUID.
    result = capture("nanomdm-DeviceInformation.iMac14-2-macOS10.12.6.plist")
    with app.app_context():
        command = Command.query.filter_by(request_type="DeviceInformation").one()
        command.uuid = loads_xml(result)["CommandUUID"]
        command.status = "sent"
        db.session.commit()
    response = ident.put(client, "/mdm/connect", result)
    assert response.status_code == 200
    assert plistlib.loads(response.data)["Command"]["RequestType"] == "SecurityInfo"
    with app.app_context():
        stored = Command.query.filter_by(uuid=loads_xml(result)["CommandUUID"]).one()
        assert stored.status == "Acknowledged" and stored.response == result   # byte for byte
        assert Device.query.filter_by(udid=udid).one().inventory["DeviceInformation"]["HostName"] == \
            "fruit.example.com"


def _answer_capture(app, client, name: str, request_type: str, authenticate: dict | None = None):
    """Enroll the capture's UDID with a synthetic Authenticate, then feed the captured answer."""
    result = capture(name)
    message = loads_xml(result)
    ident = DeviceIdentity(app, message["UDID"])
    assert ident.checkin(client, "Authenticate", **(authenticate or {})).status_code == 200
    from mdm.protocol import queue
    with app.app_context():
        command = queue.enqueue(Device.query.filter_by(udid=ident.udid).one(), request_type, push=False)
        command.uuid = message["CommandUUID"]
        command.status = "sent"
        db.session.commit()
    response = ident.put(client, "/mdm/connect", result)
    assert response.status_code == 200 and response.data == b""
    return ident


def test_macos13_device_information_updates_every_fact(app, client):
    changes = []

    def on_facts(sender, changed):
        changes.append(changed)
    device_facts_changed.connect(on_facts)
    try:
        ident = _answer_capture(app, client, "zentral-DeviceInformation.macOS13-VM.plist", "DeviceInformation",
                                {"ProductName": "VirtualMac2,1", "OSVersion": "12.6", "BuildVersion": "21G115"})
    finally:
        device_facts_changed.disconnect(on_facts)
    found = device(app, ident.udid)
    assert (found.os_version, found.build_version, found.software_update_device_id, found.is_supervised,
            found.serial_number, found.model, found.model_name, found.device_name) == (
        "13.0", "22A5321d", "VMA2MACOSAP", True, "Z3C2FCE2C0", "VirtualMac2,1", "Virtual Machine", "Yolo")
    assert found.inventory["DeviceInformation"]["OSUpdateSettings"]["PreviousScanDate"] == "2022-09-09T08:38:04Z"
    assert {"os_version", "build_version", "software_update_device_id", "is_supervised"} <= changes[-1]


def test_ios_security_info_capture_fills_the_inventory(app, client):
    ident = _answer_capture(app, client, "zentral-SecurityInfo.iOS.plist", "SecurityInfo")
    info = device(app, ident.udid).inventory["SecurityInfo"]
    assert info["HardwareEncryptionCaps"] == 3 and info["PasscodePresent"] is False
    assert info["ManagementStatus"] == {"IsUserEnrollment": False}


def test_profile_list_capture_fills_the_inventory(app, client):
    ident = _answer_capture(app, client, "zentral-ProfileList.plist", "ProfileList")
    profiles = device(app, ident.udid).inventory["ProfileList"]
    assert [p["PayloadIdentifier"] for p in profiles] == ["com.example.zentral.santa_configuration",
                                                          "com.example.zentral.mdm"]
    assert all(p["SignerCertificateCount"] == 2 for p in profiles)


def test_capture_with_a_foreign_topic_is_refused(app, client):
    auth = capture("nanomdm-Authenticate.iPad2-5-iOS9.3.5.plist")   # Topic not rewritten
    ident = DeviceIdentity(app, loads_xml(auth)["UDID"])
    response = ident.put(client, "/mdm/checkin", auth)
    assert response.status_code == 400 and "push topic" in response.get_data(as_text=True)


def test_checkin_message_helper_matches_the_captured_ios_key_set():
    """Keeps the synthetic iOS Authenticate in the tests honest: same keys as a real iPad sends."""
    real = loads_xml(capture("nanomdm-Authenticate.iPad2-5-iOS9.3.5.plist"))
    assert set(checkin_message("X", "Authenticate")) == set(real)
