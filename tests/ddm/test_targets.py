"""Target and deadline per device, as tables over Apple's real feed snapshots (shared/feeds).

The 2024-09-20 feed is four days after iOS 18.0: 17.7 and 18.0 are both offered (first posted
2024-09-16 in AssetSets, re-posted 2024-09-18 in PublicAssetSets). The 2026-08-22 feed has devices
capped on older lines (iPad7,5 on 17.7.x, iPhone11,2 on 18.7.x). Every case goes through the real
path: feed -> catalog rows -> release index -> choose_target / enforcement_deadline.
"""
from __future__ import annotations

import datetime as dt
import json

import pytest

from apps import FEEDS
from mdm.extensions import db
from mdm.models import Device

FEED_2024 = json.loads((FEEDS / "gdmf-pmv-2024-09-20-sample.json").read_text())
FEED_2026 = json.loads((FEEDS / "gdmf-pmv-sample.json").read_text())
D = dt.datetime


def index_for(feed, now):
    from mdm.ddm import catalog, plan
    catalog.apply_feed(feed, "test-feed", now=now)
    return plan.release_index()


def target(index, model, installed, now, deferral=0, stay_on_major=False):
    from mdm.ddm.targets import choose_target
    return choose_target(index.releases_for(model), installed, deferral_days=deferral,
                         stay_on_major=stay_on_major, now=now)


# model, installed, now, deferral days, stay on major -> (target, compliant)
TABLE_2024 = [
    # No deferral: the newest release across majors, or the newest of the current major.
    ("iPhone15,2", "17.6.1", D(2024, 9, 20, 12), 0, False, ("18.0", False)),
    ("iPhone15,2", "17.6.1", D(2024, 9, 20, 12), 0, True, ("17.7", False)),
    # 7-day deferral: 17.7 and 18.0 (first posted 09-16) are hidden until 09-23; 17.6.1 (08-07) is visible.
    ("iPhone15,2", "17.5.1", D(2024, 9, 20, 12), 7, False, ("17.6.1", False)),
    ("iPhone15,2", "17.5.1", D(2024, 9, 22, 23, 59), 7, False, ("17.6.1", False)),
    ("iPhone15,2", "17.5.1", D(2024, 9, 23, 0, 0), 7, False, ("18.0", False)),
    ("iPhone15,2", "17.5.1", D(2024, 9, 23, 0, 0), 7, True, ("17.7", False)),
    # Already on the newest visible release: compliant, nothing to enforce.
    ("iPhone15,2", "17.6.1", D(2024, 9, 20, 12), 7, False, (None, True)),
    ("iPhone15,2", "18.0", D(2024, 10, 1), 0, False, (None, True)),
    ("iPhone15,2", "18.1", D(2024, 10, 1), 0, False, (None, True)),
    # iPad7,5 cannot run 18: its newest is 17.7 even across majors.
    ("iPad7,5", "17.5.1", D(2024, 9, 20, 12), 0, False, ("17.7", False)),
    ("iPad7,5", "17.7", D(2024, 9, 20, 12), 0, False, (None, True)),
]


@pytest.mark.parametrize("model,installed,now,deferral,stay,expected", TABLE_2024)
def test_targets_in_the_feed_where_17_7_and_18_0_are_both_offered(ctx, model, installed, now, deferral, stay,
                                                                   expected):
    index = index_for(FEED_2024, now)
    choice = target(index, model, installed, now, deferral, stay)
    assert (choice.target_version, choice.compliant) == expected
    if expected[0] is None:
        assert choice.reason.startswith("compliant")


def test_a_deferred_release_is_named_in_the_compliant_reason(ctx):
    now = D(2024, 9, 20, 12)
    choice = target(index_for(FEED_2024, now), "iPhone15,2", "17.6.1", now, deferral=7, stay_on_major=True)
    assert choice.compliant and choice.reason == "compliant; 17.7 deferred until 2024-09-23"


def test_build_twins_merge_into_one_version_without_a_guessed_build(ctx):
    now = D(2024, 9, 20)
    index = index_for(FEED_2024, now)
    release = next(r for r in index.releases_for("iPhone15,2") if r.version == "18.0")
    assert release.builds == ("22A3354", "22A6354")
    assert release.first_posted == dt.date(2024, 9, 16)     # AssetSets date, not the 09-18 re-post
    assert target(index, "iPhone15,2", "17.7", now).target_build is None


