"""Status intake: real status reports, incremental merge, FullReport, _removed, Errors, facts, 400s."""
from __future__ import annotations

import json

import pytest

from appleschema import validate_protocol
from conftest import FIXTURES
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
    (b'{"Errors": []}', "StatusItems"),
    (b'{"StatusItems": {}, "Errors": {}}', "Errors must be an array"),
    (b'{"StatusItems": {}, "Errors": [{"Reasons": []}]}', "StatusItem"),
    (b'{"StatusItems": {}, "Errors": [], "FullReport": "yes"}', "FullReport"),
    (report({"softwareupdate": {"install-state": 3}}), "softwareupdate.install-state"),
    (report({"softwareupdate": {"failure-reason": {"count": "2"}}}), "failure-reason.count"),
    (report({"softwareupdate": {"failure-reason": {"count": True}}}), "failure-reason.count"),
    (report({"softwareupdate": {"pending-version": {"os-version": "18.1"}}}), "build-version"),
    (report({"softwareupdate": {"install-reason": {"reason": [1]}}}), "install-reason"),
    (report({"device": {"operating-system": {"version": 18}}}), "device.operating-system.version"),
    (report({"management": {"declarations": {"configurations": [{"identifier": "a", "server-token": "t",
                                                                  "active": True, "valid": "maybe"}]}}}), "valid"),
    (report({"management": {"declarations": {"configurations": [{"identifier": "a", "server-token": "t",
                                                                  "active": "yes", "valid": "valid"}]}}}), "active"),
    (report({"management": {"declarations": {"activations": {}}}}), "activations must be an array"),
])
def test_malformed_reports_are_refused_with_a_reason(body, reason):
    with pytest.raises(intake.StatusReportError, match=reason):
        intake.parse_report(body)


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


def test_malformed_status_stores_nothing_and_answers_400(app):
    with app.app_context():
        device = make_device()
        bad = report({"softwareupdate": {"install-state": "downloading", "failure-reason": {"count": "x"}},
                      "device": {"operating-system": {"version": "18.1"}}})
        status, body, _ = handle_declarative_management(device, "status", bad)
        assert status == 400 and b"failure-reason.count" in body
        assert DeviceStatus.query.count() == 0 and StatusReport.query.count() == 0
        assert db.session.get(Device, device.id).os_version == "17.5"


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
