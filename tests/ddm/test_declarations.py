"""What each device receives, checked against Apple's schemas (types, ranges, required keys, per-OS and
supervised-only support). Pure: builds declarations from a Device and a PatchPlan, no database."""
from __future__ import annotations

import plistlib
from dataclasses import replace

import pytest

from appleschema import SCHEMA_ROOT, load, validate_declaration, validate_profile
from mdm.ddm import declarations as decl
from mdm.ddm.plan import PatchPlan
from mdm.ddm.policies import PolicySettings
from mdm.models import Device

MACOS_ONLY_DEFERRALS = {"MajorPeriodInDays", "MinorPeriodInDays", "SystemPeriodInDays"}


def device(os_version="18.0", supervised=True, product="iPhone15,2"):
    return Device(udid="U1", product_name=product, os_version=os_version, is_supervised=supervised)


def plan(**settings):
    base = dict(name="Ring", deferral_days=7, enforce=True, grace_days=7, local_time="09:30",
                details_url="https://intranet.example.com/ios", notifications_all=False, cadence="Newest",
                auto_download="AlwaysOn", auto_install_os="AlwaysOn", rsr_offer=False, rsr_rollback=False,
                beta_enrollment="AlwaysOn", beta_programs=(("Org beta", "tok-1"),))
    base.update(settings)
    return PatchPlan(policy_id=3, policy_name="Ring", binding="device", settings=PolicySettings(**base),
                     target_version="18.1", target_build="22B83", deadline_local="2024-11-12T09:30:00",
                     deadline_utc=None, reason=None, compliant=False, conflicts=())


def full(built, os_version="18.0"):
    assert built.declaration is not None, built.notes
    return decl.with_server_token(built.declaration)


def test_settings_for_a_supervised_ios18_device_carry_every_policy_field_and_validate():
    d = full(decl.software_update_settings(device(), plan()))
    assert d["Type"] == "com.apple.configuration.softwareupdate.settings"
    p = d["Payload"]
    assert p["Deferrals"] == {"CombinedPeriodInDays": 7}
    assert p["AutomaticActions"] == {"Download": "AlwaysOn", "InstallOSUpdates": "AlwaysOn"}
    assert p["RapidSecurityResponse"] == {"Enable": False, "EnableRollback": False}
    assert p["Beta"] == {"ProgramEnrollment": "AlwaysOn", "OfferPrograms": [{"Description": "Org beta",
                                                                            "Token": "tok-1"}]}
    assert p["Notifications"] is False and p["RecommendedCadence"] == "Newest"
    assert validate_declaration(d, "iOS", "18.0", supervised=True) == []


def test_settings_never_carry_macos_only_keys():
    p = full(decl.software_update_settings(device(), plan(auto_install_security="AlwaysOn")))["Payload"]
    assert not MACOS_ONLY_DEFERRALS & set(p.get("Deferrals", {}))
    assert "InstallSecurityUpdate" not in p["AutomaticActions"]
    assert "AllowStandardUserOSUpdates" not in p


def test_unsupervised_device_gets_no_supervised_only_keys_and_the_result_says_so():
    built = decl.software_update_settings(device(supervised=False), plan(beta_enrollment="Allowed"))
    d = full(built)
    assert set(d["Payload"]) == {"Notifications", "RecommendedCadence", "Beta"}
    assert d["Payload"]["Beta"] == {"OfferPrograms": [{"Description": "Org beta", "Token": "tok-1"}]}
    assert validate_declaration(d, "iOS", "18.0", supervised=False) == []
    assert any("deferral" in n and "supervised" in n for n in built.notes)


def test_no_offered_programs_with_beta_always_off():
    p = full(decl.software_update_settings(device(), plan(beta_enrollment="AlwaysOff")))["Payload"]
    assert p["Beta"] == {"ProgramEnrollment": "AlwaysOff"}


def test_zero_deferral_sends_no_deferral_key():
    p = full(decl.software_update_settings(device(), plan(deferral_days=0)))["Payload"]
    assert "Deferrals" not in p


@pytest.mark.parametrize("os_version", ["17.5", "16.7.10"])
def test_settings_only_from_ios18(os_version):
    built = decl.software_update_settings(device(os_version), plan())
    assert built.declaration is None and built.notes == ["settings: needs iOS 18"]


@pytest.mark.parametrize("os_version", ["17.0", "17.5", "18.0"])
def test_enforcement_specific_for_ios17_and_later_validates(os_version):
    d = full(decl.enforcement_specific(device(os_version, supervised=False), plan()))
    assert d["Payload"] == {"TargetOSVersion": "18.1", "TargetBuildVersion": "22B83",
                            "TargetLocalDateTime": "2024-11-12T09:30:00",
                            "DetailsURL": "https://intranet.example.com/ios"}
    assert validate_declaration(d, "iOS", os_version, supervised=False) == []


