"""The check-in endpoint PUT /mdm/checkin: every MessageType, and refusal of bad input (mdm/protocol/checkin.py)."""
from __future__ import annotations

import io
import json
import plistlib

import pytest

from appleschema import Context, validate_checkin, validate_protocol
from device_identity import DeviceIdentity, checkin_message
from mdm.extensions import db
from mdm.models import Command, Device
from mdm.signals import device_checked_out, device_enrolled, device_facts_changed
from refusals import NOTHING_STORED, assert_refused, auth_failures, stored_counts




@pytest.fixture
def ident(app):
    return DeviceIdentity(app, "00008110-000A1B2C3D4E801E")


def device(app, udid) -> Device:
    with app.app_context():
        found = Device.query.filter_by(udid=udid).one()
        db.session.expunge(found)
        return found


class Received:
    """Collects signals the way another room's receiver would."""

    def __init__(self, signal):
        self.calls = []
        self.signal = signal
        signal.connect(self._receive)

    def _receive(self, sender, **kwargs):
        self.calls.append((sender.udid, kwargs))

    def close(self):
        self.signal.disconnect(self._receive)


@pytest.fixture
def signals():
    receivers = {name: Received(sig) for name, sig in (("enrolled", device_enrolled),
                                                        ("facts", device_facts_changed),
                                                        ("checked_out", device_checked_out))}
    yield receivers
    for receiver in receivers.values():
        receiver.close()


# --- Authenticate, TokenUpdate, CheckOut --------------------------------------------------------------------

MAC_FACTS = dict(ProductName="Mac14,2", Model="Mac14,2", ModelName="MacBook Air", DeviceName="Test Mac",
                 OSVersion="14.5", BuildVersion="23F79", SerialNumber="C02XYZ123456")


def test_our_test_messages_follow_apples_schema(ident):
    # Apple lists DeviceName/Model/ModelName as required but macOS-only: an iPhone sends none of them
    # (as the real iOS capture shows), so the server treats every fact as optional.
    assert validate_checkin(checkin_message(ident.udid, "Authenticate")) == []
    assert validate_checkin(checkin_message(ident.udid, "Authenticate", **MAC_FACTS),
                            Context("macOS", "14.5")) == []


def test_authenticate_creates_the_device_and_binds_the_certificate(app, client, ident, signals):
    response = ident.checkin(client, "Authenticate", **MAC_FACTS)
    assert response.status_code == 200 and response.data == b""
    found = device(app, ident.udid)
    assert (found.serial_number, found.product_name, found.model, found.model_name, found.os_version,
            found.build_version, found.device_name) == ("C02XYZ123456", "Mac14,2", "Mac14,2", "MacBook Air",
                                                        "14.5", "23F79", "Test Mac")
    assert found.platform == "macOS"
    assert found.enrollment_status == "authenticated" and found.push_token is None
    assert found.last_seen_at is not None
    assert stored_counts(app)["bindings"] == 1
    assert signals["facts"].calls[0][1]["changed"] >= {"os_version", "build_version", "product_name"}
    assert signals["enrolled"].calls == []


def test_wrong_topic_is_refused_and_stores_nothing(app, client, ident):
    response = ident.checkin(client, "Authenticate", Topic="com.apple.mgmt.External.someone-else")
    assert response.status_code == 400
    assert "push topic" in response.get_data(as_text=True)
    assert stored_counts(app) == {"devices": 0, "bindings": 0, "commands": 0}


# Every message type we handle: Authenticate, TokenUpdate and CheckOut carry a Topic by schema; the
# others are checked when a Topic is added (issue 8: DeclarativeManagement and GetBootstrapToken took any).
@pytest.mark.parametrize("message_type, fields", [
    ("Authenticate", {}), ("TokenUpdate", {}), ("CheckOut", {}),
    ("DeclarativeManagement", {"Endpoint": "tokens"}), ("GetBootstrapToken", {}),
    ("SetBootstrapToken", {"BootstrapToken": b"token"}),
    ("UserAuthenticate", {"UserID": "A1B2C3D4-0000-0000-0000-000000000001"}),
    ("GetToken", {"TokenServiceType": "com.apple.maid"}),
])
def test_wrong_topic_is_400_and_audited_on_every_message_type(app, client, ident, message_type, fields):
    from mdm.models import AuditEvent
    ident.enroll(client)
    before = stored_counts(app), device(app, ident.udid).push_magic
    response = ident.checkin(client, message_type, Topic="com.apple.mgmt.External.wrong", **fields)
    assert response.status_code == 400, response.data
    assert b"not this server's push topic" in response.data
    assert (stored_counts(app), device(app, ident.udid).push_magic) == before
    assert device(app, ident.udid).enrollment_status == "enrolled"
    with app.app_context():
        event = AuditEvent.query.filter_by(action="device.topic_refused").one()
        assert event.object_id == ident.udid and "com.apple.mgmt.External.wrong" in event.detail


