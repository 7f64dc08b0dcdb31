"""Status intake: real status reports, incremental merge, FullReport, _removed, Errors, facts, 400s."""
from __future__ import annotations

import json

import pytest

from appleschema import validate_protocol
from apps import FIXTURES
from mdm.ddm import status as intake
from mdm.ddm.protocol import handle_declarative_management
from mdm.ddm.state_models import DeviceStatus, StatusReport
from mdm.ddm.sync import current_set
from mdm.extensions import db
from mdm.models import Device
from mdm.signals import device_facts_changed

REAL_REPORTS = sorted(FIXTURES.glob("*ddm-status-report*.json"))
IPHONE_REPORT = FIXTURES / "kmfddm-ddm-status-report.macOS.2022-06-28.json"   # an iPhone10,2 on iOS 16.0


def make_device(**facts):
    values = dict(udid="STATUS-1", product_name="iPhone15,2", os_version="17.5", build_version="21F79",
                  is_supervised=True, enrollment_status="enrolled")
    values.update(facts)
    device = Device(**values)
    db.session.add(device)
    db.session.commit()
    return device


def report(items, full=None, errors=None) -> bytes:
    body = {"StatusItems": items, "Errors": errors or []}
    if full is not None:
        body["FullReport"] = full
    return json.dumps(body).encode()


def declaration_entry(identifier, token, valid="valid", active=True, **extra):
    return {"identifier": identifier, "server-token": token, "valid": valid, "active": active, **extra}


# ---- parsing (no database) -----------------------------------------------------------------------------
@pytest.mark.parametrize("path", REAL_REPORTS, ids=lambda p: p.name)
def test_real_status_reports_parse_and_match_apples_schema(path):
    parsed = intake.parse_report(path.read_bytes())
    assert validate_protocol("statusreport", parsed) == []
    assert isinstance(intake.item(parsed["StatusItems"], "management.declarations"), dict)


@pytest.mark.parametrize("body, reason", [
    (b"", "no Data"),
    (b"not json", "not JSON"),
    (b"[]", "JSON object"),
    (b'"a string"', "JSON object"),
    (b'{"Errors": []}', "StatusItems"),
    (b'{"StatusItems": [], "Errors": []}', "StatusItems"),
])
def test_unreadable_reports_are_refused_with_a_reason(body, reason):
    with pytest.raises(intake.StatusReportError, match=reason):
        intake.parse_report(body)


GOOD_ITEM = {"model": {"identifier": "iPhone15,2"}}


def _with_good_item(items: dict) -> dict:
    return {"device": {**GOOD_ITEM, **items.pop("device", {})}, **items}


# Changed by issue 8: these used to refuse the whole report; now the bad part is left out and the rest kept.
@pytest.mark.parametrize("body, reason", [
    (b'{"StatusItems": {"device": {"model": {"identifier": "iPhone15,2"}}}, "Errors": {}}', "Errors must be an array"),
    (b'{"StatusItems": {"device": {"model": {"identifier": "iPhone15,2"}}}, "Errors": [{"Reasons": []}]}',
     "StatusItem"),
    (b'{"StatusItems": {"device": {"model": {"identifier": "iPhone15,2"}}}, "Errors": [], "FullReport": "yes"}',
     "FullReport"),
    (report(_with_good_item({"softwareupdate": {"install-state": 3}})), "softwareupdate.install-state"),
    (report(_with_good_item({"softwareupdate": {"failure-reason": {"count": "2"}}})), "failure-reason.count"),
    (report(_with_good_item({"softwareupdate": {"failure-reason": {"count": True}}})), "failure-reason.count"),
    (report(_with_good_item({"softwareupdate": {"pending-version": {"os-version": "18.1"}}})), "build-version"),
    (report(_with_good_item({"softwareupdate": {"install-reason": {"reason": [1]}}})), "install-reason"),
    (report(_with_good_item({"device": {"operating-system": {"version": 18}}})), "device.operating-system.version"),
    (report(_with_good_item({"management": {"declarations": {"configurations": [
        {"identifier": "a", "server-token": "t", "active": True, "valid": "maybe"}]}}})), "valid"),
    (report(_with_good_item({"management": {"declarations": {"configurations": [
        {"identifier": "a", "server-token": "t", "active": "yes", "valid": "valid"}]}}})), "active"),
    (report(_with_good_item({"management": {"declarations": {"activations": {}}}})), "activations must be an array"),
    (report(_with_good_item({"management": {"declarations": "none"}})), "management.declarations must be"),
])
def test_a_malformed_part_is_left_out_with_a_reason_and_the_rest_kept(body, reason):
    parsed, dropped = intake.read_report(body)
    assert len(dropped) == 1 and reason in dropped[0]
    assert intake.item(parsed["StatusItems"], "device.model.identifier") == "iPhone15,2"
    assert intake.parse_report(body) == parsed
    assert "FullReport" not in parsed or isinstance(parsed["FullReport"], bool)
    assert isinstance(parsed["Errors"], list)


