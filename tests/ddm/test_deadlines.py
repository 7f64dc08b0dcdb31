"""Deadlines that cannot be postponed forever, urgency from actively exploited vulnerabilities, expiry on
the day: tables over Apple's real release history (shared/feeds/gdmf-pmv-ios-history.json, original
posting and expiration dates) and SOFA's real feed (sofa-ios-sample.json), plus one synthetic series
(releases 8 days apart against a 10-day grace) that isolates the anchor rule.

Every table goes through the real path: feed -> catalog rows -> release index (+ SOFA facts) ->
choose_target -> plan_deadline; the stored-plan tests go through recompute, results and the preview.
"""
from __future__ import annotations

import datetime as dt
import json

import pytest

from appleschema import validate_declaration
from apps import FEEDS
from mdm.extensions import db
from mdm.models import Device

HISTORY = json.loads((FEEDS / "gdmf-pmv-ios-history.json").read_text())
FEED_2026 = json.loads((FEEDS / "gdmf-pmv-sample.json").read_text())
SOFA = json.loads((FEEDS / "sofa-ios-sample.json").read_text())
D = dt.datetime


def history_index(now, sofa_feed=SOFA):
    """The real release history as the catalog, SOFA's real feed stored as the vulnerability data."""
    from mdm.ddm import catalog, plan, sofa
    catalog.apply_feed(HISTORY, "history", now=now)
    if sofa_feed is not None:
        sofa.apply_feed(sofa_feed, "sofa-sample", now=now)
    return plan.release_index()


def deadline_for(index, installed, now, *, anchor, grace=30, exploited=None, applied=D(2024, 9, 1),
                 model="iPhone15,2", stay_on_major=True, deferral=0, security=True):
    from mdm.ddm.targets import choose_target, plan_deadline
    releases = index.releases_for(model)
    choice = choose_target(releases, installed, deferral_days=deferral, stay_on_major=stay_on_major, now=now)
    assert choice.release is not None, choice.reason
    return choice.target_version, plan_deadline(
        releases, installed, choice.release, deferral_days=deferral, grace_days=grace, local_time="10:00",
        applied_at=applied, now=now, anchor_rule=anchor, exploited_grace_days=exploited,
        security=index.security if security else {}, stay_on_major=stay_on_major)


# ---- 1. No endless postponement, on Apple's real release history ---------------------------------------

# An iPhone 14 (iPhone15,2) stays on iOS 18.0 and never installs anything; policy: no deferral, 30 days'
# grace at 10:00, applied 2024-09-01. Apple shipped 18.0.1 (10-03), 18.1 (10-28), 18.1.1 (11-19), 18.2
# (12-11), 18.2.1 (01-06), 18.3 (01-27), 18.3.1 (02-10), 18.3.2 (03-11), 18.4 (03-31), 18.4.1 (04-16),
# 18.5 (05-12), 18.6 (07-29).
# now -> (target, anchored deadline, anchored counts from, "newest" deadline)
REAL_HISTORY = [
    (D(2024, 10, 5), "18.0.1", "2024-11-02T10:00:00", "18.0.1", "2024-11-02T10:00:00"),
    (D(2024, 10, 30), "18.1", "2024-11-02T10:00:00", "18.0.1", "2024-11-27T10:00:00"),
    (D(2024, 11, 20), "18.1.1", "2024-11-02T10:00:00", "18.0.1", "2024-12-19T10:00:00"),
    (D(2024, 12, 12), "18.2", "2024-11-02T10:00:00", "18.0.1", "2025-01-10T10:00:00"),
    # 18.0.1 expired on 2025-01-02 (its ExpirationDate): the oldest release still signed is the anchor,
    # and its deadline passed long ago too.
    (D(2025, 1, 7), "18.2.1", "2024-11-27T10:00:00", "18.1", "2025-02-05T10:00:00"),
    (D(2025, 2, 11), "18.3.1", "2024-12-19T10:00:00", "18.1.1", "2025-03-12T10:00:00"),
    (D(2025, 4, 17), "18.4.1", "2025-02-26T10:00:00", "18.3", "2025-05-16T10:00:00"),     # 18.2.1 expired 04-06
    (D(2025, 5, 13), "18.5", "2025-04-10T10:00:00", "18.3.2", "2025-06-11T10:00:00"),     # 18.3.1 expired 05-11
]


