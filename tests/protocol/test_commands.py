"""Command builders (mdm/protocol/commands/), the queue (mdm/protocol/queue.py), the command endpoint PUT /mdm/connect,
and the operator CLI (mdm/devices/cli.py)."""
from __future__ import annotations

import json
import plistlib
import uuid

import pytest

from apps import make_app
from appleschema import Context, load, validate_command
from device_identity import TEST_TOPIC, DeviceIdentity, make_protocol_app
from mdm.protocol import commands, queue
from mdm.protocol.commands import CommandError
from mdm.protocol.commands import device_information
from mdm.extensions import db
from mdm.models import AuditEvent, Command, Device
from mdm.signals import device_facts_changed
from refusals import stored_counts




def full_command(body: dict) -> dict:
    return {"CommandUUID": str(uuid.uuid4()).upper(), "Command": body}


# --- builders validate against Apple's schemas ------------------------------------------------------------------

IOS = Context("iOS", "18.0", supervised=True)
MAC = Context("macOS", "15.0", supervised=True)

BUILDS = [
    ("DeviceInformation", {}, IOS),
    ("DeviceInformation", {"queries": ["OSVersion", "IsSupervised"]}, IOS),
    ("SecurityInfo", {}, IOS),
    ("ProfileList", {}, IOS),
    ("ProfileList", {"managed_only": True}, IOS),
    ("InstalledApplicationList", {}, IOS),
    ("InstalledApplicationList", {"identifiers": ["com.apple.mobilesafari"], "managed_apps_only": False}, IOS),
    ("InstallProfile", {"payload": b"<plist>signed profile bytes</plist>"}, IOS),
    ("InstallProfile", {"profile": {"PayloadIdentifier": "com.example.p", "PayloadType": "Configuration"}}, IOS),
    ("RemoveProfile", {"identifier": "com.example.profile"}, IOS),
    ("RestartDevice", {}, IOS),
    ("RestartDevice", {"notify_user": True}, MAC),
    ("DeviceLock", {}, IOS),
    ("DeviceLock", {"message": "Return to IT", "phone_number": "+1 555 0100"}, IOS),
    ("DeviceLock", {"message": "Locked", "pin": "123456"}, MAC),
    ("EraseDevice", {}, IOS),
    ("EraseDevice", {"preserve_data_plan": True, "disallow_proximity_setup": True}, IOS),
    ("EraseDevice", {"pin": "654321"}, MAC),
    ("DeclarativeManagement", {}, IOS),
    ("DeclarativeManagement", {"sync_tokens": {"DeclarationsToken": "abc", "Timestamp": "2024-01-01T00:00:00Z"}}, IOS),
    ("ScheduleOSUpdate", {"product_version": "18.1", "install_action": "InstallASAP"}, IOS),
    ("ScheduleOSUpdate", {"updates": [{"ProductKey": "iOSUpdate22B83", "InstallAction": "DownloadOnly"}]}, IOS),
    ("ScheduleOSUpdate", {"updates": [{"ProductVersion": "15.1", "InstallAction": "InstallLater",
                                       "MaxUserDeferrals": 3, "Priority": "High"}]}, MAC),
    ("AvailableOSUpdates", {}, IOS),
    ("OSUpdateStatus", {}, IOS),
]


@pytest.mark.parametrize("request_type, params, ctx", BUILDS,
                         ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(BUILDS)])
def test_every_built_command_validates_against_apples_schema(request_type, params, ctx):
    body = commands.get(request_type).build(**params)
    assert body["RequestType"] == request_type
    assert validate_command(full_command(body), ctx) == []


def test_every_registered_command_is_built_in_the_schema_test():
    assert {r for r, _, _ in BUILDS} == set(commands.request_types())


def test_device_information_queries_are_exactly_apples_list():
    schema = load("mdm/commands/information.device.yaml")
    apple = {item["key"] for item in schema["payloadkeys"][0]["subkeys"][0]["subkeys"]}
    assert device_information.ALL_QUERIES == apple
    assert set(device_information.DEFAULT_QUERIES) <= apple
    assert {"IsSupervised", "OSVersion", "BuildVersion", "ProductName", "ModelName", "Model", "SerialNumber",
            "DeviceName", "SoftwareUpdateDeviceID", "UDID"} <= set(device_information.DEFAULT_QUERIES)