def test_one_bad_declaration_entry_leaves_its_siblings():
    parsed, dropped = intake.read_report(report({"management": {"declarations": {"configurations": [
        declaration_entry("mdm.one", "t1"), {"identifier": "mdm.two", "active": True},
        declaration_entry("mdm.three", "t3")]}}}))
    assert dropped == ["management.declarations.configurations[1].server-token must be a string"]
    kept = parsed["StatusItems"]["management"]["declarations"]["configurations"]
    assert [e["identifier"] for e in kept] == ["mdm.one", "mdm.three"]


def test_unknown_items_are_kept_but_not_validated():
    parsed = intake.parse_report(report({"future": {"thing": [1, 2]}, "softwareupdate": {"new-item": 5}}))
    assert parsed["StatusItems"]["future"]["thing"] == [1, 2]


def test_incremental_merge_replaces_known_items_whole_and_keeps_the_rest():
    stored = {"softwareupdate": {"failure-reason": {"count": 2, "reason": "no space"}, "install-state": "failed"},
              "device": {"operating-system": {"version": "17.5"}}}
    merged = intake.merge(stored, {"softwareupdate": {"failure-reason": {"count": 0}}})
    assert merged["softwareupdate"]["failure-reason"] == {"count": 0}          # not deep-merged
    assert merged["softwareupdate"]["install-state"] == "failed"              # untouched
    assert merged["device"]["operating-system"]["version"] == "17.5"
    assert stored["softwareupdate"]["failure-reason"]["count"] == 2           # input not mutated


def test_declaration_arrays_merge_by_identifier_and_removed_entries_leave():
    stored = {"management": {"declarations": {
        "activations": [declaration_entry("act", "t1")],
        "configurations": [declaration_entry("a", "t1"), declaration_entry("b", "t1")],
        "assets": [], "management": []}}}
    merged = intake.merge(stored, {"management": {"declarations": {"configurations": [
        declaration_entry("a", "t2", valid="invalid"), {"identifier": "b", "_removed": True},
        declaration_entry("c", "t1")]}}})
    configs = {e["identifier"]: e for e in merged["management"]["declarations"]["configurations"]}
    assert set(configs) == {"a", "c"}
    assert configs["a"]["server-token"] == "t2" and configs["a"]["valid"] == "invalid"
    assert merged["management"]["declarations"]["activations"][0]["identifier"] == "act"


# ---- intake (database) --------------------------------------------------------------------------------
def test_real_iphone_report_updates_facts_and_sends_the_signal(app):
    received = []

    def listener(sender, changed=(), **_):
        received.append((sender.udid, set(changed)))

    with app.app_context():
        device = make_device()
        device_facts_changed.connect(listener)
        try:
            status, body, _ = handle_declarative_management(device, "status", IPHONE_REPORT.read_bytes())
        finally:
            device_facts_changed.disconnect(listener)
        assert (status, body) == (200, b"")
        device = db.session.get(Device, device.id)
        assert (device.os_version, device.build_version, device.product_name) == ("16.0", "20A5303i", "iPhone10,2")
        assert received == [("STATUS-1", {"os_version", "build_version", "product_name"})]
        stored = db.session.get(DeviceStatus, device.id)
        flagged = stored.declarations["0FCD2F56-D5BC-48EA-B98D-E0CCC0C6F9E0"]
        assert flagged["valid"] == "invalid" and flagged["reasons"][0]["code"] == "Error.ConfigurationCannotBeApplied"
        assert flagged["current"] is False          # not a token we ever served this device
        # The user-channel push token in the report is a secret: kept nowhere.
        assert "push-token" not in json.dumps(stored.items)
        assert "bwyw7bcw" not in StatusReport.query.one().body


def test_a_malformed_item_is_ignored_and_logged_and_the_valid_items_are_stored(app, caplog):
    """Changed by issue 8 (this used to answer 400 and store nothing)."""
    with app.app_context():
        device = make_device()
        bad = report({"softwareupdate": {"install-state": "downloading", "failure-reason": {"count": "x"}},
                      "device": {"operating-system": {"version": "18.1"}}})
        with caplog.at_level("WARNING"):
            status, body, _ = handle_declarative_management(device, "status", bad)
        assert status == 200, body
        stored = db.session.get(DeviceStatus, device.id)
        assert stored.items == {"softwareupdate": {"install-state": "downloading"},
                                "device": {"operating-system": {"version": "18.1"}}}
        assert StatusReport.query.count() == 1
        assert db.session.get(Device, device.id).os_version == "18.1"
    assert any("failure-reason.count" in r.getMessage() and "ignored" in r.getMessage() for r in caplog.records)