@pytest.mark.parametrize("message_type", ["Authenticate", "TokenUpdate", "CheckOut"])
def test_topic_is_required_where_the_schema_requires_it(app, client, ident, message_type):
    ident.enroll(client)
    before = stored_counts(app)
    response = ident.checkin(client, message_type, Topic=None)
    assert response.status_code == 400 and b"Topic" in response.data
    assert stored_counts(app) == before and device(app, ident.udid).enrollment_status == "enrolled"


def test_token_update_with_wrong_topic_changes_nothing(app, client, ident):
    ident.checkin(client, "Authenticate")
    response = ident.checkin(client, "TokenUpdate", Topic="com.apple.mgmt.External.someone-else")
    assert response.status_code == 400
    found = device(app, ident.udid)
    assert found.push_token is None and found.enrollment_status == "authenticated"
    assert stored_counts(app)["commands"] == 0


def test_first_token_update_enrolls_and_queues_the_inventory_commands(app, client, ident, signals):
    ident.checkin(client, "Authenticate")
    unlock = b"\x01unlock-token-bytes"
    response = ident.checkin(client, "TokenUpdate", Token=bytes.fromhex("0a1b" * 16), PushMagic="MAGIC-1",
                             UnlockToken=unlock, AwaitingConfiguration=False)
    assert response.status_code == 200
    found = device(app, ident.udid)
    assert found.enrollment_status == "enrolled" and found.enrolled_at is not None
    assert found.push_token == "0a1b" * 16 and found.push_magic == "MAGIC-1" and found.unlock_token == unlock
    with app.app_context():
        queued = [(c.request_type, c.status) for c in Command.query.order_by(Command.id)]
    assert queued == [("DeviceInformation", "queued"), ("SecurityInfo", "queued"), ("ProfileList", "queued")]
    assert [udid for udid, _ in signals["enrolled"].calls] == [ident.udid]

    # A later TokenUpdate (token rotation) updates the token without queueing the inventory again.
    ident.checkin(client, "TokenUpdate", Token=bytes.fromhex("ff" * 32), PushMagic="MAGIC-2")
    found = device(app, ident.udid)
    assert found.push_token == "ff" * 32 and found.push_magic == "MAGIC-2"
    assert stored_counts(app)["commands"] == 3
    assert len(signals["enrolled"].calls) == 1


def test_checkout_unenrolls_clears_the_token_and_keeps_history(app, client, ident, signals):
    ident.enroll(client)
    response = ident.checkin(client, "CheckOut")
    assert response.status_code == 200
    found = device(app, ident.udid)
    assert found.enrollment_status == "unenrolled" and found.unenrolled_at is not None
    assert found.push_token is None and found.push_magic is None
    assert stored_counts(app)["commands"] == 3          # history kept
    assert [udid for udid, _ in signals["checked_out"].calls] == [ident.udid]


def test_reenrollment_after_checkout_queues_inventory_again(app, client, ident):
    ident.enroll(client)
    ident.checkin(client, "CheckOut")
    ident.enroll(client)
    assert device(app, ident.udid).enrollment_status == "enrolled"
    # Changed by issue 8: the new enrollment's Authenticate cancelled the old queue and reset the DDM
    # room's record of what it served (and queued) for the old one, so the new enrollment gets a DDM sync.
    with app.app_context():
        commands = [(c.request_type, c.status) for c in Command.query.order_by(Command.id)]
    inventory = ["DeviceInformation", "SecurityInfo", "ProfileList"]
    assert commands == [(t, "cancelled") for t in inventory] + [(t, "queued") for t in inventory] + [
        ("DeclarativeManagement", "queued")]


# --- bootstrap token, DDM, unsupported messages --------------------------------------------------------------

def test_bootstrap_token_is_stored_returned_and_cleared(app, client, ident):
    ident.enroll(client)
    response = ident.checkin(client, "GetBootstrapToken")
    assert response.status_code == 200 and plistlib.loads(response.data) == {}
    assert ident.checkin(client, "SetBootstrapToken", BootstrapToken=b"secret-bootstrap").status_code == 200
    response = ident.checkin(client, "GetBootstrapToken", AwaitingConfiguration=False)
    assert plistlib.loads(response.data) == {"BootstrapToken": b"secret-bootstrap"}
    assert ident.checkin(client, "SetBootstrapToken", BootstrapToken=b"").status_code == 200
    assert device(app, ident.udid).bootstrap_token is None
    assert plistlib.loads(ident.checkin(client, "GetBootstrapToken").data) == {}