def test_declarative_management_data_is_the_sync_tokens_json():
    tokens = {"DeclarationsToken": "tok-1", "Timestamp": "2024-05-01T10:00:00Z"}
    body = commands.get("DeclarativeManagement").build(sync_tokens=tokens)
    # Through a plist round trip, as the device receives it (base64 <data>).
    received = plistlib.loads(plistlib.dumps(full_command(body)))["Command"]
    assert json.loads(received["Data"]) == {"SyncTokens": tokens}


@pytest.mark.parametrize("request_type, params, reason", [
    ("DeviceInformation", {"queries": ["OSVersion", "FavouriteColour"]}, "not in Apple's DeviceInformation schema"),
    ("DeviceInformation", {"queries": []}, "non-empty list"),
    ("RemoveProfile", {}, "identifier must be a non-empty string"),
    ("RemoveProfile", {"identifier": ""}, "identifier must be a non-empty string"),
    ("InstallProfile", {}, "exactly one of payload"),
    ("InstallProfile", {"payload": "not bytes"}, "payload must be the non-empty bytes"),
    ("DeviceLock", {"pin": "12ab"}, "pin must be six digits"),
    ("EraseDevice", {"preserve_data_plan": "yes"}, "must be true or false"),
    ("DeclarativeManagement", {"data": b"not json"}, "data must be JSON"),
    ("DeclarativeManagement", {"sync_tokens": {"Timestamp": "x"}}, "DeclarationsToken"),
    ("ScheduleOSUpdate", {}, "needs updates, product_version or product_key"),
    ("ScheduleOSUpdate", {"product_version": "18.1", "install_action": "Now"}, "InstallAction must be one of"),
    ("ScheduleOSUpdate", {"updates": [{"InstallAction": "Default"}]}, "needs ProductKey or ProductVersion"),
    ("ScheduleOSUpdate", {"updates": [{"ProductVersion": "18", "InstallAction": "Default", "Bogus": 1}]},
     "keys not in Apple's schema"),
    ("SecurityInfo", {"anything": 1}, "takes no parameters"),
])
def test_bad_parameters_are_refused_with_a_reason(request_type, params, reason):
    with pytest.raises(CommandError, match=reason):
        commands.get(request_type).build(**params)


# --- the queue service --------------------------------------------------------------------------------------

def make_device(app, **attrs) -> int:
    with app.app_context():
        device = Device(udid=attrs.pop("udid", str(uuid.uuid4()).upper()), inventory={},
                        enrollment_status="enrolled", **attrs)
        db.session.add(device)
        db.session.commit()
        return device.id


def test_enqueue_stores_a_schema_valid_plist(app):
    device_id = make_device(app, product_name="iPhone15,2", os_version="18.0", is_supervised=True)
    with app.app_context():
        device = db.session.get(Device, device_id)
        command = queue.enqueue(device, "RemoveProfile", queued_by="admin:alice", identifier="com.example.x")
        db.session.commit()
        stored = plistlib.loads(Command.query.filter_by(uuid=command.uuid).one().payload)
    assert stored["CommandUUID"] == command.uuid
    assert stored["Command"] == {"RequestType": "RemoveProfile", "Identifier": "com.example.x"}
    assert validate_command(stored) == []


