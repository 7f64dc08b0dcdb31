"""Hostile input on every device-facing endpoint: each is refused with a specific 4xx (never 401, never 5xx),
stores nothing, and is logged with its reason (never with the secret it carried).

What test_certauth.py, test_checkin.py, test_status.py and test_scep.py already prove (status codes, audit
rows) is not repeated; this file adds the log lines, the "no catch-all" check, the parser's own limits
(depth while parsing, 64-bit integers, dates, base64, trailing junk, UTF-16 entities), DDM status abuse and
the brute-force throttle of the enrollment endpoints.
"""
from __future__ import annotations

import base64
import json
import logging
import plistlib
import struct
import sys

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from device_identity import DeviceIdentity, checkin_message, device_key, expired_identity
from mdm import plistio
from mdm.ddm.state_models import DeclarationSet, DeviceStatus, StatusReport
from mdm.pki import create_ca, issue_certificate
from mdm.enroll.tokens import create_token
from mdm.models import AuditEvent, Command, Device, EnrollmentToken
from mdm.accounts.throttle import FailureThrottle
from refusals import assert_refused, every_table

pytestmark = pytest.mark.app_settings(ENROLL_FAILURES_PER_MINUTE=5)


@pytest.fixture
def enrolled(app, client):
    ident = DeviceIdentity(app, "00008110-000A1B2C3D4E801E")
    ident.enroll(client)
    return ident


def command_states(app) -> list[tuple]:
    with app.app_context():
        return [(c.uuid, c.status, c.response) for c in Command.query.order_by(Command.id)]


# --- Mdm-Signature: missing, malformed, replayed, foreign ---------------------------------------------------

def _signature_cases(app, enrolled):
    body = plistlib.dumps(checkin_message(enrolled.udid, "TokenUpdate"))
    earlier = plistlib.dumps(checkin_message(enrolled.udid, "TokenUpdate", PushMagic="EARLIER"))
    other = DeviceIdentity(app)
    truncated = base64.b64encode(base64.b64decode(enrolled.sign(body))[:200]).decode()
    return body, {
        "missing": ("", "missing Mdm-Signature"),
        "malformed": (truncated, "not a CMS structure"),
        # A signature captured from an earlier request, replayed over a new body.
        "replayed": (enrolled.sign(earlier), "does not match the request body"),
        # Another device's valid signature over exactly this body.
        "foreign": (other.sign(body), "not bound to this device"),
    }


@pytest.mark.parametrize("case", ["missing", "malformed", "replayed", "foreign"])
def test_bad_mdm_signature_is_400_logged_without_the_signature(app, client, enrolled, caplog, case):
    body, cases = _signature_cases(app, enrolled)
    signature, reason = cases[case]
    before = every_table(app)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        response = client.put("/mdm/checkin", data=body,
                              headers={"Mdm-Signature": signature} if signature else {})
    assert_refused(app, response, 400, reason, before, caplog, secret=signature[-60:] or None)
    with app.app_context():
        assert Device.query.one().push_magic != "EARLIER"


# --- identity certificates: another CA, expired, bound to another device; wrong Topic -------------------------

def _foreign_ca_identity(app):
    other_key, other_ca = create_ca("Somebody Else")
    key = device_key()
    cert = issue_certificate(other_key, other_ca, key.public_key(),
                             x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intruder")]),
                             days=30, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    return DeviceIdentity(app, key=key, cert=cert, register=False)


@pytest.mark.parametrize("case, reason", [("another CA", "not issued by our CA"), ("expired", "expired"),
                                          ("another device's", "bound to another device")])
def test_bad_identity_certificates_on_the_command_endpoint(app, client, enrolled, caplog, case, reason):
    if case == "another CA":
        intruder = _foreign_ca_identity(app)
    elif case == "expired":
        key, cert = expired_identity(app)
        intruder = DeviceIdentity(app, key=key, cert=cert)
    else:
        intruder = DeviceIdentity(app)
        intruder.enroll(client)
    before, states = every_table(app), command_states(app)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        # Claiming the enrolled device's UDID, taking its next command.
        response = intruder.put(client, "/mdm/connect", {"UDID": enrolled.udid, "Status": "Idle"})
    assert_refused(app, response, 400, reason, before, caplog)
    assert command_states(app) == states        # nothing was handed out (still "queued")


def test_wrong_topic_is_logged(app, client, caplog):
    ident = DeviceIdentity(app)
    before = every_table(app)
    with caplog.at_level(logging.INFO):
        response = ident.checkin(client, "Authenticate", Topic="com.apple.mgmt.External.someone-else")
    assert_refused(app, response, 400, "is not this server's push topic", before, caplog)


# --- XML: DOCTYPE, entities, binary, cyclic, depth, junk ------------------------------------------------------

def _cyclic_binary_plist() -> bytes:
    """bplist00 whose only object is an array containing itself (object 0 -> object 0)."""
    objects = b"\xa1\x00"                           # array of 1, ref to object 0
    offsets = bytes([8])                            # object 0 at offset 8
    trailer = struct.pack(">6xBBQQQ", 1, 1, 1, 0, 8 + len(objects))
    return b"bplist00" + objects + offsets + trailer


EXTERNAL_ENTITY = (b'<?xml version="1.0"?><!DOCTYPE plist SYSTEM "file:///etc/passwd">'
                   b'<plist version="1.0"><dict><key>MessageType</key><string>&xxe;</string></dict></plist>')
UTF16_ENTITIES = ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE plist [<!ENTITY a "aaaa">]>'
                  '<plist version="1.0"><dict><key>MessageType</key><string>&a;</string></dict></plist>'
                  ).encode("utf-16")


