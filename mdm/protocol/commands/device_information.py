"""DeviceInformation: ask the device for its facts; the answer updates the inventory columns.

Schema: apple-schema/mdm/commands/information.device.yaml (Queries, QueryResponses).
"""
from __future__ import annotations

from .base import CommandError, is_acknowledged, json_safe, update_device

REQUEST_TYPE = "DeviceInformation"

# Every query name Apple's schema lists (QueriesItem subkeys); the device ignores names it does not know,
# but we only ever send names from this list. tests/protocol/test_commands.py checks it against the schema.
ALL_QUERIES = frozenset("""
UDID ProvisioningUDID OrganizationInfo MDMOptions LastCloudBackupDate AwaitingConfiguration
iTunesStoreAccountIsActive iTunesStoreAccountHash DeviceName OSVersion SupplementalOSVersionExtra BuildVersion
SupplementalBuildVersion ModelName Model ModelNumber IsAppleSilicon ProductName SerialNumber DeviceCapacity
AvailableDeviceCapacity IMEI MEID ModemFirmwareVersion CellularTechnology BatteryLevel HasBattery IsSupervised
IsMultiUser IsDeviceLocatorServiceEnabled IsActivationLockEnabled IsActivationLockSupported
IsDoNotDisturbInEffect DeviceID EASDeviceIdentifier IsCloudBackupEnabled ActiveManagedUsers OSUpdateSettings
LocalHostName HostName AutoSetupAdminAccounts SystemIntegrityProtectionEnabled SupportsLOMDevice
IsMDMLostModeEnabled MaximumResidentUsers EstimatedResidentUsers QuotaSize ResidentUsers UserSessionTimeout
TemporarySessionTimeout TemporarySessionOnly ManagedAppleIDDefaultDomains OnlineAuthenticationGracePeriod
SkipLanguageAndLocaleSetupForNewUsers PushToken DiagnosticSubmissionEnabled AppAnalyticsEnabled TimeZone ICCID
BluetoothMAC WiFiMAC EthernetMAC CurrentCarrierNetwork SIMCarrierNetwork SubscriberCarrierNetwork
CarrierSettingsVersion PhoneNumber DataRoamingEnabled VoiceRoamingEnabled PersonalHotspotEnabled
IsNetworkTethered IsRoaming SubscriberMCC SubscriberMNC CurrentMCC CurrentMNC ServiceSubscriptions
PINRequiredForEraseDevice PINRequiredForDeviceLock SupportsiOSAppInstalls SoftwareUpdateDeviceID
SoftwareUpdateSettings AccessibilitySettings DevicePropertiesAttestation EACSPreflight
""".split())

# What the server needs for inventory and software-update targeting (SoftwareUpdateDeviceID and the
# Supplemental* values identify the update catalog entry and Rapid Security Responses). TimeZone (iOS 14+,
# information.device.yaml) places the device-local patch deadline (TargetLocalDateTime) in time.
DEFAULT_QUERIES = (
    "UDID", "DeviceName", "SerialNumber", "ProductName", "Model", "ModelName", "ModelNumber",
    "OSVersion", "BuildVersion", "SupplementalBuildVersion", "SupplementalOSVersionExtra",
    "SoftwareUpdateDeviceID", "IsSupervised", "DeviceCapacity", "AvailableDeviceCapacity", "BatteryLevel",
    "IsMDMLostModeEnabled", "IsActivationLockEnabled", "WiFiMAC", "IMEI", "TimeZone",
)

# QueryResponses key -> (Device column, expected type)
COLUMNS = {
    "IsSupervised": ("is_supervised", bool),
    "OSVersion": ("os_version", str),
    "BuildVersion": ("build_version", str),
    "ProductName": ("product_name", str),
    "Model": ("model", str),
    "ModelName": ("model_name", str),
    "DeviceName": ("device_name", str),
    "SerialNumber": ("serial_number", str),
    "SoftwareUpdateDeviceID": ("software_update_device_id", str),
    "TimeZone": ("time_zone", str),     # stored as reported; validated where it is used (ddm/targets.py)
}


def build(queries=None) -> dict:
    if queries is None:
        queries = DEFAULT_QUERIES
    if isinstance(queries, str):
        queries = [q.strip() for q in queries.split(",") if q.strip()]
    if not isinstance(queries, (list, tuple)) or not queries:
        raise CommandError("queries must be a non-empty list of query names")
    unknown = [q for q in queries if q not in ALL_QUERIES]
    if unknown:
        raise CommandError(f"queries not in Apple's DeviceInformation schema: {', '.join(map(str, unknown))}")
    return {"RequestType": REQUEST_TYPE, "Queries": list(dict.fromkeys(queries))}


def handle_response(device, response: dict) -> None:
    answers = response.get("QueryResponses")
    if not is_acknowledged(response) or not isinstance(answers, dict):
        return
    columns = {}
    for key, (column, kind) in COLUMNS.items():
        value = answers.get(key)
        if isinstance(value, kind) and (kind is not str or value):
            columns[column] = value
    # Merge: a narrower query later must not erase answers to a wider one.
    merged = dict((device.inventory or {}).get(REQUEST_TYPE) or {})
    merged.update(json_safe(answers))
    update_device(device, columns=columns, inventory={REQUEST_TYPE: merged})