@pytest.mark.parametrize("now,target,anchored,anchor_version,newest", REAL_HISTORY)
def test_real_history_anchored_deadline_holds_while_restarting_the_clock_keeps_moving(ctx, now, target, anchored,
                                                                                     anchor_version, newest):
    index = history_index(now)
    version, first_missed = deadline_for(index, "18.0", now, anchor="first_missed")
    _version, restart = deadline_for(index, "18.0", now, anchor="newest")
    assert version == target
    assert (first_missed.local, first_missed.anchor.version) == (anchored, anchor_version)
    assert first_missed.note.startswith(f"deadline counted from iOS {anchor_version} (first release this device "
                                        f"missed)")
    assert restart.local == newest and restart.anchor.version == target
    # After the first deadline (2024-11-02) the anchored device is overdue at every step; restarting the
    # clock, Apple's cadence kept its deadline in the future from October 2024 to June 2025.
    if now > D(2024, 11, 2, 10):
        assert first_missed.wall < now
    assert restart.wall > now


def synthetic_series(count=12, start=dt.date(2025, 1, 1), every_days=8):
    from mdm.ddm.targets import ModelRelease, version_key
    releases = []
    for n in range(1, count + 1):
        version = f"18.{n}"
        releases.append(ModelRelease(version, version_key(version), (f"22X{n}",),
                                     start + dt.timedelta(days=every_days * (n - 1)), None))
    return sorted(releases, key=lambda r: r.key, reverse=True)


def test_releases_8_days_apart_against_a_10_day_grace_anchored_forced_by_the_first_missed_release():
    """The issue's measurement: a release every 8 days, 10 days' grace. Anchored, the deadline is the first
    missed release's (2025-01-11 10:00) and it passes while newer releases keep coming."""
    from mdm.ddm.targets import choose_target, plan_deadline
    releases = synthetic_series()
    deadlines = []
    for day in range(0, 12 * 8, 4):
        now = D(2025, 1, 1, 12) + dt.timedelta(days=day)
        choice = choose_target(releases, "18.0", deferral_days=0, stay_on_major=False, now=now)
        deadline = plan_deadline(releases, "18.0", choice.release, deferral_days=0, grace_days=10,
                                 local_time="10:00", applied_at=D(2024, 12, 1), now=now, anchor_rule="first_missed")
        assert deadline.anchor.version == "18.1"
        deadlines.append((now, choice.target_version, deadline.local))
    assert {d for _n, _t, d in deadlines} == {"2025-01-11T10:00:00"}
    assert len({t for _n, t, _d in deadlines}) == 12          # the target followed every release
    assert any(now > D(2025, 1, 11, 10) for now, _t, _d in deadlines)


def test_releases_8_days_apart_restarting_the_clock_never_reach_a_deadline():
    """The documented behaviour of deadline_anchor "newest": every release moves the deadline 8 days later
    (ten times and more here) and, with releases faster than the grace period, it never passes."""
    from mdm.ddm.targets import choose_target, plan_deadline
    releases = synthetic_series()
    seen = []
    for day in range(0, 11 * 8):
        now = D(2025, 1, 1, 12) + dt.timedelta(days=day)
        choice = choose_target(releases, "18.0", deferral_days=0, stay_on_major=False, now=now)
        deadline = plan_deadline(releases, "18.0", choice.release, deferral_days=0, grace_days=10,
                                 local_time="10:00", applied_at=D(2024, 12, 1), now=now, anchor_rule="newest")
        assert deadline.wall > now, f"{now}: deadline {deadline.local} passed"
        assert "the clock restarts with each release" in deadline.note
        seen.append(deadline.local)
    moves = sum(1 for a, b in zip(seen, seen[1:]) if b > a)
    assert moves >= 10