TABLE_2026 = [
    # Capped devices (SOURCES.md trap 5): the newest release that lists this model.
    ("iPad7,5", "17.7.10", False, "17.7.11"),
    ("iPad7,5", "16.7.10", False, "17.7.11"),
    ("iPhone11,2", "18.7.7", False, "18.7.10"),    # 18.7.8 skips iPhone11,2; 18.7.10 lists it
    ("iPhone11,2", "18.6", True, "18.7.10"),
    # A current device on 18.7.8: 26.6.1 across majors; nothing newer on 18 lists it.
    ("iPhone15,2", "18.7.8", False, "26.6.1"),
    ("iPhone15,2", "18.7.8", True, None),
]


@pytest.mark.parametrize("model,installed,stay,expected", TABLE_2026)
def test_capped_devices_get_the_newest_release_of_their_own_line(ctx, model, installed, stay, expected):
    now = D(2026, 8, 22, 12)
    choice = target(index_for(FEED_2026, now), model, installed, now, stay_on_major=stay)
    assert choice.target_version == expected


def test_the_same_build_listed_twice_keeps_each_devices_expiration(ctx):
    index = index_for(FEED_2026, D(2026, 8, 22))
    # 26.5 23F77: 90 devices until 2026-09-27, five iPhone18,x in a second entry until 2026-08-30.
    new_phone = next(r for r in index.releases_for("iPhone18,1") if r.version == "26.5")
    older_phone = next(r for r in index.releases_for("iPhone15,2") if r.version == "26.5")
    assert new_phone.expires == dt.date(2026, 8, 30)
    assert older_phone.expires == dt.date(2026, 9, 27)
    assert new_phone.expired(D(2026, 9, 1)) and not older_phone.expired(D(2026, 9, 1))


def test_a_reposted_release_keeps_its_first_posting_date_and_deferral_clock(ctx):
    from mdm.ddm import catalog, plan
    from mdm.ddm.models import CatalogRelease
    now = D(2024, 9, 20)
    catalog.apply_feed(FEED_2024, "day 1", now=now)
    first_seen = CatalogRelease.query.filter_by(build="21H16").one().first_seen_at
    # Apple re-posts 17.7 and 18.0 three weeks later with a new PostingDate in every section.
    reposted = json.loads(json.dumps(FEED_2024))
    for section in ("PublicAssetSets", "AssetSets"):
        for entry in reposted[section]["iOS"]:
            if entry["ProductVersion"] in ("17.7", "18.0"):
                entry["PostingDate"] = "2024-10-10"
    later = D(2024, 10, 11)
    result = catalog.apply_feed(reposted, "day 22", now=later)
    row = CatalogRelease.query.filter_by(build="21H16").one()
    assert result.updated >= 4 and row.posting_date == dt.date(2024, 10, 10)
    assert row.first_posting_date == dt.date(2024, 9, 16) and row.first_seen_at == first_seen
    # With a 7-day deferral 18.0 stays visible: the re-post does not hide it again until 10-17.
    assert target(plan.release_index(), "iPhone15,2", "17.6.1", later, deferral=7).target_version == "18.0"


def test_the_real_2026_repost_of_18_7_8_counts_from_its_assetsets_date(ctx):
    index = index_for(FEED_2026, D(2026, 8, 22))
    release = next(r for r in index.releases_for("iPhone15,2") if r.version == "18.7.8")
    assert release.first_posted == dt.date(2026, 4, 22)     # PublicAssetSets says 2026-08-06


def test_expired_catalog_and_unknown_os_say_why(ctx):
    from mdm.ddm.targets import REASON_CATALOG_EXPIRED, REASON_OS_UNKNOWN
    index = index_for(FEED_2024, D(2024, 9, 20))
    expired = target(index, "iPhone15,2", "17.5", D(2025, 1, 1))
    assert (expired.target_version, expired.compliant, expired.reason) == (None, False, REASON_CATALOG_EXPIRED)
    assert target(index, "iPhone15,2", None, D(2024, 9, 20)).reason == REASON_OS_UNKNOWN


# ---- deadlines -------------------------------------------------------------------------------------