def test_no_enforcement_below_17_when_off_when_compliant_or_without_target():
    assert decl.enforcement_specific(device("16.7.10"), plan()).declaration is None
    assert decl.enforcement_specific(device(), plan(enforce=False)).notes == ["enforcement: off in the policy"]
    assert decl.enforcement_specific(device("18.1"), plan()).declaration is None       # already on target
    no_target = replace(plan(), target_version=None, target_build=None, deadline_local=None,
                        reason="model unknown")
    assert decl.enforcement_specific(device(), no_target).notes == ["enforcement: model unknown"]


def test_enforcement_without_details_url_or_build_leaves_them_out():
    p = replace(plan(details_url=None), target_build=None)
    assert decl.enforcement_specific(device(), p).declaration["Payload"] == {
        "TargetOSVersion": "18.1", "TargetLocalDateTime": "2024-11-12T09:30:00"}


def status_names(d):
    return {item["Name"] for item in d["Payload"]["StatusItems"]}


def test_status_subscriptions_follow_the_os_version_and_validate():
    ios16 = status_names(decl.status_subscriptions(device("16.0")).declaration)
    ios17 = status_names(decl.status_subscriptions(device("17.5")).declaration)
    ios18 = status_names(decl.status_subscriptions(device("18.0")).declaration)
    assert "softwareupdate.install-state" not in ios16 and "device.operating-system.version" in ios16
    assert "device.operating-system.supplemental.build-version" not in ios16
    assert {"softwareupdate.install-state", "softwareupdate.pending-version", "softwareupdate.failure-reason",
            "softwareupdate.install-reason"} <= ios17
    assert "softwareupdate.beta-enrollment" not in ios17 and "softwareupdate.device-id" not in ios17
    assert {"softwareupdate.beta-enrollment", "softwareupdate.device-id", "management.declarations",
            "device.model.identifier", "device.operating-system.build-version"} <= ios18
    for version in ("16.0", "17.5", "18.0"):
        d = full(decl.status_subscriptions(device(version)))
        assert validate_declaration(d, "iOS", version) == []


def test_every_subscribed_item_is_supported_by_the_device_per_apples_status_schema():
    for version in ("15.0", "16.1", "17.0", "18.0"):
        for name in status_names(decl.status_subscriptions(device(version)).declaration):
            schema = load(f"declarative/status/{name}.yaml")
            introduced = schema["payload"]["supportedOS"]["iOS"]["introduced"]
            assert decl.version_tuple(version) >= decl.version_tuple(introduced), (name, version)


def test_activation_references_the_configurations_and_validates():
    d = full(decl.activation(["b", "a"]))
    assert d["Payload"] == {"StandardConfigurations": ["a", "b"]}
    assert validate_declaration(d, "iOS", "17.0") == []


def test_server_token_covers_the_whole_content():
    a = full(decl.enforcement_specific(device(), plan()))
    again = full(decl.enforcement_specific(device(), plan()))
    later = full(decl.enforcement_specific(device(), replace(plan(), deadline_local="2024-11-13T09:30:00")))
    assert a["ServerToken"] == again["ServerToken"]
    assert later["ServerToken"] != a["ServerToken"]
    assert len(a["ServerToken"]) <= 64 and len(a["Identifier"]) <= 64


def test_restrictions_profile_for_ios17_deferral_validates():
    assert decl.restrictions_delay_days(device("17.5"), plan()) == 7
    assert decl.restrictions_delay_days(device("17.5", supervised=False), plan()) is None   # supervised-only keys
    assert decl.restrictions_delay_days(device("18.0"), plan()) is None      # the settings declaration does it
    assert decl.restrictions_delay_days(device("17.5"), plan(deferral_days=0)) is None
    profile = plistlib.loads(decl.restrictions_profile(7, "Test Org"))
    restrictions = profile["PayloadContent"][0]
    assert restrictions["forceDelayedSoftwareUpdates"] is True and restrictions["enforcedSoftwareUpdateDelay"] == 7
    assert profile["PayloadIdentifier"] == decl.RESTRICTIONS_PROFILE_ID
    from appleschema import Context
    assert validate_profile(profile, Context("iOS", "17.5", supervised=True)) == []


def test_the_schema_files_used_here_exist():
    # Guards against a renamed schema silently skipping validation.
    for relative in ("declarative/declarations/configurations/softwareupdate.settings.yaml",
                     "declarative/declarations/configurations/softwareupdate.enforcement.specific.yaml"):
        assert (SCHEMA_ROOT / relative).exists()