def test_deferral_delays_the_anchor_release_as_it_delays_the_target():
    """With a deferral, a release the device cannot see yet is not missed yet: the anchor is the oldest
    visible candidate, and the grace period counts from the end of its deferral."""
    from mdm.ddm.targets import choose_target, plan_deadline
    releases = synthetic_series(count=3)          # 18.1 01-01, 18.2 01-09, 18.3 01-17
    now = D(2025, 1, 12)
    choice = choose_target(releases, "18.0", deferral_days=7, stay_on_major=False, now=now)
    deadline = plan_deadline(releases, "18.0", choice.release, deferral_days=7, grace_days=10, local_time="10:00",
                             applied_at=D(2024, 12, 1), now=now)
    assert choice.target_version == "18.1"
    assert (deadline.anchor.version, deadline.local) == ("18.1", "2025-01-18T10:00:00")
    # Once 18.2's deferral ends it becomes the target; the deadline stays 18.1's.
    now = D(2025, 1, 17)
    choice = choose_target(releases, "18.0", deferral_days=7, stay_on_major=False, now=now)
    deadline = plan_deadline(releases, "18.0", choice.release, deferral_days=7, grace_days=10, local_time="10:00",
                             applied_at=D(2024, 12, 1), now=now)
    assert (choice.target_version, deadline.anchor.version, deadline.local) == ("18.2", "18.1",
                                                                                 "2025-01-18T10:00:00")


def test_a_policy_reaching_a_device_late_still_gives_the_full_grace_period():
    from mdm.ddm.targets import choose_target, plan_deadline
    releases = synthetic_series(count=5)
    now = D(2025, 2, 1, 8)
    choice = choose_target(releases, "18.0", deferral_days=0, stay_on_major=False, now=now)
    deadline = plan_deadline(releases, "18.0", choice.release, deferral_days=0, grace_days=10, local_time="10:00",
                             applied_at=now, now=now)
    assert (deadline.anchor.version, deadline.local) == ("18.1", "2025-02-11T10:00:00")
    assert deadline.from_applied and "runs from when the policy reached the device" in deadline.note


# ---- 2. Urgency from actively exploited vulnerabilities (SOFA's real feed) -----------------------------

# iPhone15,2, 30 days' grace, 2 days for exploited vulnerabilities, policy applied 2024-11-01.
# 18.1.1 (posted 2024-11-19) fixes CVE-2024-44308 and CVE-2024-44309, both actively exploited (SOFA);
# 18.2 (12-11) fixes 41 CVEs, none actively exploited.
# installed, now, exploited grace -> (target, deadline, shortened by)
EXPLOITED = [
    ("18.1", D(2024, 11, 20), 2, ("18.1.1", "2024-11-21T10:00:00", 2)),
    ("18.1", D(2024, 11, 20), None, ("18.1.1", "2024-12-19T10:00:00", 0)),     # option off: normal grace
    ("18.1", D(2024, 11, 20), 45, ("18.1.1", "2024-12-19T10:00:00", 0)),       # longer: never lengthens
    # 18.2 arrives: the device still misses 18.1.1's fixes, the short deadline stays.
    ("18.1", D(2024, 12, 12), 2, ("18.2", "2024-11-21T10:00:00", 2)),
    # A device that installed 18.1.1 misses only 18.2 (no exploited CVE): the normal grace.
    ("18.1.1", D(2024, 12, 12), 2, ("18.2", "2025-01-10T10:00:00", 0)),
    # 18.3 (2025-01-27) fixes CVE-2025-24085, actively exploited: 2 days from its posting.
    ("18.2.1", D(2025, 1, 28), 2, ("18.3", "2025-01-29T10:00:00", 1)),
]


@pytest.mark.parametrize("installed,now,exploited,expected", EXPLOITED)
def test_an_actively_exploited_fix_shortens_the_grace_period(ctx, installed, now, exploited, expected):
    index = history_index(now)
    target, deadline = deadline_for(index, installed, now, anchor="first_missed", exploited=exploited,
                                    applied=D(2024, 11, 1))
    assert (target, deadline.local, len(deadline.shortened_by)) == expected
    if expected[2]:
        n = expected[2]
        assert f"deadline shortened: fixes {n} actively exploited vulnerabilit{'y' if n == 1 else 'ies'}" in \
            deadline.note