def test_enqueue_refuses_unknown_types_parameters_and_platform_mismatches(app):
    ios = make_device(app, product_name="iPhone15,2", is_supervised=True)
    mac = make_device(app, product_name="Mac14,2")
    unsupervised = make_device(app, product_name="iPad13,1", is_supervised=False)
    with app.app_context():
        with pytest.raises(CommandError, match="unknown command"):
            queue.enqueue(db.session.get(Device, ios), "MakeCoffee")
        with pytest.raises(CommandError, match="unexpected keyword"):
            queue.enqueue(db.session.get(Device, ios), "RemoveProfile", identifer="typo")
        with pytest.raises(CommandError, match="PIN is only allowed for macOS"):
            queue.enqueue(db.session.get(Device, ios), "DeviceLock", pin="123456")
        with pytest.raises(CommandError, match="only apply to iOS"):
            queue.enqueue(db.session.get(Device, mac), "EraseDevice", preserve_data_plan=True)
        with pytest.raises(CommandError, match="macOS only"):
            queue.enqueue(db.session.get(Device, ios), "ScheduleOSUpdate", product_version="18.1",
                          install_action="InstallLater")
        with pytest.raises(CommandError, match="supervised"):
            queue.enqueue(db.session.get(Device, unsupervised), "RestartDevice")
        assert queue.enqueue(db.session.get(Device, mac), "DeviceLock", pin="123456").request_type == "DeviceLock"
        db.session.rollback()
        assert Command.query.count() == 0


def test_enqueue_with_push_asks_the_push_room(app):
    from mdm.models import PushRequest
    device_id = make_device(app, product_name="iPhone15,2", push_token="ab" * 32, push_magic="M", topic=TEST_TOPIC)
    with app.app_context():
        queue.enqueue(db.session.get(Device, device_id), "SecurityInfo")
        queue.enqueue(db.session.get(Device, device_id), "ProfileList", push=False)
        assert PushRequest.query.filter_by(device_id=device_id).count() == 1
        db.session.rollback()


# --- the command endpoint ------------------------------------------------------------------------------------

def offered(response) -> dict | None:
    assert response.status_code == 200, response.data
    return plistlib.loads(response.data) if response.data else None


def command_status(app, command_uuid) -> Command:
    with app.app_context():
        command = Command.query.filter_by(uuid=command_uuid).one()
        db.session.expunge(command)
        return command


@pytest.fixture
def enrolled(app, client):
    ident = DeviceIdentity(app)
    ident.enroll(client)   # queues DeviceInformation, SecurityInfo, ProfileList
    return ident


def test_idle_gets_the_oldest_command_and_marks_it_sent(app, client, enrolled):
    first = offered(enrolled.connect(client))
    assert first["Command"]["RequestType"] == "DeviceInformation"
    assert validate_command(first) == []
    command = command_status(app, first["CommandUUID"])
    assert command.status == "sent" and command.sent_at is not None


def test_acknowledged_result_is_stored_absorbed_and_the_next_command_follows(app, client, enrolled):
    received = []

    def on_facts(sender, changed):
        received.append(changed)
    device_facts_changed.connect(on_facts)
    try:
        first = offered(enrolled.connect(client))
        answers = {"OSVersion": "18.1", "BuildVersion": "22B83", "IsSupervised": True, "ProductName": "iPhone15,2",
                   "SoftwareUpdateDeviceID": "iPhone15,2", "DeviceName": "Kiosk 7", "SerialNumber": "F5JM992LF193",
                   "Model": "MQ0G3", "ModelName": "iPhone", "BatteryLevel": 0.5}
        second = offered(enrolled.connect(client, "Acknowledged", CommandUUID=first["CommandUUID"],
                                          QueryResponses=answers))
    finally:
        device_facts_changed.disconnect(on_facts)
    assert second["Command"]["RequestType"] == "SecurityInfo"
    command = command_status(app, first["CommandUUID"])
    assert command.status == "Acknowledged" and command.completed_at is not None
    assert plistlib.loads(command.response)["QueryResponses"]["BuildVersion"] == "22B83"
    with app.app_context():
        device = Device.query.filter_by(udid=enrolled.udid).one()
        assert (device.os_version, device.build_version, device.is_supervised, device.software_update_device_id,
                device.device_name, device.model, device.model_name) == (
            "18.1", "22B83", True, "iPhone15,2", "Kiosk 7", "MQ0G3", "iPhone")
        assert device.inventory["DeviceInformation"]["BatteryLevel"] == 0.5
    assert {"os_version", "build_version", "is_supervised", "software_update_device_id"} <= received[-1]