def test_a_report_that_is_not_json_or_not_an_object_is_400_audited_and_stores_nothing(app):
    from mdm.models import AuditEvent
    with app.app_context():
        device = make_device()
        for data, reason in ((b"not json at all", b"not JSON"), (b"[1, 2]", b"JSON object")):
            status, body, _ = handle_declarative_management(device, "status", data)
            assert status == 400 and reason in body
        assert DeviceStatus.query.count() == 0 and StatusReport.query.count() == 0
        refused = AuditEvent.query.filter_by(action="ddm.status_refused").all()
        assert len(refused) == 2 and {e.object_id for e in refused} == {device.udid}


def test_a_declaration_from_the_set_the_device_held_before_a_change_is_accepted(app):
    """The device fetched a manifest, then its set changed: its next report still names the old
    declaration. That is its own declaration, not another device's."""
    from mdm.ddm.state_models import DeclarationSet
    with app.app_context():
        device = make_device()
        status, body, _ = handle_declarative_management(device, "declaration-items", None)
        assert status == 200
        held = json.loads(body)["Declarations"]["Configurations"][0]
        # The set changes: that declaration is no longer in it (as when a policy stops applying).
        row = db.session.get(DeclarationSet, device.id)
        row.declarations = [d for d in row.declarations if d["Identifier"] != held["Identifier"]]
        row.declarations_token = "changed"
        db.session.commit()
        assert held["Identifier"].startswith(intake.OUR_IDENTIFIER_PREFIX)
        data = report({"management": {"declarations": {"configurations": [
            declaration_entry(held["Identifier"], held["ServerToken"])]}}})
        status, body, _ = handle_declarative_management(device, "status", data)
        assert status == 200, body
        assert held["Identifier"] in db.session.get(DeviceStatus, device.id).declarations
        # A declaration it never held is still refused.
        other = report({"management": {"declarations": {"configurations": [
            declaration_entry("mdm.patch.999.enforcement", "t")]}}})
        assert handle_declarative_management(device, "status", other)[0] == 403


def test_full_report_replaces_and_incremental_merges(app):
    with app.app_context():
        device = make_device()
        intake.ingest(device, report({"softwareupdate": {"install-state": "downloading",
                                                         "pending-version": {"os-version": "18.1",
                                                                             "build-version": "22B83"}},
                                      "custom": {"x": 1}}, full=True))
        intake.ingest(device, report({"softwareupdate": {"install-state": "prepared"}}))
        stored = db.session.get(DeviceStatus, device.id)
        assert stored.items["softwareupdate"] == {"install-state": "prepared",
                                                  "pending-version": {"os-version": "18.1", "build-version": "22B83"}}
        assert stored.items["custom"] == {"x": 1}
        intake.ingest(device, report({"softwareupdate": {"install-state": "none"}}, full=True,
                                     errors=[{"StatusItem": "softwareupdate.pending-version",
                                              "Reasons": [{"Code": "Error.Unavailable"}]}]))
        stored = db.session.get(DeviceStatus, device.id)
        assert stored.items == {"softwareupdate": {"install-state": "none"}}
        assert stored.errors[0]["StatusItem"] == "softwareupdate.pending-version"
        assert stored.report_count == 3 and stored.last_full_report_at == stored.last_report_at


def test_declarations_are_matched_against_the_tokens_we_serve(app):
    with app.app_context():
        device = make_device()
        served = current_set(device)
        db.session.commit()
        ours = {d["Identifier"]: d["ServerToken"] for d in served.declarations}
        activation = "mdm.activation"
        intake.ingest(device, report({"management": {"declarations": {
            "activations": [declaration_entry(activation, ours[activation])],
            "configurations": [declaration_entry("mdm.status-subscriptions", "an-old-token")],
            "assets": [], "management": []}}}, full=True))
        flat = db.session.get(DeviceStatus, device.id).declarations
        assert flat[activation]["current"] is True and flat[activation]["kind"] == "activations"
        assert flat["mdm.status-subscriptions"]["current"] is False


def test_raw_reports_have_bounded_retention(app):
    app.config["DDM_STATUS_REPORTS_KEPT"] = 3
    with app.app_context():
        device = make_device()
        other = make_device(udid="STATUS-2")
        intake.ingest(other, report({"n": 0}))
        for n in range(1, 6):
            intake.ingest(device, report({"n": n}))
        kept = [json.loads(r.body)["StatusItems"]["n"] for r in
                StatusReport.query.filter_by(device_id=device.id).order_by(StatusReport.id)]
        assert kept == [3, 4, 5]
        assert StatusReport.query.filter_by(device_id=other.id).count() == 1