def _release_18(now=D(2024, 9, 20)):
    from mdm.ddm import catalog, plan
    catalog.apply_feed(FEED_2024, "test-feed", now=now)
    return next(r for r in plan.release_index().releases_for("iPhone15,2") if r.version == "18.0")


# deferral, grace, local time, applied at -> TargetLocalDateTime. 18.0 was first posted 2024-09-16.
DEADLINES = [
    # Applied before the release: grace counts from the end of the deferral (09-17 00:00) -> 09-20 18:00.
    (1, 3, "18:00", D(2024, 9, 1, 9, 30), "2024-09-20T18:00:00"),
    # Applied after the release was already visible: the full grace period from the application.
    (1, 3, "18:00", D(2024, 10, 1, 14, 30), "2024-10-04T18:00:00"),
    # The deadline is the first local time at or after start + grace, never earlier.
    (1, 3, "09:00", D(2024, 10, 1, 14, 30), "2024-10-05T09:00:00"),
    (0, 0, "23:59", D(2024, 9, 1), "2024-09-16T23:59:00"),
    (30, 10, "18:00", D(2024, 9, 1), "2024-10-26T18:00:00"),
]


@pytest.mark.parametrize("deferral,grace,local_time,applied_at,expected", DEADLINES)
def test_enforcement_deadline(ctx, deferral, grace, local_time, applied_at, expected):
    from mdm.ddm.targets import enforcement_deadline
    deadline_local, deadline_utc = enforcement_deadline(_release_18(), deferral_days=deferral, grace_days=grace,
                                                        local_time=local_time, applied_at=applied_at)
    assert deadline_local == expected
    assert deadline_utc == dt.datetime.fromisoformat(expected)


# ---- stored per-device plans -------------------------------------------------------------------------

def add_device(udid, product_name, os_version, **extra):
    device = Device(udid=udid, serial_number=f"SN-{udid}", product_name=product_name, os_version=os_version,
                    enrollment_status="enrolled", **extra)
    db.session.add(device)
    db.session.commit()
    return device


def make_policy(name, **fields):
    from mdm.ddm.policies import create_policy
    return create_policy({"name": name, **fields})


def test_policy_applied_after_a_release_gets_the_full_grace_period_and_keeps_it(ctx):
    from mdm.ddm import catalog
    from mdm.ddm.models import PolicyBinding
    from mdm.ddm.plan import patch_plan_for_device, recompute
    catalog.apply_feed(FEED_2024, "test-feed", now=D(2024, 9, 16))
    phone = add_device("late", "iPhone15,2", "17.6.1", time_zone="UTC")
    policy = make_policy("Vanguard-like", deferral_days=1, enforce=True, grace_days=3, local_time="18:00")
    db.session.add(PolicyBinding(policy_id=policy.id, device_id=phone.id))
    db.session.commit()

    applied = D(2024, 10, 1, 14, 30)
    assert recompute([phone.id], now=applied) == {phone.id}
    plan = patch_plan_for_device(phone)
    assert (plan.target_version, plan.deadline_local, plan.binding) == ("18.0", "2024-10-04T18:00:00", "device")
    assert plan.deadline_utc == D(2024, 10, 4, 18) and not plan.compliant      # a device on UTC
    # An hour later nothing changed: the deadline does not slide with the clock.
    assert recompute([phone.id], now=applied + dt.timedelta(hours=1)) == set()
    assert patch_plan_for_device(phone).deadline_local == "2024-10-04T18:00:00"