def test_security_info_and_profile_list_fill_the_inventory(app, client, enrolled):
    info = offered(enrolled.connect(client))
    security = offered(enrolled.connect(client, "Acknowledged", CommandUUID=info["CommandUUID"], QueryResponses={}))
    profiles = offered(enrolled.connect(client, "Acknowledged", CommandUUID=security["CommandUUID"],
                                        SecurityInfo={"PasscodePresent": True, "HardwareEncryptionCaps": 3}))
    assert profiles["Command"]["RequestType"] == "ProfileList"
    last = enrolled.connect(client, "Acknowledged", CommandUUID=profiles["CommandUUID"],
                            ProfileList=[{"PayloadIdentifier": "com.example.mdm", "SignerCertificates": [b"der"]}])
    assert offered(last) is None
    with app.app_context():
        inventory = Device.query.filter_by(udid=enrolled.udid).one().inventory
    assert inventory["SecurityInfo"] == {"PasscodePresent": True, "HardwareEncryptionCaps": 3}
    assert inventory["ProfileList"] == [{"PayloadIdentifier": "com.example.mdm", "SignerCertificateCount": 1}]


def test_error_and_command_format_error_store_the_error_chain(app, client, enrolled):
    first = offered(enrolled.connect(client))
    chain = [{"ErrorCode": 12021, "ErrorDomain": "MCMDMErrorDomain", "LocalizedDescription": "Not allowed",
              "USEnglishDescription": "Not allowed"}]
    second = offered(enrolled.connect(client, "Error", CommandUUID=first["CommandUUID"], ErrorChain=chain))
    third = offered(enrolled.connect(client, "CommandFormatError", CommandUUID=second["CommandUUID"]))
    failed = command_status(app, first["CommandUUID"])
    assert failed.status == "Error" and failed.error_chain == chain and failed.completed_at is not None
    assert command_status(app, second["CommandUUID"]).status == "CommandFormatError"
    assert third["Command"]["RequestType"] == "ProfileList"
    with app.app_context():   # an Error answer does not touch the inventory
        assert Device.query.filter_by(udid=enrolled.udid).one().os_version == "17.5.1"


def test_not_now_requeues_ends_the_exchange_and_is_offered_on_the_next_idle(app, client, enrolled):
    first = offered(enrolled.connect(client))
    assert offered(enrolled.connect(client, "NotNow", CommandUUID=first["CommandUUID"])) is None
    command = command_status(app, first["CommandUUID"])
    assert (command.status, command.not_now_count, command.last_not_now_at is not None) == ("queued", 1, True)
    again = offered(enrolled.connect(client))
    assert again["CommandUUID"] == first["CommandUUID"]
    offered(enrolled.connect(client, "NotNow", CommandUUID=first["CommandUUID"]))
    assert command_status(app, first["CommandUUID"]).not_now_count == 2


def test_repeated_report_for_a_final_command_is_a_no_op(app, client, enrolled):
    first = offered(enrolled.connect(client))
    offered(enrolled.connect(client, "Acknowledged", CommandUUID=first["CommandUUID"],
                             QueryResponses={"OSVersion": "18.1"}))
    done = command_status(app, first["CommandUUID"])
    repeat = enrolled.connect(client, "Error", CommandUUID=first["CommandUUID"],
                              ErrorChain=[{"ErrorCode": 1, "ErrorDomain": "x"}], QueryResponses={"OSVersion": "1.0"})
    assert repeat.status_code == 200
    after = command_status(app, first["CommandUUID"])
    assert (after.status, after.response, after.completed_at, after.error_chain) == (
        "Acknowledged", done.response, done.completed_at, None)
    with app.app_context():
        assert Device.query.filter_by(udid=enrolled.udid).one().os_version == "18.1"


def test_report_for_another_devices_command_changes_nothing(app, client, enrolled):
    other = DeviceIdentity(app)
    other.enroll(client)
    theirs = offered(other.connect(client))
    mine = offered(enrolled.connect(client))
    answer = enrolled.connect(client, "Acknowledged", CommandUUID=theirs["CommandUUID"],
                              QueryResponses={"OSVersion": "1.0"})
    # My own sent command is what I get back: the foreign report was ignored.
    assert offered(answer)["CommandUUID"] == mine["CommandUUID"]
    assert command_status(app, theirs["CommandUUID"]).status == "sent"
    with app.app_context():
        assert Device.query.filter_by(udid=other.udid).one().os_version == "17.5.1"