def test_the_release_index_carries_sofas_counts_for_the_catalog_releases(ctx):
    index = history_index(D(2024, 11, 20))
    release = next(r for r in index.releases_for("iPhone15,2") if r.version == "18.1.1")
    facts = index.security_of(release)
    assert (facts.cve_count, facts.exploited_cves) == (2, ("CVE-2024-44308", "CVE-2024-44309"))
    assert index.security_of(next(r for r in index.releases_for("iPhone15,2") if r.version == "18.2")).cve_count == 41


def test_missing_sofa_data_falls_back_to_the_normal_grace(ctx):
    """No SOFA facts at all (a feed that cannot be read): the device still gets its deadline, the normal one."""
    index = history_index(D(2024, 11, 20))
    target, deadline = deadline_for(index, "18.1", D(2024, 11, 20), anchor="first_missed", exploited=2,
                                    applied=D(2024, 11, 1), security=False)
    assert (target, deadline.local, deadline.shortened_by) == ("18.1.1", "2024-12-19T10:00:00", ())


def test_a_stale_sofa_feed_that_does_not_know_the_release_gives_the_normal_grace(ctx):
    """The feed in use is older than the release (stored before 18.1.1 appeared in it): normal grace, and the
    banner's health check says the feed is stale."""
    from mdm.ddm import sofa
    stale = json.loads(json.dumps(SOFA))
    for os_version in stale["OSVersions"]:
        os_version["SecurityReleases"] = [r for r in os_version["SecurityReleases"]
                                          if r["ReleaseDate"] < "2024-11-19"]
    index = history_index(D(2024, 11, 20), sofa_feed=stale)
    target, deadline = deadline_for(index, "18.1", D(2024, 11, 20), anchor="first_missed", exploited=2,
                                    applied=D(2024, 11, 1))
    assert (target, deadline.local, deadline.shortened_by) == ("18.1.1", "2024-12-19T10:00:00", ())
    health = sofa.sofa_health(now=D(2024, 11, 29))
    assert health.problem and "has not been refreshed for 9 days" in health.problem
    assert "normal grace period" in health.problem


# ---- 3. Expiry on the ExpirationDate ------------------------------------------------------------------

def test_a_release_is_expired_on_its_expiration_date_not_the_day_after(ctx):
    from mdm.ddm import catalog, plan
    from mdm.ddm.targets import REASON_CATALOG_EXPIRED, choose_target
    catalog.apply_feed(FEED_2026, "sample", now=D(2026, 8, 22))
    releases = plan.release_index().releases_for("iPhone18,1")
    new_phone = next(r for r in releases if r.version == "26.5")       # this model's entry: until 2026-08-30
    assert not new_phone.expired(D(2026, 8, 29, 23, 59))
    assert new_phone.expired(D(2026, 8, 30, 0, 0))
    # Every entry of the sample expires by 2026-11-20: on that day nothing is a target any more.
    phone = plan.release_index().releases_for("iPhone15,2")
    assert choose_target(phone, "18.7.8", deferral_days=0, stay_on_major=False,
                         now=D(2026, 11, 19, 23)).target_version == "26.6.1"
    assert choose_target(phone, "18.7.8", deferral_days=0, stay_on_major=False,
                         now=D(2026, 11, 20, 0)).reason == REASON_CATALOG_EXPIRED
    assert catalog.catalog_health(now=D(2026, 11, 19, 23)).unexpired > 0
    assert catalog.catalog_health(now=D(2026, 11, 20, 0)).unexpired == 0
    assert catalog.catalog_status(now=D(2026, 11, 20, 0))["unexpired_releases"] == 0


# ---- 4. The setting: validation, defaults for new and existing policies --------------------------------

