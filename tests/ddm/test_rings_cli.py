"""Default deployment rings and the operator CLI (`flask mdm patch|groups|catalog|recompute`, --json)."""
from __future__ import annotations

import json

import pytest

from apps import FEEDS
from mdm.extensions import db
from mdm.models import AuditEvent, Device

FEED_2024 = FEEDS / "gdmf-pmv-2024-09-20-sample.json"


@pytest.fixture
def cli(app):
    runner = app.test_cli_runner()

    def run(*args, ok=True):
        result = runner.invoke(args=["mdm", *args, "--json"])
        assert (result.exit_code == 0) is ok, result.output
        return json.loads(result.output)
    return run


def add_devices(app, *specs):
    with app.app_context():
        for udid, product_name, os_version in specs:
            db.session.add(Device(udid=udid, serial_number=f"SN-{udid}", product_name=product_name,
                                  os_version=os_version, enrollment_status="enrolled"))
        db.session.commit()


# ---- rings ------------------------------------------------------------------------------------------

def test_load_defaults_creates_four_rings_once(app, cli):
    first = cli("patch", "load-defaults")
    assert first["created"] == 4
    assert [(r["ring"], r["policy"]) for r in first["rings"]] == [
        ("Vanguard", "Vanguard (iOS)"), ("Early Adoption", "Early Adoption (iOS)"),
        ("General Adoption", "General Adoption (iOS)"), ("Late Adoption", "Late Adoption (iOS)")]
    policies = {p["name"]: p for p in cli("patch", "list")["policies"]}
    expected = {"Vanguard (iOS)": (1, 3), "Early Adoption (iOS)": (7, 7), "General Adoption (iOS)": (15, 10),
                "Late Adoption (iOS)": (30, 10)}
    assert {n: (p["deferral_days"], p["grace_days"]) for n, p in policies.items()} == expected
    assert all(p["enforce"] and p["local_time"] and p["policy_group"] == n[:-6] for n, p in policies.items())
    # Everything else at Apple's defaults.
    assert {(p["auto_download"], p["notifications_all"], p["rsr_offer"], p["stay_on_major"])
            for p in policies.values()} == {("Allowed", True, True, False)}

    again = cli("patch", "load-defaults")
    assert again["created"] == 0
    assert [r["policy_id"] for r in again["rings"]] == [r["policy_id"] for r in first["rings"]]
    assert not any(r["created_group"] for r in again["rings"])
    with app.app_context():
        from mdm.ddm.models import PatchPolicy, PolicyGroup
        assert (PatchPolicy.query.count(), PolicyGroup.query.count()) == (4, 4)


def test_a_deleted_ring_policy_comes_back_and_edits_are_kept(app, cli):
    cli("patch", "load-defaults")
    cli("patch", "edit", "Vanguard", "--grace-days", "5")      # a ring name finds its iOS policy
    cli("patch", "delete", "Late Adoption (iOS)")
    result = cli("patch", "load-defaults")
    assert result["created"] == 1 and [r["ring"] for r in result["rings"] if r["created_policy"]] == ["Late Adoption"]
    assert cli("patch", "show", "Vanguard")["policy"]["grace_days"] == 5


# ---- patch CLI --------------------------------------------------------------------------------------

def test_patch_create_edit_show_delete(app, cli):
    created = cli("patch", "create", "--name", "Pilot", "--deferral-days", "14", "--enforce", "--local-time",
                  "07:30", "--details-url", "https://intranet.example/updates", "--notifications", "deadline-only",
                  "--auto-download", "AlwaysOn", "--auto-install-os", "AlwaysOn", "--beta-enrollment", "AlwaysOn",
                  "--beta-program", "AppleSeed=tok-123", "--stay-on-major")["policy"]
    assert (created["deferral_days"], created["enforce"], created["grace_days"], created["local_time"]) == (
        14, True, 30, "07:30")
    assert (created["notifications_all"], created["stay_on_major"]) == (False, True)
    assert created["beta_programs"] == [["AppleSeed", "***"]]          # tokens never printed
    edited = cli("patch", "edit", "Pilot", "--no-enforce", "--across-majors", "--no-beta-programs")["policy"]
    assert (edited["enforce"], edited["stay_on_major"], edited["beta_programs"], edited["deferral_days"]) == (
        False, False, [], 14)
    assert cli("patch", "show", str(created["id"]))["policy"]["name"] == "Pilot"
    assert cli("patch", "delete", "Pilot")["deleted"] == "Pilot"
    missing = cli("patch", "show", "Pilot", ok=False)
    assert missing["errors"][0]["field"] == "policy"
    with app.app_context():
        actions = [e.action for e in AuditEvent.query.order_by(AuditEvent.id)]
        assert actions[-3:] == ["patch_policy.create", "patch_policy.update", "patch_policy.delete"]
        assert all(e.actor == "cli" for e in AuditEvent.query.filter(AuditEvent.action.like("patch_policy.%")))