def test_report_for_an_unknown_command_changes_nothing(app, client, enrolled):
    before = stored_counts(app)
    response = enrolled.connect(client, "Acknowledged", CommandUUID=str(uuid.uuid4()))
    assert offered(response)["Command"]["RequestType"] == "DeviceInformation"
    assert stored_counts(app) == before


def test_unanswered_sent_command_is_offered_again_on_idle(app, client, enrolled):
    first = offered(enrolled.connect(client))
    # The answer never arrived (connection lost); the device's next contact is Idle.
    assert offered(enrolled.connect(client))["CommandUUID"] == first["CommandUUID"]


def test_empty_queue_answers_an_empty_200(app, client):
    ident = DeviceIdentity(app)
    assert ident.checkin(client, "Authenticate").status_code == 200
    response = ident.connect(client)
    assert response.status_code == 200 and response.data == b""


@pytest.mark.parametrize("message, reason", [
    ({"Status": "Sleeping"}, "unknown Status"),
    ({"Status": "Acknowledged"}, "missing key CommandUUID"),
    ({}, "missing key Status"),
])
def test_malformed_command_reports_are_400(app, client, enrolled, message, reason):
    before = stored_counts(app)
    response = enrolled.put(client, "/mdm/connect", {"UDID": enrolled.udid, **message})
    assert response.status_code == 400 and reason in response.get_data(as_text=True)
    assert stored_counts(app) == before
    with app.app_context():
        assert Command.query.filter_by(status="sent").count() == 0


def test_queue_survives_an_app_restart(tmp_path, pki_template):
    first_app = make_protocol_app(tmp_path, pki_template)
    ident = DeviceIdentity(first_app)
    ident.enroll(first_app.test_client())
    sent = offered(ident.connect(first_app.test_client()))
    with first_app.app_context():
        db.session.remove()
        db.engine.dispose()
    second_app = make_app(tmp_path, pki_template, APNS_TOPIC=TEST_TOPIC)   # same database, new process state
    client = second_app.test_client()
    again = offered(ident.connect(client))
    assert again["CommandUUID"] == sent["CommandUUID"]
    following = offered(ident.connect(client, "Acknowledged", CommandUUID=sent["CommandUUID"], QueryResponses={}))
    assert following["Command"]["RequestType"] == "SecurityInfo"
    with second_app.app_context():
        db.session.remove()
        db.engine.dispose()


# --- CLI ---------------------------------------------------------------------------------------------------------

def test_cli_lists_devices_and_queues_commands(app, client, enrolled):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["mdm", "devices", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows[0]["udid"] == enrolled.udid and rows[0]["enrollment"] == "enrolled"
    assert rows[0]["os"] == "17.5.1" and rows[0]["last_seen"]
    text = runner.invoke(args=["mdm", "devices"])
    assert enrolled.udid in text.output and "ENROLLMENT" in text.output

    result = runner.invoke(args=["mdm", "commands", enrolled.udid, "--queue", "RemoveProfile",
                                 "--param", "identifier=com.example.old", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["queued"] and data["commands"][0]["request_type"] == "RemoveProfile"
    with app.app_context():
        event = AuditEvent.query.filter_by(action="command.queued").one()
        assert event.object_id == data["queued"] and event.actor.startswith("cli")

    offered(enrolled.connect(client))
    first = offered(enrolled.connect(client))
    enrolled.connect(client, "NotNow", CommandUUID=first["CommandUUID"])
    history = runner.invoke(args=["mdm", "commands", enrolled.udid])
    assert "not-now x1" in history.output and "DeviceInformation" in history.output


def test_cli_refuses_bad_commands_with_a_message(app, enrolled):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["mdm", "commands", enrolled.udid, "--queue", "RemoveProfile"])
    assert result.exit_code != 0 and "identifier must be a non-empty string" in result.output
    result = runner.invoke(args=["mdm", "commands", "NO-SUCH-DEVICE"])
    assert result.exit_code != 0 and "no device" in result.output
    assert stored_counts(app)["commands"] == 3