def test_deadline_settings_are_validated_with_field_named_errors(ctx):
    from mdm.ddm.policies import validate_settings
    settings, errors = validate_settings({"name": "A", "deadline_anchor": "sometimes"})
    assert settings is None and [e.field for e in errors] == ["deadline_anchor"]
    assert "The first release the device missed" in errors[0].message and "(first_missed, newest)" in errors[0].message
    settings, errors = validate_settings({"name": "A", "grace_days": 10, "exploited_grace_days": 12})
    assert [e.field for e in errors] == ["exploited_grace_days"]
    assert "between 0 and the Grace period (10 days)" in errors[0].message
    settings, errors = validate_settings({"name": "A", "exploited_grace_days": "two"})
    assert [e.field for e in errors] == ["exploited_grace_days"]
    settings, errors = validate_settings({"name": "A", "exploited_grace_days": "2", "deadline_anchor": "restart"})
    assert errors == [] and (settings.exploited_grace_days, settings.deadline_anchor) == (2, "newest")
    settings, _ = validate_settings({"exploited_grace_days": "off"}, base=settings)
    assert settings.exploited_grace_days is None
    fresh, _ = validate_settings({"name": "B"})
    assert (fresh.deadline_anchor, fresh.exploited_grace_days) == ("first_missed", None)


def test_policies_from_before_anchoring_keep_restarting_the_clock_after_the_upgrade(ctx):
    """Migration 9a0b1c2d0010 gives existing policies deadline_anchor "newest" (their behaviour until then):
    anchoring them silently would move deadlines into the past and force installs at once."""
    from flask_migrate import downgrade, upgrade
    from mdm.ddm.models import PatchPolicy
    downgrade(revision="8a1d0e1c0001")
    db.session.execute(db.text("INSERT INTO ddm_patch_policies (name, platform, deferral_days, enforce, grace_days, "
                               "notifications_all, cadence, auto_download, auto_install_os, auto_install_security, "
                               "rsr_offer, rsr_rollback, beta_enrollment, beta_programs, stay_on_major, created_at, "
                               "updated_at) VALUES ('Old', 'iOS', 0, true, 10, true, 'All', 'Allowed', 'Allowed', "
                               "'Allowed', true, true, 'Allowed', '[]', false, '2026-01-01', '2026-01-01')"))
    db.session.commit()
    db.session.remove()
    upgrade()
    old = PatchPolicy.query.filter_by(name="Old").one()
    assert (old.deadline_anchor, old.exploited_grace_days) == ("newest", None)
    from mdm.ddm.policies import create_policy
    assert create_policy({"name": "New"}).deadline_anchor == "first_missed"


# ---- 5. Stored plans, results and the preview say where the deadline comes from -------------------------

def add_device(udid, product_name, os_version):
    device = Device(udid=udid, serial_number=f"SN-{udid}", product_name=product_name, os_version=os_version,
                    enrollment_status="enrolled", is_supervised=True, time_zone="Europe/Paris")
    db.session.add(device)
    db.session.commit()
    return device


def test_the_plan_stores_the_anchor_and_the_shortening_and_the_declaration_stays_valid(ctx):
    from mdm.ddm import declarations as decl
    from mdm.ddm import sofa
    from mdm.ddm.models import PolicyBinding
    from mdm.ddm.plan import patch_plan_for_device, recompute
    from mdm.ddm.policies import create_policy
    from mdm.ddm.results import results_for_device
    history_index(D(2024, 11, 1))
    phone = add_device("p-anchor", "iPhone15,2", "18.0")
    urgent = add_device("p-urgent", "iPhone15,2", "18.1")
    policy = create_policy({"name": "Anchored", "enforce": True, "grace_days": 30, "local_time": "10:00",
                            "exploited_grace_days": 2, "stay_on_major": True})
    for device in (phone, urgent):
        db.session.add(PolicyBinding(policy_id=policy.id, device_id=device.id))
    db.session.commit()
    recompute(now=D(2024, 10, 4))
    assert patch_plan_for_device(urgent).compliant
    recompute(now=D(2024, 11, 20))
    plan = patch_plan_for_device(phone)
    # Applied 2024-10-04 (the first recompute), the phone's first missed release 18.0.1 was visible since
    # 10-03: grace from 10-04 -> 11-03 10:00, although the target is now 18.1.1.
    assert (plan.target_version, plan.deadline_anchor_version, plan.deadline_local) == \
        ("18.1.1", "18.0.1", "2024-11-03T10:00:00")
    assert plan.deadline_note.startswith("deadline counted from iOS 18.0.1 (first release this device missed)")
    # The phone also misses 18.1.1's exploited fixes, but its anchored deadline is earlier already.
    assert "shortened" not in plan.deadline_note
    shortened = patch_plan_for_device(urgent)
    assert (shortened.target_version, shortened.deadline_local) == ("18.1.1", "2024-11-21T10:00:00")
    assert "deadline shortened: fixes 2 actively exploited vulnerabilities" in shortened.deadline_note
    assert shortened.deadline_utc == D(2024, 11, 21, 9)       # Paris, UTC+1
    served = decl.enforcement_specific(urgent, shortened).declaration
    assert served["Payload"]["TargetLocalDateTime"] == "2024-11-21T10:00:00"
    assert validate_declaration(decl.with_server_token(served), "iOS", "18.1", supervised=True) == []
    result = results_for_device(urgent)[0]
    assert result.deadline_note == shortened.deadline_note
    assert result.as_dict()["deadline_note"].endswith("(2-day grace from iOS 18.1.1)")
    # The SOFA feed goes missing (a sync to an unusable file): what is stored stays in use.
    with pytest.raises(sofa.SofaError):
        sofa.sync_sofa(file="/nonexistent/sofa.json", now=D(2024, 11, 20, 1))
    recompute(now=D(2024, 11, 20, 2))
    assert patch_plan_for_device(urgent).deadline_local == "2024-11-21T10:00:00"