def test_patch_cli_reports_every_invalid_field(cli):
    result = cli("patch", "create", "--deferral-days", "120", "--enforce", "--grace-days", "400",
                 "--details-url", "intranet/x", "--auto-download", "AlwaysOff", "--auto-install-os", "AlwaysOn",
                 ok=False)
    fields = {e["field"]: e["message"] for e in result["errors"]}
    assert set(fields) == {"deferral_days", "grace_days", "local_time", "details_url", "auto_install_os"}
    assert "Invalid global settings declaration" in fields["auto_install_os"]
    assert cli("patch", "list")["policies"] == []


def test_patch_cli_text_errors_go_to_stderr_with_exit_status_1(app):
    result = app.test_cli_runner().invoke(args=["mdm", "patch", "create", "--deferral-days", "91"])
    assert result.exit_code == 1
    assert "error: deferral_days: Defer OS updates must be 0 (no deferral) or between 1 and 90" in result.output


# ---- groups, binding, recompute ---------------------------------------------------------------------

def test_groups_bind_and_recompute_from_the_cli(app, cli):
    add_devices(app, ("p1", "iPhone15,2", "17.5.1"), ("p2", "iPhone15,2", "18.0"), ("m1", "Mac14,2", "14.0"))
    cli("catalog", "sync", "--file", str(FEED_2024))
    cli("patch", "load-defaults")
    cli("groups", "create", "Pilot users", "--description", "IT staff")
    assert cli("groups", "add", "Pilot users", "p1", "SN-p2", "m1")["added"] == [1, 2, 3]
    assert cli("groups", "add", "Pilot users", "p1")["added"] == []          # already a member
    assert cli("groups", "add", "Pilot users", "nope", ok=False)["errors"][0]["field"] == "device"
    assert cli("patch", "bind", "Vanguard", "--group", "Pilot users")["bindings_created"] == 1
    listed = cli("groups", "list")["groups"]
    assert listed[0]["policies"] == ["Vanguard (iOS)"] and len(listed[0]["devices"]) == 3
    assert cli("patch", "show", "Vanguard")["policy"]["devices"] == 2          # the Mac is not planned
    assert cli("recompute")["changed"] == []                                     # already current
    assert cli("recompute", "--device", "nope", ok=False)["errors"][0]["field"] == "device"
    assert cli("groups", "remove", "Pilot users", "p2")["removed"] == [2]
    assert cli("patch", "show", "Vanguard")["policy"]["devices"] == 1
    assert cli("patch", "unbind", "Vanguard", "--group", "Pilot users")["bindings_removed"] == 1
    assert cli("patch", "show", "Vanguard")["policy"]["devices"] == 0
    cli("patch", "bind", "Vanguard", "--group", "Pilot users")
    assert cli("groups", "delete", "Pilot users")["former_members"] == [1, 3]
    assert cli("patch", "show", "Vanguard")["policy"]["devices"] == 0
    assert cli("groups", "create", "pilot USERS")["group"]["name"] == "pilot USERS"
    assert "already exists" in cli("groups", "create", "Pilot Users", ok=False)["errors"][0]["message"]


def test_patch_results_prints_one_line_per_device(app, cli):
    add_devices(app, ("p1", "iPhone15,2", "17.5.1"))
    cli("patch", "load-defaults")
    cli("patch", "bind", "Early Adoption", "--device", "p1")
    result = cli("patch", "results", "Early Adoption")
    assert result["policy"] == "Early Adoption (iOS)"
    assert [r.get("device_id") for r in result["results"]] == [1]
    text = app.test_cli_runner().invoke(args=["mdm", "patch", "results", "Early Adoption"])
    assert text.exit_code == 0 and len(text.output.strip().splitlines()) == 1