@pytest.mark.parametrize("name, body, reason", [
    ("external entity", EXTERNAL_ENTITY, "entity references are not allowed"),
    ("UTF-16 with entities", UTF16_ENTITIES, "not an XML property list"),
    ("cyclic binary plist", _cyclic_binary_plist(), "binary plist"),
    ("trailing junk", plistlib.dumps({"MessageType": "Authenticate"}) + b"<junk/>", "junk after document element"),
    ("two documents", plistlib.dumps({"a": 1}) * 2, "malformed plist"),
    ("text between values", b"<plist><dict>junk<key>a</key><string>b</string></dict></plist>", "text outside"),
    ("unknown element", b"<plist><dict><key>a</key><script>b</script></dict></plist>", "unknown element"),
    ("key without value", b"<plist><dict><key>a</key></dict></plist>", "has no value"),
    ("value without key", b"<plist><dict><string>b</string></dict></plist>", "without a <key>"),
    ("only whitespace", b" \n\t ", "empty body"),
])
def test_hostile_xml_is_400_and_logged(app, client, caplog, name, body, reason):
    ident = DeviceIdentity(app)
    before = every_table(app)
    with caplog.at_level(logging.INFO):
        response = ident.put(client, "/mdm/checkin", body)
    assert_refused(app, response, 400, reason, before, caplog)


@pytest.mark.parametrize("body, reason", [
    (UTF16_ENTITIES, "internal subset"),
    ('<!DOCTYPE plist SYSTEM "x.dtd"><plist><dict><key>a</key><string>&b;</string></dict></plist>'
     .encode("utf-16"), "entity references are not allowed"),
])
def test_the_reader_itself_refuses_entities_the_byte_scan_cannot_see(body, reason):
    # Behind the byte scan, expat's own handlers refuse them (here in UTF-16, invisible to the scan).
    with pytest.raises(plistio.PlistError, match=reason):
        plistio._Reader().parse(body)


def test_the_cyclic_binary_plist_really_is_cyclic():
    # What the standard library makes of it: a list that contains itself. We never let it that far.
    value = plistlib.loads(_cyclic_binary_plist())
    assert value[0] is value


def test_100000_deep_nesting_is_refused_while_parsing_without_recursion(app, client, enrolled, caplog):
    depth = 100_000
    deep = b"<array>" * depth + b"</array>" * depth
    body = (b'<?xml version="1.0"?><plist version="1.0"><dict><key>UDID</key><string>' + enrolled.udid.encode()
            + b"</string><key>Status</key><string>Idle</string><key>Deep</key>" + deep + b"</dict></plist>")
    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)   # the reader must not need the stack, whatever the depth
    try:
        with pytest.raises(plistio.PlistError, match="nested too deeply"):
            plistio.loads_xml(body)
    finally:
        sys.setrecursionlimit(old_limit)
    before, states = every_table(app), command_states(app)
    with caplog.at_level(logging.INFO):
        response = enrolled.put(client, "/mdm/connect", body)    # 1.5 MB: within the command endpoint limit
    assert_refused(app, response, 400, "nested too deeply", before, caplog)
    assert command_states(app) == states
    assert not any("RecursionError" in r.getMessage() for r in caplog.records)


def test_nesting_up_to_the_limit_is_accepted():
    ok = b"<plist><dict><key>a</key>" + b"<array>" * (plistio.MAX_DEPTH - 1) + b"</array>" * (plistio.MAX_DEPTH - 1) \
        + b"</dict></plist>"
    value = plistio.loads_xml(ok)
    for _ in range(plistio.MAX_DEPTH - 1):
        value = value["a"] if isinstance(value, dict) else value[0] if value else []
    with pytest.raises(plistio.PlistError, match="nested too deeply"):
        plistio.loads_xml(ok.replace(b"<array>", b"<array><array>", 1).replace(b"</array>", b"</array></array>", 1))