def test_switching_a_policy_to_newest_restarts_the_clock_and_the_plan_says_so(ctx):
    from mdm.ddm.models import PolicyBinding
    from mdm.ddm.plan import patch_plan_for_device, recompute
    from mdm.ddm.policies import create_policy, update_policy
    history_index(D(2024, 10, 4))
    phone = add_device("p-restart", "iPhone15,2", "18.0")
    policy = create_policy({"name": "Ring", "enforce": True, "grace_days": 30, "local_time": "10:00",
                            "stay_on_major": True})
    db.session.add(PolicyBinding(policy_id=policy.id, device_id=phone.id))
    db.session.commit()
    recompute(now=D(2024, 10, 4))
    recompute(now=D(2024, 10, 30))
    assert patch_plan_for_device(phone).deadline_local == "2024-11-03T10:00:00"
    update_policy(policy.id, {"deadline_anchor": "newest"})
    recompute(now=D(2024, 10, 30))
    plan = patch_plan_for_device(phone)
    assert (plan.deadline_anchor_version, plan.deadline_local) == ("18.1", "2024-11-27T10:00:00")
    assert "the clock restarts with each release" in plan.deadline_note


# ---- 6. The policy form, the preview and the results page ---------------------------------------------

def test_the_form_sets_both_options_and_the_preview_and_results_explain_the_deadline(app):
    import re
    from mdm.accounts import Role
    from mdm.ddm import catalog, sofa
    from mdm.ddm.catalog import shift_feed
    from mdm.ddm.models import PatchPolicy
    from mdm.models import utcnow
    from ui_support import VALID_POLICY_FORM as VALID
    from ui_support import add_devices, iphone, signed_in
    # Apple's history moved so that 18.1.1 (fixes 2 actively exploited CVEs) was posted 5 days ago.
    days = (utcnow().date() - dt.date(2024, 11, 19)).days - 5
    with app.app_context():
        catalog.apply_feed(shift_feed(HISTORY, days), "test: shifted history")
        sofa.apply_feed(SOFA, "sample")
    device_id = add_devices(app, [iphone("Alice", "SN-ALICE", "18.1", time_zone="UTC")])[0]
    manager = signed_in(app, Role.Manager, "mgr")
    form = manager.get("/patch-management/new/iOS").text
    assert 'name="deadline_anchor" value="first_missed" checked' in form
    assert 'id="f-exploited_grace_days"' in form

    data = dict(VALID, name="Urgent", deferral_days="0", grace_days="30", local_time="10:00",
                deadline_anchor="newest", exploited_grace_days="40")
    refused = manager.post("/patch-management", data)
    assert refused.status_code == 422
    slot = re.search(r'<div id="err-exploited_grace_days"[^>]*>(.*?)</div>\s*</div>', refused.text, re.S).group(1)
    assert "between 0 and the Grace period (30 days)" in slot

    data["exploited_grace_days"] = "2"
    assert manager.post("/patch-management", data).status_code == 303
    with app.app_context():
        policy = PatchPolicy.query.filter_by(name="Urgent").one()
        assert (policy.deadline_anchor, policy.exploited_grace_days) == ("newest", 2)
        policy_id = policy.id
    edit = manager.get(f"/patch-management/{policy_id}").text
    assert 'name="deadline_anchor" value="newest" checked' in edit and 'value="2"' in edit

    preview = manager.post("/patch-management/preview", dict(data, policy_id=str(policy_id),
                                                             preview_device_id=str(device_id)), htmx=True).text
    assert re.search(r"<dt>Target</dt><dd>18\.1\.1", preview)
    assert "2 CVEs" in preview and "2 actively exploited" in preview
    note = re.search(r'id="preview-deadline-note">([^<]+)<', preview).group(1)
    assert note.startswith("deadline counted from iOS 18.1.1 (the newest release")
    assert "deadline shortened: fixes 2 actively exploited vulnerabilities" in note

    # Back to the anchored rule, bound: the results page carries the same explanation.
    data["deadline_anchor"] = "first_missed"
    assert manager.post(f"/patch-management/{policy_id}", dict(data, policy_id=str(policy_id))).status_code == 303
    assert manager.post(f"/patch-management/{policy_id}/bindings", {"device_id": str(device_id)}).status_code in (302, 303)
    results = manager.get(f"/patch-management/{policy_id}?tab=results").text
    row = results.split("Alice")[1].split("</tr>")[0]
    assert "deadline counted from iOS 18.1.1 (first release this device missed)" in row
    assert "deadline shortened: fixes 2 actively exploited vulnerabilities" in row
    device_page = manager.get(f"/devices/{device_id}").text
    assert 'class="small muted deadline-note">deadline counted from iOS 18.1.1 (first release this device missed)' \
        in device_page