def test_recompute_follows_the_device_and_the_clock(ctx):
    from mdm.ddm import catalog
    from mdm.ddm.models import DevicePatchTarget, PolicyBinding
    from mdm.ddm.plan import patch_plan_for_device, recompute
    catalog.apply_feed(FEED_2024, "test-feed", now=D(2024, 9, 16))
    phone = add_device("p1", "iPhone15,2", "17.5.1")
    tablet = add_device("t1", "iPad7,5", "17.5.1")
    unknown = add_device("u1", "iPhone99,1", "18.0")
    policy = make_policy("Early", deferral_days=7, enforce=True, grace_days=7, local_time="10:00")
    for device in (phone, tablet, unknown):
        db.session.add(PolicyBinding(policy_id=policy.id, device_id=device.id))
    db.session.commit()

    t0 = D(2024, 9, 20, 12)
    assert recompute(now=t0) == {phone.id, tablet.id, unknown.id}
    assert patch_plan_for_device(phone).target_version == "17.6.1"
    assert patch_plan_for_device(tablet).target_version == "17.6.1"
    assert (patch_plan_for_device(unknown).reason, patch_plan_for_device(unknown).compliant) == ("model unknown",
                                                                                                 False)
    # 09-23: the deferral of 17.7/18.0 has elapsed; the capped iPad moves to 17.7, the phone to 18.0.
    assert recompute(now=D(2024, 9, 23, 1)) == {phone.id, tablet.id}
    assert patch_plan_for_device(phone).target_version == "18.0"
    # The deadline stays anchored on 17.6, the first release the phone (17.5.1) missed (grace from 09-20 noon, when
    # the policy reached it): 18.0 does not restart the clock (test_deadlines.py has both anchor rules).
    assert patch_plan_for_device(phone).deadline_local == "2024-09-28T10:00:00"
    assert patch_plan_for_device(phone).deadline_anchor_version == "17.6"
    assert patch_plan_for_device(tablet).target_version == "17.7"
    # The phone installs 18.0: compliant, no target, no deadline.
    phone.os_version = "18.0"
    db.session.commit()
    assert recompute(now=D(2024, 9, 24)) == {phone.id}
    plan = patch_plan_for_device(phone)
    assert (plan.compliant, plan.target_version, plan.deadline_local, plan.reason) == (True, None, None, "compliant")
    # Checked out: its plan is gone.
    tablet.enrollment_status = "unenrolled"
    db.session.commit()
    assert recompute(now=D(2024, 9, 24)) == {tablet.id}
    assert db.session.get(DevicePatchTarget, tablet.id) is None and patch_plan_for_device(tablet) is None


@pytest.mark.parametrize("time_zone, expected", [
    ("America/New_York", D(2027, 1, 14, 0)),      # EST, UTC-5: five hours later in UTC
    ("America/New_York", None),                   # (summer case below)
    ("Etc/GMT+5", D(2027, 1, 14, 0)),             # a fixed UTC-5 zone (POSIX sign: GMT+5 is UTC-5)
    ("Asia/Tokyo", D(2027, 1, 13, 10)),           # UTC+9: nine hours earlier
    ("UTC", D(2027, 1, 13, 19)),
    (None, None), ("", None), ("Mars/Olympus_Mons", None), ("localtime", None), ("../../etc/passwd", None),
    ("+05:00", None), (42, None),
])
def test_a_deadline_is_an_instant_only_in_a_known_iana_zone(time_zone, expected):
    from mdm.ddm.targets import deadline_instant_utc
    if time_zone == "America/New_York" and expected is None:
        assert deadline_instant_utc("2027-07-13T19:00:00", time_zone) == D(2027, 7, 13, 23)   # EDT, UTC-4
        return
    assert deadline_instant_utc("2027-01-13T19:00:00", time_zone) == expected


def test_dst_edges_and_malformed_local_strings_do_not_crash():
    from mdm.ddm.targets import deadline_instant_utc
    # 02:30 does not exist in New York on 2027-03-14 (spring forward): counted with the offset before (EST).
    assert deadline_instant_utc("2027-03-14T02:30:00", "America/New_York") == D(2027, 3, 14, 7, 30)
    # 01:30 happens twice on 2027-11-07: the first one (EDT).
    assert deadline_instant_utc("2027-11-07T01:30:00", "America/New_York") == D(2027, 11, 7, 5, 30)
    assert deadline_instant_utc("tomorrow", "Asia/Tokyo") is None
    assert deadline_instant_utc(None, "Asia/Tokyo") is None


def test_with_the_zone_unknown_overdue_means_passed_in_every_zone():
    from mdm.ddm.targets import deadline_passed_everywhere
    local = "2027-01-13T19:00:00"
    assert not deadline_passed_everywhere(local, D(2027, 1, 14, 6, 59))    # still before 19:00 at UTC-12
    assert not deadline_passed_everywhere(local, D(2027, 1, 14, 7, 0))
    assert deadline_passed_everywhere(local, D(2027, 1, 14, 7, 1))
    assert not deadline_passed_everywhere(None, D(2030, 1, 1))