# --- values: types, dates, integers, base64 -------------------------------------------------------------------

def _acknowledge_body(udid: str, command_uuid: str, value_xml: bytes) -> bytes:
    return (b'<?xml version="1.0"?><plist version="1.0"><dict><key>UDID</key><string>' + udid.encode()
            + b"</string><key>Status</key><string>Acknowledged</string><key>CommandUUID</key><string>"
            + command_uuid.encode() + b"</string><key>QueryResponses</key><dict><key>BatteryLevel</key>"
            + value_xml + b"</dict></dict></plist>")


@pytest.mark.parametrize("value_xml, reason", [
    (b"<integer>18446744073709551616</integer>", "64-bit"),                 # 2**64
    (b"<integer>9223372036854775808</integer>", "64-bit"),                  # 2**63: beyond our signed columns
    (b"<integer>-9223372036854775809</integer>", "64-bit"),
    (b"<integer>" + b"9" * 5000 + b"</integer>", "is not an integer"),        # never handed to int()
    (b"<integer>12abc</integer>", "is not an integer"),
    (b"<real>nan</real>", "not a finite real"),
    (b"<real>1e999</real>", "real out of range"),
    (b"<date>2024-13-45T00:00:00Z</date>", "invalid date"),
    (b"<date>2024-02-30T10:00:00Z</date>", "invalid date"),
    (b"<date>yesterday</date>", "invalid date"),
    (b"<data>!!!not*base64!!!</data>", "invalid base64"),
    (b"<data>QQ=</data>", "invalid base64"),
])
def test_bad_values_in_a_command_result_are_400_and_the_command_stays_open(app, client, enrolled, caplog,
                                                                            value_xml, reason):
    command = enrolled.connect(client)                # hands out DeviceInformation: now "sent"
    command_uuid = plistlib.loads(command.data)["CommandUUID"]
    before, states = every_table(app), command_states(app)
    with caplog.at_level(logging.INFO):
        response = enrolled.put(client, "/mdm/connect", _acknowledge_body(enrolled.udid, command_uuid, value_xml))
    assert_refused(app, response, 400, reason, before, caplog)
    assert command_states(app) == states              # not Acknowledged, no response stored
    assert dict((u, s) for u, s, _ in states)[command_uuid] == "sent"


def test_64_bit_edges_and_well_formed_values_are_accepted(app, client, enrolled):
    command_uuid = plistlib.loads(enrolled.connect(client).data)["CommandUUID"]
    value = b"<integer>9223372036854775807</integer><key>Min</key><integer>-9223372036854775808</integer>" \
            b"<key>When</key><date>2024-02-29T23:59:59Z</date><key>Blob</key><data>\n\tQUJD\n\t</data>"
    response = enrolled.put(client, "/mdm/connect", _acknowledge_body(enrolled.udid, command_uuid, value))
    assert response.status_code == 200
    with app.app_context():
        stored = Command.query.filter_by(uuid=command_uuid).one()
        assert stored.status == "Acknowledged"
        assert plistlib.loads(stored.response)["QueryResponses"]["BatteryLevel"] == 2 ** 63 - 1


def test_bad_base64_push_token_is_400_and_changes_nothing(app, client, caplog):
    ident = DeviceIdentity(app)
    assert ident.checkin(client, "Authenticate").status_code == 200
    body = plistlib.dumps(checkin_message(ident.udid, "TokenUpdate")).replace(
        base64.b64encode(bytes.fromhex("ab" * 32)), b"q83vq83v%%%%")
    before = every_table(app)
    with caplog.at_level(logging.INFO):
        response = ident.put(client, "/mdm/checkin", body)
    assert_refused(app, response, 400, "invalid base64", before, caplog)
    with app.app_context():
        assert Device.query.one().push_token is None


@pytest.mark.parametrize("message, reason", [
    ({"Status": 1}, "key Status must be"),
    ({"Status": "Acknowledged", "CommandUUID": {"x": 1}}, "key CommandUUID must be"),
    ({"Status": "Idle", "UDID": 12}, "key UDID must be"),
    ({"Status": "Finished"}, "unknown Status"),
])
def test_wrong_types_on_the_command_endpoint(app, client, enrolled, caplog, message, reason):
    before, states = every_table(app), command_states(app)
    with caplog.at_level(logging.INFO):
        response = enrolled.put(client, "/mdm/connect", {"UDID": enrolled.udid, **message})
    assert_refused(app, response, 400, reason, before, caplog)
    assert command_states(app) == states


