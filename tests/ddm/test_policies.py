"""iOS patch policies: validation (every error names the field and says why), the service with its
audit trail, bindings, conflicts between policies, and recomputation triggered by device changes."""
from __future__ import annotations

import datetime as dt
import json

import pytest

from apps import FEEDS
from mdm.extensions import db
from mdm.models import AuditEvent, Device

FEED_2024 = json.loads((FEEDS / "gdmf-pmv-2024-09-20-sample.json").read_text())
NOW = dt.datetime(2024, 9, 20, 12)


@pytest.fixture
def ctx(app):
    with app.app_context():
        from mdm.ddm import catalog
        catalog.apply_feed(FEED_2024, "test-feed", now=NOW)
        yield app


def errors_of(data, **kwargs):
    from mdm.ddm.policies import validate_settings
    settings, errors = validate_settings(data, **kwargs)
    return {e.field: e.message for e in errors}


# ---- validation -------------------------------------------------------------------------------------

@pytest.mark.parametrize("data,field,fragment", [
    ({"deferral_days": 91}, "deferral_days", "0 (no deferral) or between 1 and 90"),
    ({"deferral_days": -1}, "deferral_days", "between 1 and 90"),
    ({"deferral_days": "ten"}, "deferral_days", "whole number"),
    ({"deferral_days": True}, "deferral_days", "whole number"),
    ({"grace_days": 366}, "grace_days", "between 0 and 365"),
    ({"grace_days": -1}, "grace_days", "between 0 and 365"),
    ({"enforce": True}, "local_time", "required when enforcement is on"),
    ({"enforce": True, "local_time": "25:00"}, "local_time", "HH:MM"),
    ({"enforce": True, "local_time": "9:00"}, "local_time", "HH:MM"),
    ({"details_url": "ftp://example.com"}, "details_url", "http:// or https://"),
    ({"details_url": "example.com/x"}, "details_url", "http:// or https://"),
    ({"enforce": "maybe"}, "enforce", "true or false"),
    ({"cadence": "Sometimes"}, "cadence", "All, Oldest, Newest"),
    ({"auto_download": "Never"}, "auto_download", "Allowed, AlwaysOn, AlwaysOff"),
    ({"name": "  "}, "name", "must not be empty"),
    ({"colour": "red"}, "colour", "unknown field"),
    ({"beta_programs": [["Seed", ""]]}, "beta_programs", "needs a seeding-service token"),
])
def test_invalid_fields_are_named_with_the_reason(ctx, data, field, fragment):
    errors = errors_of(data)
    assert field in errors and fragment in errors[field], errors


@pytest.mark.parametrize("download,install,why", [
    ("Allowed", "AlwaysOn", "user controls downloads"),
    ("AlwaysOff", "Allowed", "downloads are always off"),
    ("AlwaysOff", "AlwaysOn", "downloads are always off"),
])
def test_the_three_automatic_action_combinations_devices_reject(ctx, download, install, why):
    errors = errors_of({"auto_download": download, "auto_install_os": install})
    assert "Invalid global settings declaration" in errors["auto_install_os"] and why in errors["auto_install_os"]
    # auto_install_security is a macOS-only key, never sent to iOS: it does not pair with downloads here.
    assert "auto_install_security" not in errors_of({"auto_download": download, "auto_install_security": install})


@pytest.mark.parametrize("download,install", [("AlwaysOn", "AlwaysOn"), ("Allowed", "Allowed"),
                                              ("AlwaysOn", "AlwaysOff"), ("AlwaysOff", "AlwaysOff"),
                                              ("Allowed", "AlwaysOff"), ("AlwaysOn", "Allowed")])
def test_the_other_automatic_action_combinations_are_accepted(ctx, download, install):
    assert errors_of({"auto_download": download, "auto_install_os": install}) == {}


def test_beta_programs_follow_apples_rules(ctx):
    programs = [("AppleSeed for IT", "tok-1")]
    assert "AlwaysOff" in errors_of({"beta_enrollment": "AlwaysOff", "beta_programs": programs})["beta_programs"]
    assert errors_of({"beta_enrollment": "AlwaysOn", "beta_programs": programs}) == {}
    assert errors_of({"beta_enrollment": "Allowed", "beta_programs": ["Seed=tok-2"]}) == {}
    assert "twice" in errors_of({"beta_programs": [("a", "t"), ("b", "t")]})["beta_programs"]


def test_values_are_stored_as_apples_rangelist_values(ctx):
    from mdm.ddm.policies import validate_settings
    settings, errors = validate_settings({"auto_download": "UserControlled", "auto_install_os": "always-off",
                                          "beta_enrollment": "alwayson", "cadence": "newest",
                                          "deferral_days": "14", "enforce": "on", "local_time": "07:30"})
    assert errors == []
    assert (settings.auto_download, settings.auto_install_os, settings.beta_enrollment, settings.cadence) == (
        "Allowed", "AlwaysOff", "AlwaysOn", "Newest")
    assert (settings.deferral_days, settings.enforce, settings.grace_days) == (14, True, 30)


