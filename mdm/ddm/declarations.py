"""One function per declaration type: what a device receives for its patch plan.

Each builder returns the declaration without its ServerToken (``with_server_token`` adds it, computed
over the whole content) or None, plus notes saying what was left out and why. The rules come from
Apple's schemas in apple/device-management ``declarative/declarations/configurations/*.yaml``.
"""
from __future__ import annotations

import hashlib
import json
import plistlib
import uuid
from dataclasses import dataclass, field

STATUS_SUBSCRIPTIONS_ID = "mdm.status-subscriptions"
ACTIVATION_ID = "mdm.activation"
RESTRICTIONS_PROFILE_ID = "mdm.patch.restrictions"

TYPE_ACTIVATION = "com.apple.activation.simple"
TYPE_STATUS_SUBSCRIPTIONS = "com.apple.configuration.management.status-subscriptions"
TYPE_SETTINGS = "com.apple.configuration.softwareupdate.settings"
TYPE_ENFORCEMENT = "com.apple.configuration.softwareupdate.enforcement.specific"

# Minimum OS per status item, from declarative/status/<item>.yaml (supportedOS.*.introduced).
_BASE = {"iOS": "15.0", "macOS": "13.0", "tvOS": "16.0", "visionOS": "1.1", "watchOS": "10.0"}
_SUPPLEMENTAL = {"iOS": "16.1", "macOS": "13.0", "tvOS": "16.1", "visionOS": "1.1", "watchOS": "10.0"}
_SU_17 = {"iOS": "17.0", "macOS": "14.0"}
_SU_18 = {"iOS": "18.0", "macOS": "15.0"}
SUBSCRIBED_STATUS_ITEMS = {
    "device.model.identifier": _BASE,
    "device.operating-system.build-version": _BASE,
    "device.operating-system.supplemental.build-version": _SUPPLEMENTAL,
    "device.operating-system.supplemental.extra-version": _SUPPLEMENTAL,
    "device.operating-system.version": _BASE,
    "management.declarations": _BASE,
    "softwareupdate.beta-enrollment": _SU_18,
    "softwareupdate.device-id": _SU_18,
    "softwareupdate.failure-reason": _SU_17,
    "softwareupdate.install-reason": _SU_17,
    "softwareupdate.install-state": _SU_17,
    "softwareupdate.pending-version": _SU_17,
}

# softwareupdate.settings.yaml: iOS 18.0; enforcement.specific.yaml: iOS 17.0.
SETTINGS_MIN_IOS = (18, 0)
ENFORCEMENT_MIN_IOS = (17, 0)

# The policy may say "UserControlled"; Apple's rangelist value for that is "Allowed".
_ACTION_VALUES = {"UserControlled": "Allowed", "Allowed": "Allowed", "AlwaysOn": "AlwaysOn",
                  "AlwaysOff": "AlwaysOff"}


def version_tuple(version: str | None) -> tuple[int, ...]:
    parts = []
    for piece in str(version or "").split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def os_family(device) -> str | None:
    """The OS name Apple's schemas use: iPadOS counts as iOS."""
    if device.runs_ios:
        return "iOS"
    return device.platform if device.platform in _BASE else None


@dataclass
class Built:
    declaration: dict | None
    notes: list[str] = field(default_factory=list)


def with_server_token(declaration: dict) -> dict:
    """ServerToken = hash of the entire declaration content, so any change gives a new token."""
    content = {k: v for k, v in declaration.items() if k != "ServerToken"}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return {**content, "ServerToken": hashlib.sha256(canonical.encode()).hexdigest()[:40]}


def status_subscriptions(device) -> Built:
    """Subscribe to every status item results need, where the device's OS supports it."""
    family = os_family(device) or "iOS"
    installed = version_tuple(device.os_version)
    names = sorted(name for name, support in SUBSCRIBED_STATUS_ITEMS.items()
                   if family in support and installed >= version_tuple(support[family]))
    return Built({"Type": TYPE_STATUS_SUBSCRIPTIONS, "Identifier": STATUS_SUBSCRIPTIONS_ID,
                  "Payload": {"StatusItems": [{"Name": name} for name in names]}})


def activation(configuration_identifiers: list[str]) -> Built:
    return Built({"Type": TYPE_ACTIVATION, "Identifier": ACTIVATION_ID,
                  "Payload": {"StandardConfigurations": sorted(configuration_identifiers)}})


def settings_identifier(policy_id: int) -> str:
    return f"mdm.patch.{policy_id}.settings"


def enforcement_identifier(policy_id: int) -> str:
    return f"mdm.patch.{policy_id}.enforcement"