@pytest.mark.parametrize("message_type", [["DeclarativeManagement"], {"a": 1}, 7])
def test_a_message_type_that_is_not_a_string_is_400_on_the_check_in_endpoint(app, client, enrolled, caplog,
                                                                             message_type):
    """The DDM read path looks the message type up before anything else: a list or dictionary there is a
    refusal, not a server error."""
    before = every_table(app)
    with caplog.at_level(logging.INFO):
        response = enrolled.put(client, "/mdm/checkin", {"MessageType": message_type, "UDID": enrolled.udid,
                                                         "Endpoint": "tokens"})
    assert response.status_code == 400
    assert every_table(app) == before


def test_empty_body_and_trailing_junk_on_the_command_endpoint(app, client, enrolled, caplog):
    before = every_table(app)
    with caplog.at_level(logging.INFO):
        assert_refused(app, enrolled.put(client, "/mdm/connect", b""), 400, "empty body", before, caplog)
        junk = plistlib.dumps({"UDID": enrolled.udid, "Status": "Idle"}) + b"\x00garbage"
        assert_refused(app, enrolled.put(client, "/mdm/connect", junk), 400, "malformed plist", before, caplog)
    # Whitespace after </plist> is not junk.
    body = plistlib.dumps({"UDID": enrolled.udid, "Status": "Idle"}) + b"\n\n"
    assert enrolled.put(client, "/mdm/connect", body).status_code == 200


# --- DDM status reports ------------------------------------------------------------------------------------------

def status_counts(app) -> tuple:
    with app.app_context():
        return StatusReport.query.count(), DeviceStatus.query.count()


def _status(ident, client, data, *, as_string: bool = False):
    fields = {"Endpoint": "status", "Data": data.decode("latin-1") if as_string else data}
    return ident.checkin(client, "DeclarativeManagement", **fields)


def _deep_json(depth: int) -> bytes:
    return b'{"StatusItems":{"x":' + b"[" * depth + b"]" * depth + b'},"Errors":[]}'


@pytest.mark.parametrize("case", ["data not base64", "data as a string", "not JSON", "100000 deep", "33 deep"])
def test_malformed_status_data_is_400_logged_and_stores_nothing(app, client, enrolled, caplog, case):
    before = every_table(app)
    with caplog.at_level(logging.INFO):
        if case == "data not base64":
            body = plistlib.dumps(checkin_message(enrolled.udid, "DeclarativeManagement", Endpoint="status",
                                                  Data=b"{}"))
            body = body.replace(base64.b64encode(b"{}"), b"e30=*^%$#!")
            response, reason = enrolled.put(client, "/mdm/checkin", body), "invalid base64"
        elif case == "data as a string":
            response, reason = _status(enrolled, client, b'{"StatusItems":{}}', as_string=True), "key Data must be"
        elif case == "not JSON":
            response, reason = _status(enrolled, client, b"\xff\xfe<status/>"), "Data is not JSON"
        elif case == "100000 deep":
            response, reason = _status(enrolled, client, _deep_json(100_000)), "nested deeper than"
        else:
            response, reason = _status(enrolled, client, _deep_json(33)), "nested deeper than"
    assert_refused(app, response, 400, reason, before, caplog)


def test_status_json_depth_is_counted_outside_strings():
    from mdm.ddm.status import MAX_JSON_DEPTH, json_depth, parse_report
    assert json_depth(b'{"a": "[[[[{{{{\\"]]]]"}') == 1
    nested = _deep_json(MAX_JSON_DEPTH - 2)         # the object, StatusItems, then the arrays
    assert json_depth(nested) == MAX_JSON_DEPTH
    assert isinstance(parse_report(nested)["StatusItems"]["x"], list)


def _declarations_report(*entries) -> bytes:
    return json.dumps({"StatusItems": {"management": {"declarations": {"configurations": list(entries)}}},
                       "Errors": []}).encode()


def _entry(identifier: str, token: str = "t1", **extra) -> dict:
    return {"identifier": identifier, "server-token": token, "active": True, "valid": "valid", **extra}