def test_names_are_unique_with_a_sensible_default(ctx):
    from mdm.ddm.policies import PolicyError, create_policy
    first, second = create_policy({}), create_policy({})
    assert (first.name, second.name) == ("iOS patch policy", "iOS patch policy 2")
    with pytest.raises(PolicyError) as caught:
        create_policy({"name": "ios PATCH policy"})
    assert caught.value.errors[0].field == "name" and "already exists" in caught.value.errors[0].message


# ---- service and audit ------------------------------------------------------------------------------

def test_create_update_delete_are_audited_without_beta_tokens(ctx):
    from mdm.ddm.models import PatchPolicy
    from mdm.ddm.policies import PolicyError, create_policy, delete_policy, update_policy
    policy = create_policy({"name": "Pilot", "beta_programs": [("Seed", "secret-token")]}, actor="alice")
    update_policy(policy.id, {"deferral_days": 5}, actor="bob")
    with pytest.raises(PolicyError, match="deferral_days"):
        update_policy("Pilot", {"deferral_days": 500})
    db.session.rollback()
    assert db.session.get(PatchPolicy, policy.id).deferral_days == 5
    delete_policy("pilot", actor="carol")
    events = AuditEvent.query.filter(AuditEvent.object_type == "patch_policy").order_by(AuditEvent.id).all()
    assert [(e.action, e.actor) for e in events] == [("patch_policy.create", "alice"),
                                                     ("patch_policy.update", "bob"),
                                                     ("patch_policy.delete", "carol")]
    assert events[1].before["deferral_days"] == 0 and events[1].after["deferral_days"] == 5
    assert "secret-token" not in json.dumps([e.before for e in events] + [e.after for e in events])
    assert PatchPolicy.query.count() == 0


def add_device(udid, product_name, os_version="17.5.1", **extra):
    device = Device(udid=udid, serial_number=f"SN-{udid}", product_name=product_name, os_version=os_version,
                    enrollment_status="enrolled", **extra)
    db.session.add(device)
    db.session.commit()
    return device


def test_binding_errors_name_the_missing_device_or_group(ctx):
    from mdm.ddm.policies import PolicyError, bind_policy, create_policy
    create_policy({"name": "P"})
    with pytest.raises(PolicyError) as caught:
        bind_policy("P", devices=["nope"], groups=["no-group"])
    assert {e.field for e in caught.value.errors} == {"device", "group"}
    with pytest.raises(PolicyError, match="no patch policy"):
        bind_policy("Q", devices=["x"])


# ---- who gets which policy --------------------------------------------------------------------------

def test_mixed_groups_apply_to_ios_members_only(ctx):
    from mdm.ddm import groups
    from mdm.ddm.plan import patch_plan_for_device
    from mdm.ddm.policies import bind_policy, create_policy
    phone, tablet = add_device("phone", "iPhone15,2"), add_device("tablet", "iPad7,5")
    mac, tv = add_device("mac", "Mac14,2", "14.0"), add_device("tv", "AppleTV14,1", "17.0")
    groups.create_group("Mixed")
    groups.add_devices("Mixed", ["phone", "tablet", "SN-mac", str(tv.id)])
    policy = create_policy({"name": "Everyone"})
    bind_policy(policy, groups=["Mixed"])
    assert patch_plan_for_device(phone).binding == "group:Mixed"
    assert patch_plan_for_device(tablet).policy_name == "Everyone"
    assert patch_plan_for_device(mac) is None and patch_plan_for_device(tv) is None


def test_direct_binding_beats_group_and_the_strictest_group_policy_wins(ctx):
    from mdm.ddm import groups
    from mdm.ddm.plan import patch_plan_for_device
    from mdm.ddm.policies import bind_policy, create_policy, unbind_policy
    phone = add_device("phone", "iPhone15,2")
    groups.create_group("Ring A")
    groups.create_group("Ring B")
    groups.add_devices("Ring A", ["phone"])
    groups.add_devices("Ring B", ["phone"])
    slow = create_policy({"name": "Slow", "deferral_days": 30})
    fast = create_policy({"name": "Fast", "deferral_days": 3})
    enforced = create_policy({"name": "Enforced", "deferral_days": 60, "enforce": True, "local_time": "18:00"})
    bind_policy(slow, groups=["Ring A"])
    bind_policy(fast, groups=["Ring B"])
    plan = patch_plan_for_device(phone)
    assert (plan.policy_name, plan.binding, plan.conflicts) == ("Fast", "group:Ring B", ("Slow",))
    bind_policy(enforced, groups=["Ring A"])       # enforcement on beats a shorter deferral
    plan = patch_plan_for_device(phone)
    assert (plan.policy_name, plan.conflicts) == ("Enforced", ("Fast", "Slow"))
    bind_policy(slow, devices=["phone"])           # a direct binding beats every group binding
    plan = patch_plan_for_device(phone)
    assert (plan.policy_name, plan.binding, plan.conflicts) == ("Slow", "device", ("Enforced", "Fast"))
    unbind_policy(slow, devices=["phone"])
    assert patch_plan_for_device(phone).policy_name == "Enforced"