def software_update_settings(device, plan) -> Built:
    """SoftwareUpdateSettings (iOS 18+). Supervised-only keys are left out for unsupervised devices and
    macOS-only keys (Major/Minor/SystemPeriodInDays, InstallSecurityUpdate, AllowStandardUserOSUpdates)
    are never sent: on iOS the deferral is Deferrals.CombinedPeriodInDays (softwareupdate.settings.yaml)."""
    if not device.runs_ios:
        return Built(None, ["settings: not an iOS device"])
    if version_tuple(device.os_version) < SETTINGS_MIN_IOS:
        return Built(None, ["settings: needs iOS 18"])
    s = plan.settings
    supervised = bool(device.is_supervised)
    notes: list[str] = []
    payload: dict = {"Notifications": bool(s.notifications_all), "RecommendedCadence": s.cadence}

    download = _ACTION_VALUES.get(s.auto_download, "Allowed")
    install_os = _ACTION_VALUES.get(s.auto_install_os, "Allowed")
    enrollment = _ACTION_VALUES.get(s.beta_enrollment, "Allowed")
    programs = [{"Description": d, "Token": t} for d, t in (s.beta_programs or ())]

    if supervised:
        if s.deferral_days:
            payload["Deferrals"] = {"CombinedPeriodInDays": int(s.deferral_days)}
        payload["AutomaticActions"] = {"Download": download, "InstallOSUpdates": install_os}
        payload["RapidSecurityResponse"] = {"Enable": bool(s.rsr_offer), "EnableRollback": bool(s.rsr_rollback)}
        beta: dict = {"ProgramEnrollment": enrollment}
        # OfferPrograms only with Allowed or AlwaysOn (Beta.OfferPrograms in the schema).
        if programs and enrollment != "AlwaysOff":
            beta["OfferPrograms"] = programs
        payload["Beta"] = beta
    else:
        left_out = []
        if s.deferral_days:
            left_out.append("deferral")
        if download != "Allowed" or install_os != "Allowed":
            left_out.append("automatic actions")
        if not s.rsr_offer or not s.rsr_rollback:
            left_out.append("rapid security responses")
        if enrollment != "Allowed":
            left_out.append("beta enrollment")
        elif programs:
            # Unsupervised devices may take OfferPrograms: ProgramEnrollment is implicitly Allowed there.
            payload["Beta"] = {"OfferPrograms": programs}
        if left_out:
            notes.append(f"settings: {', '.join(left_out)} left out (supervised devices only)")
    if _ACTION_VALUES.get(s.auto_install_security, "Allowed") != "Allowed":
        notes.append("settings: automatic security-response installs are a macOS-only key, not sent to iOS")
    return Built({"Type": TYPE_SETTINGS, "Identifier": settings_identifier(plan.policy_id), "Payload": payload},
                 notes)


def enforcement_specific(device, plan) -> Built:
    """SoftwareUpdateEnforcementSpecific (iOS 17+) when the policy enforces and a target exists."""
    if not plan.settings.enforce:
        return Built(None, ["enforcement: off in the policy"])
    if not device.runs_ios:
        return Built(None, ["enforcement: not an iOS device"])
    if version_tuple(device.os_version) < ENFORCEMENT_MIN_IOS:
        return Built(None, ["enforcement: needs iOS 17"])
    if plan.compliant or (plan.target_version and
                          version_tuple(device.os_version) >= version_tuple(plan.target_version)):
        return Built(None, ["enforcement: device is compliant"])
    if not plan.target_version or not plan.deadline_local:
        return Built(None, [f"enforcement: {plan.reason or 'no target'}"])
    payload = {"TargetOSVersion": plan.target_version, "TargetLocalDateTime": plan.deadline_local}
    if plan.target_build:
        payload["TargetBuildVersion"] = plan.target_build
    if plan.settings.details_url:
        payload["DetailsURL"] = plan.settings.details_url
    return Built({"Type": TYPE_ENFORCEMENT, "Identifier": enforcement_identifier(plan.policy_id),
                  "Payload": payload})


def restrictions_delay_days(device, plan) -> int | None:
    """iOS 17 cannot take the settings declaration: the deferral goes in a restrictions profile,
    whose keys are supervised-only (com.apple.applicationaccess.yaml). None = no profile."""
    if plan is None or not device.runs_ios or not device.is_supervised:
        return None
    if not (ENFORCEMENT_MIN_IOS <= version_tuple(device.os_version) < SETTINGS_MIN_IOS):
        return None
    return int(plan.settings.deferral_days) or None


def restrictions_profile(delay_days: int, organization: str = "MDM") -> bytes:
    """The configuration profile carrying forceDelayedSoftwareUpdates + enforcedSoftwareUpdateDelay."""
    payload_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{RESTRICTIONS_PROFILE_ID}.payload")).upper()
    profile_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, RESTRICTIONS_PROFILE_ID)).upper()
    profile = {
        "PayloadType": "Configuration", "PayloadVersion": 1, "PayloadIdentifier": RESTRICTIONS_PROFILE_ID,
        "PayloadUUID": profile_uuid, "PayloadDisplayName": "Software update deferral",
        "PayloadOrganization": organization, "PayloadRemovalDisallowed": True,
        "PayloadContent": [{
            "PayloadType": "com.apple.applicationaccess", "PayloadVersion": 1,
            "PayloadIdentifier": f"{RESTRICTIONS_PROFILE_ID}.applicationaccess", "PayloadUUID": payload_uuid,
            "PayloadDisplayName": "Software update deferral",
            "forceDelayedSoftwareUpdates": True, "enforcedSoftwareUpdateDelay": int(delay_days),
        }],
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML, sort_keys=True)