def test_status_naming_another_devices_declarations_is_403(app, client, enrolled, caplog):
    assert enrolled.checkin(client, "DeclarativeManagement", Endpoint="tokens").status_code == 200
    with app.app_context():
        served = {d["Identifier"] for d in DeclarationSet.query.one().declarations}
    assert "mdm.status-subscriptions" in served and "mdm.patch.999.enforcement" not in served
    before = every_table(app)
    with caplog.at_level(logging.INFO):
        response = _status(enrolled, client, _declarations_report(_entry("mdm.status-subscriptions"),
                                                                  _entry("mdm.patch.999.enforcement")))
    assert_refused(app, response, 403, "'mdm.patch.999.enforcement' was not served to this device", before, caplog)

    # Its own declarations, a removal, and identifiers outside our namespace are fine.
    ok = _declarations_report(_entry("mdm.status-subscriptions"), _entry("com.example.other"),
                              {"identifier": "mdm.patch.999.enforcement", "_removed": True})
    assert _status(enrolled, client, ok).status_code == 200
    assert status_counts(app) == (1, 1)
    with app.app_context():
        assert set(DeviceStatus.query.one().declarations) == {"mdm.status-subscriptions", "com.example.other"}


# --- brute force: enrollment tokens and SCEP (limit 5 per minute in this file's app) ---------------------------

def _audits(app, action: str) -> list[AuditEvent]:
    with app.app_context():
        return AuditEvent.query.filter_by(action=action).all()


def test_enrollment_token_guessing_is_throttled_per_address_and_audited(app, client, caplog):
    with app.app_context():
        real = create_token("real", max_uses=10).token
    before_uses = 0
    with caplog.at_level(logging.INFO):
        for i in range(5):
            assert client.get(f"/enroll/guess-{i}").status_code == 404
        throttled = client.get("/enroll/guess-5")
        assert throttled.status_code == 429
        assert 1 <= int(throttled.headers["Retry-After"]) <= 60
        # The right token from the same address waits too, and is not spent.
        assert client.get(f"/enroll/{real}").status_code == 429
    with app.app_context():
        assert EnrollmentToken.query.filter_by(token=real).one().uses == before_uses
    events = _audits(app, "enroll.throttled")
    assert len(events) == 1 and events[0].source == "127.0.0.1" and "5 failed attempts" in events[0].detail
    messages = [r.getMessage() for r in caplog.records]
    assert any("429" in m and "too many failed enrollment attempts" in m for m in messages)
    assert not any("guess-" in m or real in m for m in messages)      # tokens are never logged
    # Another address is not affected.
    other = client.get(f"/enroll/{real}", environ_overrides={"REMOTE_ADDR": "10.0.0.8"})
    assert other.status_code == 200


def test_scep_refusals_are_throttled_and_successes_are_not_counted(app, client, caplog):
    with caplog.at_level(logging.INFO):
        for _ in range(5):
            response = client.post("/scep?operation=PKIOperation", data=b"\x30\x03junk")
            assert response.status_code == 400
        response = client.post("/scep?operation=PKIOperation", data=b"\x30\x03junk")
        assert response.status_code == 429 and response.headers["Retry-After"]
        # GetCACaps/GetCACert are public and never throttled.
        assert client.get("/scep?operation=GetCACaps").status_code == 200
    assert len(_audits(app, "enroll.throttled")) == 1
    assert any("POST /scep -> 429" in r.getMessage() for r in caplog.records)
    # Successful profile downloads from a busy NAT address never count.
    with app.app_context():
        token = create_token("nat", max_uses=None).token
    for _ in range(8):
        assert client.get(f"/enroll/{token}", environ_overrides={"REMOTE_ADDR": "10.0.0.9"}).status_code == 200


def test_throttle_window_slides_and_memory_is_bounded():
    now = [1000.0]
    throttle = FailureThrottle(3, window_seconds=60, clock=lambda: now[0], max_keys=2)
    assert [throttle.record_failure("a") for _ in range(3)] == [False, False, True]
    assert throttle.retry_after("a") == 60
    now[0] += 59.5
    assert throttle.retry_after("a") == 1
    now[0] += 1
    assert throttle.retry_after("a") is None            # the failures left the window
    throttle.record_failure("b")
    throttle.record_failure("c")
    throttle.record_failure("d")
    assert len(throttle._failures) == 2                  # the oldest address was forgotten
    assert FailureThrottle(0).record_failure("x") is False and FailureThrottle(0).retry_after("x") is None


def test_forwarded_address_counts_only_behind_a_trusted_proxy(app_factory):
    app = app_factory(ENROLL_FAILURES_PER_MINUTE=2, TRUSTED_PROXY_ADDRESSES="127.0.0.1")
    client = app.test_client()
    for i in range(2):
        client.get(f"/enroll/x{i}", headers={"X-Forwarded-For": "203.0.113.5"})
    assert client.get("/enroll/x", headers={"X-Forwarded-For": "203.0.113.5"}).status_code == 429
    assert client.get("/enroll/x", headers={"X-Forwarded-For": "203.0.113.6"}).status_code == 404