def test_user_authenticate_is_410_and_get_token_is_400(client, ident):
    ident.enroll(client)
    assert ident.checkin(client, "UserAuthenticate", UserID="A-USER", DigestResponse="x").status_code == 410
    response = ident.checkin(client, "GetToken", TokenServiceType="com.apple.watch.pairing")
    assert response.status_code == 400 and "not supported" in response.get_data(as_text=True)


def test_declarative_management_answers_tokens_and_items(app, client, ident):
    ident.enroll(client)
    tokens = ident.checkin(client, "DeclarativeManagement", Endpoint="tokens")
    assert tokens.status_code == 200 and tokens.content_type.startswith("application/json")
    tokens_doc = json.loads(tokens.data)
    assert validate_protocol("tokensresponse", tokens_doc) == []
    items = ident.checkin(client, "DeclarativeManagement", Endpoint="declaration-items")
    assert items.status_code == 200
    items_doc = json.loads(items.data)
    assert validate_protocol("declarationitemsresponse", items_doc) == []
    # The same set, the same token, on both endpoints and on every call.
    assert items_doc["DeclarationsToken"] == tokens_doc["SyncTokens"]["DeclarationsToken"]
    again = json.loads(ident.checkin(client, "DeclarativeManagement", Endpoint="tokens").data)
    assert again["SyncTokens"]["DeclarationsToken"] == tokens_doc["SyncTokens"]["DeclarationsToken"]


def test_declarative_management_status_report_is_accepted(client, ident):
    ident.enroll(client)
    report = json.dumps({"StatusItems": {}, "Errors": []}).encode()
    response = ident.checkin(client, "DeclarativeManagement", Endpoint="status", Data=report)
    assert response.status_code == 200


def test_unknown_message_type_is_400(app, client, ident):
    ident.enroll(client)
    response = ident.checkin(client, "MakeCoffee")
    assert response.status_code == 400 and "unknown MessageType" in response.get_data(as_text=True)


# --- bad input: 400/413, nothing stored ----------------------------------------------------------------------

def test_not_a_plist_is_400(app, client, ident):
    assert_refused(app, ident.put(client, "/mdm/checkin", b"MessageType=Authenticate"), 400,
                   "not an XML property list", NOTHING_STORED)


def test_binary_plist_is_400(app, client, ident):
    body = plistlib.dumps(checkin_message(ident.udid, "Authenticate"), fmt=plistlib.FMT_BINARY)
    assert_refused(app, ident.put(client, "/mdm/checkin", body), 400, "binary plist", NOTHING_STORED)


def test_entities_are_400(app, client, ident):
    body = (b'<?xml version="1.0"?><!DOCTYPE plist [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;">]>'
            b'<plist version="1.0"><dict><key>MessageType</key><string>&b;</string></dict></plist>')
    assert_refused(app, ident.put(client, "/mdm/checkin", body), 400, "entity declarations are not allowed",
                   NOTHING_STORED)


def test_doctype_internal_subset_is_400(app, client, ident):
    body = (b'<?xml version="1.0"?><!DOCTYPE plist [ <!ELEMENT plist ANY> ]>'
            b'<plist version="1.0"><dict><key>MessageType</key><string>Authenticate</string></dict></plist>')
    assert_refused(app, ident.put(client, "/mdm/checkin", body), 400, "internal subset", NOTHING_STORED)


@pytest.mark.parametrize("changes, reason", [
    ({"MessageType": None}, "missing key MessageType"),
    ({"UDID": None}, "missing key UDID"),
    ({"Topic": None}, "missing key Topic"),
    ({"MessageType": 7}, "key MessageType must be"),
    ({"UDID": ["list"]}, "key UDID must be"),
    ({"UDID": "../../etc/passwd"}, "UDID has an unexpected format"),
    ({"OSVersion": 17}, "key OSVersion must be str"),
    ({"Topic": b"bytes"}, "key Topic must be"),
])
def test_authenticate_with_missing_keys_or_wrong_types_is_400(app, client, ident, changes, reason):
    message = checkin_message(ident.udid, "Authenticate")
    for key, value in changes.items():
        if value is None:
            message.pop(key)
        else:
            message[key] = value
    assert_refused(app, ident.put(client, "/mdm/checkin", message), 400, reason, NOTHING_STORED)