def test_edits_bindings_and_deletion_change_exactly_the_devices_they_reach(ctx):
    from mdm.ddm.models import DevicePatchTarget
    from mdm.ddm.plan import patch_plan_for_device, recompute
    from mdm.ddm.policies import bind_policy, create_policy, delete_policy, update_policy
    a, b, c = add_device("a", "iPhone15,2"), add_device("b", "iPhone15,2"), add_device("c", "iPhone15,2")
    p1 = create_policy({"name": "P1"})
    p2 = create_policy({"name": "P2"})
    bind_policy(p1, devices=["a", "b"])
    bind_policy(p2, devices=["c"])
    digest_before = db.session.get(DevicePatchTarget, a.id).settings_digest
    # A settings edit that changes no target still changes what the devices receive.
    update_policy(p1, {"cadence": "Newest"})
    assert db.session.get(DevicePatchTarget, a.id).settings_digest != digest_before
    assert recompute() == set()                 # and nothing is left to change afterwards
    changed = delete_policy(p1)
    assert changed == {a.id, b.id}
    assert patch_plan_for_device(a) is None and patch_plan_for_device(c).policy_name == "P2"
    assert DevicePatchTarget.query.count() == 1


def test_applied_at_restarts_when_another_policy_takes_over(ctx):
    from mdm.ddm.models import DevicePatchTarget, PolicyBinding
    from mdm.ddm.plan import recompute
    from mdm.ddm.policies import create_policy
    phone = add_device("phone", "iPhone15,2")
    p1 = create_policy({"name": "P1", "deferral_days": 10})
    p2 = create_policy({"name": "P2", "deferral_days": 1})
    # Bindings written directly so each recomputation runs at a chosen time.
    db.session.add(PolicyBinding(policy_id=p1.id, device_id=phone.id))
    db.session.commit()
    recompute([phone.id], now=NOW)
    assert db.session.get(DevicePatchTarget, phone.id).applied_at == NOW
    recompute([phone.id], now=NOW + dt.timedelta(days=1))
    assert db.session.get(DevicePatchTarget, phone.id).applied_at == NOW      # same policy: kept
    db.session.add(PolicyBinding(policy_id=p2.id, device_id=phone.id))
    db.session.commit()
    later = NOW + dt.timedelta(days=2)
    recompute([phone.id], now=later)
    row = db.session.get(DevicePatchTarget, phone.id)
    assert (row.policy_id, row.applied_at, row.conflicts) == (p2.id, later, ["P1"])


# ---- device changes trigger recomputation -----------------------------------------------------------

def test_device_facts_changed_queues_and_the_queue_drains(ctx):
    from mdm.ddm.models import RecomputeRequest
    from mdm.ddm.plan import patch_plan_for_device, recompute, run_queued_recomputes
    from mdm.ddm.policies import bind_policy, create_policy
    from mdm.signals import device_facts_changed
    phone = add_device("phone", "iPhone15,2", "17.6.1")
    bind_policy(create_policy({"name": "P"}), devices=["phone"])
    recompute(now=NOW)
    assert patch_plan_for_device(phone).target_version == "18.0"
    phone.os_version = "18.0"
    device_facts_changed.send(phone, changed={"os_version"})
    device_facts_changed.send(phone, changed={"device_name"})    # irrelevant facts queue nothing new
    db.session.commit()
    assert [r.device_id for r in RecomputeRequest.query] == [phone.id]
    assert run_queued_recomputes(now=NOW) == {phone.id}
    assert RecomputeRequest.query.count() == 0
    assert patch_plan_for_device(phone).compliant


def test_a_request_that_changes_facts_recomputes_before_answering(app):
    """Through a real Flask request: the receiver queues inside the request's transaction and the queue
    is drained after the commit, so the next request already sees the new plan."""
    from flask import Blueprint
    from mdm.signals import device_facts_changed
    bp = Blueprint("facts_probe", __name__)

    @bp.get("/probe/<udid>/<version>")
    def probe(udid, version):
        device = Device.query.filter_by(udid=udid).one()
        device.os_version = version
        device_facts_changed.send(device, changed={"os_version"})
        db.session.commit()
        return "ok"
    probe.is_public = True          # past the admin UI's login guard (mdm.accounts.access.public)
    app.register_blueprint(bp)
    with app.app_context():
        from mdm.ddm import catalog
        from mdm.ddm.policies import bind_policy, create_policy
        catalog.apply_feed(catalog.shift_feed(FEED_2024, (dt.date.today() - dt.date(2024, 9, 20)).days),
                           "shifted", now=NOW)
        phone = add_device("phone", "iPhone15,2", "17.6.1")
        bind_policy(create_policy({"name": "P"}), devices=["phone"])
        phone_id = phone.id
    assert app.test_client().get("/probe/phone/18.0").status_code == 200
    with app.app_context():
        from mdm.ddm.models import DevicePatchTarget, RecomputeRequest
        assert RecomputeRequest.query.count() == 0
        assert db.session.get(DevicePatchTarget, phone_id).compliant