def test_api_and_cli_take_the_deadline_options_with_field_named_errors(app):
    from mdm.accounts import Role
    from ui_support import HTTPS, make_token
    headers = {"Authorization": f"Bearer {make_token(app, 'mgr', Role.Manager)}"}
    client = app.test_client()

    def call(method, path, body=None):
        return client.open("/api/v1" + path, method=method, json=body, headers=headers, base_url=HTTPS)

    bad = call("POST", "/policies", {"name": "API", "deadline_anchor": "later"})
    assert bad.status_code == 400 and bad.json["errors"][0]["field"] == "deadline_anchor"
    made = call("POST", "/policies", {"name": "API", "enforce": True, "grace_days": 7, "local_time": "09:00",
                                      "exploited_grace_days": 2})
    assert made.status_code in (200, 201), made.json
    policy = made.json.get("policy", made.json)
    assert (policy["deadline_anchor"], policy["exploited_grace_days"]) == ("first_missed", 2)
    changed = call("PATCH", f"/policies/{policy['id']}", {"deadline_anchor": "newest", "exploited_grace_days": None})
    assert changed.status_code == 200, changed.json
    changed = changed.json.get("policy", changed.json)
    assert (changed["deadline_anchor"], changed["exploited_grace_days"]) == ("newest", None)
    spec = call("GET", "/openapi.json").json
    path = next(p for p in spec["paths"] if p.endswith("/policies"))
    fields = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert fields["properties"]["deadline_anchor"]["enum"] == ["first_missed", "newest"]

    runner = app.test_cli_runner()
    out = runner.invoke(args=["mdm", "patch", "create", "--name", "CLI", "--enforce", "--grace-days", "10",
                              "--local-time", "18:00", "--deadline-anchor", "newest", "--exploited-grace-days", "2",
                              "--json"])
    assert out.exit_code == 0, out.output
    created = json.loads(out.output)["policy"]
    assert (created["deadline_anchor"], created["exploited_grace_days"]) == ("newest", 2)
    out = runner.invoke(args=["mdm", "patch", "edit", "CLI", "--exploited-grace-days", "off", "--json"])
    assert json.loads(out.output)["policy"]["exploited_grace_days"] is None
    out = runner.invoke(args=["mdm", "patch", "edit", "CLI", "--exploited-grace-days", "11", "--json"])
    assert out.exit_code == 1 and json.loads(out.output)["errors"][0]["field"] == "exploited_grace_days"