@pytest.mark.parametrize("changes, reason", [
    ({"Token": None}, "missing key Token"),
    ({"Token": "abcd"}, "key Token must be bytes"),
    ({"Token": b""}, "Token must not be empty"),
    ({"PushMagic": None}, "missing key PushMagic"),
    ({"UnlockToken": "text"}, "key UnlockToken must be bytes"),
])
def test_token_update_with_bad_keys_is_400_and_changes_nothing(app, client, ident, changes, reason):
    ident.checkin(client, "Authenticate")
    message = checkin_message(ident.udid, "TokenUpdate")
    for key, value in changes.items():
        if value is None:
            message.pop(key)
        else:
            message[key] = value
    response = ident.put(client, "/mdm/checkin", message)
    assert response.status_code == 400 and reason in response.get_data(as_text=True)
    found = device(app, ident.udid)
    assert found.push_token is None and found.enrollment_status == "authenticated"
    assert stored_counts(app)["commands"] == 0


def test_oversized_body_is_413_before_reading(app, client, ident):
    limit = app.config["MAX_CHECKIN_BYTES"]
    message = checkin_message(ident.udid, "Authenticate", DeviceName="x" * (limit + 10))
    assert_refused(app, ident.put(client, "/mdm/checkin", message), 413, "exceeds the limit", NOTHING_STORED)
    assert auth_failures(app) == []   # refused before authentication was even attempted


def test_oversized_chunked_body_is_413(app, client, ident):
    limit = app.config["MAX_CHECKIN_BYTES"]
    body = plistlib.dumps(checkin_message(ident.udid, "Authenticate", DeviceName="x" * (limit + 10)))

    # No Content-Length: the server learns the size only while reading (as with chunked encoding).
    response = client.put("/mdm/checkin", input_stream=io.BytesIO(body),
                          headers={"Mdm-Signature": ident.sign(body), "Transfer-Encoding": "chunked"},
                          environ_overrides={"wsgi.input_terminated": True})
    assert_refused(app, response, 413, "exceeds the limit", NOTHING_STORED)


def test_empty_body_is_400(app, client, ident):
    assert_refused(app, ident.put(client, "/mdm/checkin", b""), 400, "empty body", NOTHING_STORED)


# --- over the production server (cheroot, TLS with our CA) ----------------------------------------------------

def test_checkin_over_real_https_including_a_chunked_body(live_server):
    import ssl

    import httpx

    app = live_server.app
    ident = DeviceIdentity(app, "00008110-000A1B2C3D4E801E")
    with app.app_context():
        from mdm.protocol.checkin import server_topic
        topic = server_topic()
    tls = ssl.create_default_context(cafile=live_server.ca_file)

    def put(client, path, body, chunked=False):
        content = iter([body[:100], body[100:]]) if chunked else body
        return client.put(path, content=content, headers={"Mdm-Signature": ident.sign(body)})

    with httpx.Client(base_url=live_server.url, verify=tls, timeout=60) as client:
        response = put(client, "/mdm/checkin",
                       plistlib.dumps(checkin_message(ident.udid, "Authenticate", Topic=topic)))
        assert response.status_code == 200, response.text
        # No Content-Length (chunked): still read whole, verified and parsed.
        response = put(client, "/mdm/checkin",
                       plistlib.dumps(checkin_message(ident.udid, "TokenUpdate", Topic=topic)), chunked=True)
        assert response.status_code == 200, response.text
        response = put(client, "/mdm/connect", plistlib.dumps({"UDID": ident.udid, "Status": "Idle"}))
        assert plistlib.loads(response.content)["Command"]["RequestType"] == "DeviceInformation"
        too_big = b"x" * (app.config["MAX_CHECKIN_BYTES"] + 1)
        assert put(client, "/mdm/checkin", too_big, chunked=True).status_code == 413
    assert device(app, ident.udid).enrollment_status == "enrolled"


def test_last_seen_is_kept_to_the_minute_without_a_write_per_poll(app):
    from datetime import timedelta
    from mdm.models import utcnow
    with app.app_context():
        device = Device(udid="SEEN-1")
        device.mark_seen()
        first = device.last_seen_at
        device.mark_seen(first + timedelta(seconds=30))
        assert device.last_seen_at == first
        device.mark_seen(first + timedelta(seconds=61))
        assert device.last_seen_at == first + timedelta(seconds=61)
        assert abs((utcnow() - first).total_seconds()) < 60
