"""The simulated device's Declarative Device Management client.

``install(device)`` teaches a SimulatedDevice DDM: on a DeclarativeManagement command it fetches the
tokens, the declaration items and each new or changed declaration over signed check-ins, evaluates them
the way iOS does, and sends a status report. ``advance(device, now)`` moves simulated time: when an
enforced update's deadline (device-local) has passed it installs the target and reports the new OS.
The install steps (``start_install``, ``set_install_state``, ``fail_install``, ``finish_install``) are
also used one by one by the kept-running fleet (``live.py``), which spreads them over simulated minutes
and reports each step as an incremental status report (declarative/status/softwareupdate.*.yaml).
Device-local time comes from the device's IANA time zone when it has one, else from a fixed offset.

The device-side rules live here, written from Apple's schemas independently of the server's code, so a
server bug shows up as an invalid declaration rather than being mirrored:
- an unsupported declaration type for the OS is Error.ConfigurationNotSupported;
- keys Apple does not define are Error.UnknownPayloadKeys; keys defined for other platforms, or
  supervised-only keys on an unsupervised device, are ignored;
- the automatic-action combinations iOS rejects are "Invalid global settings declaration";
- an enforcement target at or below the installed version is an error.
"""
from __future__ import annotations

import datetime as dt
import json
import zoneinfo
from dataclasses import dataclass, field

from .device import KNOWN_BUILDS, SimulatorError

MANIFEST_KINDS = {"Activations": "activation", "Configurations": "configuration", "Assets": "asset",
                  "Management": "management"}
STATUS_KINDS = {"activation": "activations", "configuration": "configurations", "asset": "assets",
                "management": "management"}

# Minimum iOS per declaration type (declarative/declarations/**.yaml) and per status item
# (declarative/status/*.yaml).
DECLARATION_MIN_IOS = {
    "com.apple.activation.simple": (15, 0),
    "com.apple.configuration.management.status-subscriptions": (15, 0),
    "com.apple.configuration.softwareupdate.enforcement.specific": (17, 0),
    "com.apple.configuration.softwareupdate.settings": (18, 0),
}
STATUS_MIN_IOS = {
    "device.model.identifier": (15, 0), "device.operating-system.version": (15, 0),
    "device.operating-system.build-version": (15, 0), "management.declarations": (15, 0),
    "device.operating-system.supplemental.build-version": (16, 1),
    "device.operating-system.supplemental.extra-version": (16, 1),
    "softwareupdate.install-state": (17, 0), "softwareupdate.pending-version": (17, 0),
    "softwareupdate.failure-reason": (17, 0), "softwareupdate.install-reason": (17, 0),
    "softwareupdate.beta-enrollment": (18, 0), "softwareupdate.device-id": (18, 0),
}

# softwareupdate.settings.yaml, as iOS sees it: key -> (applies to iOS, supervised only, subkeys).
_SETTINGS_KEYS = {
    "Notifications": (True, False, None),
    "Deferrals": (True, True, {"CombinedPeriodInDays": True, "MajorPeriodInDays": False,
                               "MinorPeriodInDays": False, "SystemPeriodInDays": False}),
    "RecommendedCadence": (True, False, None),
    "AutomaticActions": (True, True, {"Download": True, "InstallOSUpdates": True, "InstallSecurityUpdate": False}),
    "RapidSecurityResponse": (True, True, {"Enable": True, "EnableRollback": True}),
    "AllowStandardUserOSUpdates": (False, False, None),
    "Beta": (True, False, {"ProgramEnrollment": True, "OfferPrograms": True, "RequireProgram": True}),
}
_SUPERVISED_BETA_KEYS = {"ProgramEnrollment", "RequireProgram"}
# Download / InstallOSUpdates pairs iOS refuses.
INVALID_AUTOMATIC_ACTIONS = {("Allowed", "AlwaysOn"), ("AlwaysOff", "Allowed"), ("AlwaysOff", "AlwaysOn")}
INVALID_SETTINGS = "Invalid global settings declaration"


def _version(value: str | None) -> tuple[int, ...]:
    out = []
    for part in str(value or "").split("."):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


@dataclass
class Scheduled:
    identifier: str
    target_version: str
    target_build: str | None
    deadline_local: dt.datetime


@dataclass
class DeviceDDM:
    """What the simulated device holds and reports."""
    utc_offset: dt.timedelta = dt.timedelta(0)     # device-local time = UTC clock + offset
    time_zone: str | None = None                   # IANA name; when set it wins over utc_offset
    declarations_token: str | None = None
    declarations: dict = field(default_factory=dict)        # identifier -> declaration as fetched
    evaluation: dict = field(default_factory=dict)          # identifier -> {"valid", "active", "reasons"}
    install_state: str = "none"
    pending: tuple[str, str] = ("", "")
    failure_count: int = 0
    failure_reason: str | None = None
    install_reasons: list = field(default_factory=list)
    install_declaration: str | None = None
    deferral_days: int | None = None
    beta_enrollment: str = ""
    scheduled: Scheduled | None = None
    fail_install_with: str | None = None     # test knob: the next install fails with this reason
    reports: list = field(default_factory=list)
    fetched: list = field(default_factory=list)             # endpoints fetched, in order


def install(device, utc_offset_hours: float = 0, time_zone: str | None = None) -> DeviceDDM:
    """Register the DeclarativeManagement handler on ``device``; returns its DDM state (``device.ddm``).
    ``time_zone`` (IANA, e.g. "America/New_York") makes device-local time follow that zone, DST included."""
    if time_zone is not None:
        zoneinfo.ZoneInfo(time_zone)        # an unknown zone fails here, not at the first deadline
    device.ddm = DeviceDDM(utc_offset=dt.timedelta(hours=utc_offset_hours), time_zone=time_zone)
    device.command_handlers["DeclarativeManagement"] = _handle_command
    return device.ddm


def _handle_command(device, command: dict) -> dict:
    data = command["Command"].get("Data")
    tokens = None
    if data:
        try:
            tokens = json.loads(data)["SyncTokens"]
        except (ValueError, KeyError, TypeError):
            return {"Status": "Error", "ErrorChain": [{"ErrorCode": 1, "ErrorDomain": "RMErrorDomain",
                                                       "LocalizedDescription": "Malformed SyncTokens"}]}
    sync(device, tokens)
    return {"Status": "Acknowledged"}


# ---- transport ------------------------------------------------------------------------------------
def request(device, endpoint: str, data: bytes | None = None):
    """One DeclarativeManagement check-in; returns the httpx response."""
    message = {"MessageType": "DeclarativeManagement", "UDID": device.udid, "Endpoint": endpoint}
    if data is not None:
        message["Data"] = data
    device.ddm.fetched.append(endpoint)
    return device.checkin(message)


def _json(device, endpoint: str) -> dict:
    response = request(device, endpoint)
    if response.status_code != 200:
        raise SimulatorError(f"DDM {endpoint} failed: HTTP {response.status_code} {response.text[:200]}")
    return response.json()


# ---- sync -----------------------------------------------------------------------------------------
# How many times a sync starts over when the set changes under it before the simulator calls it a server bug.
SYNC_ATTEMPTS = 3


class _SetChangedDuringSync(SimulatorError):
    pass


def sync(device, tokens: dict | None = None) -> bool:
    """Fetch what changed, evaluate, report status. Returns True when the declaration set changed.

    A declaration whose Identifier or ServerToken differs from its entry in the manifest just fetched means
    the set changed between the two requests (an administrator's edit). The declarations already fetched
    are kept, and the sync starts over from the tokens, as a device does on the new DeclarationsToken the
    server then sends it. A mismatch that persists over ``SYNC_ATTEMPTS`` syncs is a server bug
    (SimulatorError)."""
    for _attempt in range(SYNC_ATTEMPTS):
        try:
            return _sync_once(device, tokens)
        except _SetChangedDuringSync as exc:
            changed, tokens = exc, None
    raise SimulatorError(f"{changed} in {SYNC_ATTEMPTS} syncs in a row")


def _sync_once(device, tokens: dict | None) -> bool:
    state = device.ddm
    if tokens is None:
        tokens = _json(device, "tokens")["SyncTokens"]
    if tokens.get("DeclarationsToken") == state.declarations_token:
        return False
    items = _json(device, "declaration-items")
    wanted = {}
    for section, kind in MANIFEST_KINDS.items():
        for entry in items["Declarations"][section]:
            wanted[entry["Identifier"]] = (kind, entry["ServerToken"])
    for identifier in list(state.declarations):
        if identifier not in wanted:
            _forget(state, identifier)
    for identifier, (kind, server_token) in sorted(wanted.items()):
        held = state.declarations.get(identifier)
        if held and held["ServerToken"] == server_token:
            continue
        response = request(device, f"declaration/{kind}/{identifier}")
        if response.status_code != 200:
            raise SimulatorError(f"declaration {identifier}: HTTP {response.status_code}")
        declaration = response.json()
        if declaration.get("Identifier") != identifier or declaration.get("ServerToken") != server_token:
            raise _SetChangedDuringSync(f"declaration {identifier} does not match its manifest entry")
        declaration["_kind"] = kind
        state.declarations[identifier] = declaration
    state.declarations_token = items["DeclarationsToken"]
    evaluate(device)
    report_status(device)
    return True


def _forget(state: DeviceDDM, identifier: str) -> None:
    state.declarations.pop(identifier, None)
    state.evaluation.pop(identifier, None)
    if state.scheduled and state.scheduled.identifier == identifier:
        state.scheduled = None
        state.pending = ("", "")


# ---- evaluation -----------------------------------------------------------------------------------
def _reason(code: str, description: str, **details) -> dict:
    reason = {"code": code, "description": description}
    if details:
        reason["details"] = details
    return reason


def evaluate(device) -> None:
    """Decide valid/active for every held declaration, and apply what is valid."""
    state = device.ddm
    installed = _version(device.os_version)
    results = {}
    for identifier, declaration in state.declarations.items():
        dtype = declaration.get("Type")
        minimum = DECLARATION_MIN_IOS.get(dtype)
        if minimum is None or installed < minimum:
            results[identifier] = ("invalid", [_reason("Error.ConfigurationNotSupported",
                                                       f"{dtype} is not supported on iOS {device.os_version}",
                                                       Identifier=identifier,
                                                       ServerToken=declaration["ServerToken"])])
            continue
        check = _CHECKS.get(dtype, lambda d, decl: [])
        problems = check(device, declaration)
        results[identifier] = ("invalid" if problems else "valid", problems)

    referenced = set()
    for identifier, declaration in state.declarations.items():
        if declaration.get("_kind") != "activation" or results[identifier][0] != "valid":
            continue
        configs = declaration["Payload"].get("StandardConfigurations", [])
        missing = [c for c in configs if c not in state.declarations]
        if missing:
            results[identifier] = ("invalid", [_reason("Error.MissingConfigurations", "missing configurations",
                                                       Identifier=identifier, ConfigurationIdentifiers=missing)])
            continue
        referenced.update(configs)

    state.evaluation = {}
    for identifier, declaration in state.declarations.items():
        valid, reasons = results[identifier]
        kind = declaration["_kind"]
        active = valid == "valid" and (kind == "activation" or identifier in referenced)
        if kind == "configuration" and identifier not in referenced and valid == "valid":
            valid, reasons = "unknown", [_reason("Info.NotReferencedByActivation", "not referenced by an activation",
                                                 Identifier=identifier, ServerToken=declaration["ServerToken"])]
        state.evaluation[identifier] = {"valid": valid, "active": active, "reasons": reasons}
    _apply(device)


def _check_settings(device, declaration: dict) -> list[dict]:
    payload = declaration.get("Payload") or {}
    unknown = []
    for key, value in payload.items():
        spec = _SETTINGS_KEYS.get(key)
        if spec is None:
            unknown.append(key)
        elif spec[2] and isinstance(value, dict):
            unknown += [f"{key}.{sub}" for sub in value if sub not in spec[2]]
    if unknown:
        return [_reason("Error.UnknownPayloadKeys", "unknown payload keys", UnknownPayloadKeys=unknown)]
    actions = _effective(device, payload).get("AutomaticActions", {})
    pair = (actions.get("Download", "Allowed"), actions.get("InstallOSUpdates", "Allowed"))
    if pair in INVALID_AUTOMATIC_ACTIONS:
        return [_reason("Error.ConfigurationIsInvalid", INVALID_SETTINGS, Error=INVALID_SETTINGS)]
    beta = _effective(device, payload).get("Beta", {})
    if beta.get("ProgramEnrollment") == "AlwaysOff" and ("OfferPrograms" in beta or "RequireProgram" in beta):
        return [_reason("Error.ConfigurationIsInvalid", "beta programs offered with enrollment AlwaysOff",
                        Error="OfferPrograms must not be present when ProgramEnrollment is AlwaysOff")]
    return []


def _effective(device, payload: dict) -> dict:
    """The settings iOS honours: other platforms' keys and, unsupervised, supervised-only keys dropped."""
    out = {}
    for key, value in payload.items():
        applies, supervised_only, subkeys = _SETTINGS_KEYS[key]
        if not applies or (supervised_only and not device.supervised):
            continue
        if subkeys and isinstance(value, dict):
            value = {k: v for k, v in value.items() if subkeys.get(k)
                     and not (key == "Beta" and k in _SUPERVISED_BETA_KEYS and not device.supervised)}
        out[key] = value
    return out


def _check_enforcement(device, declaration: dict) -> list[dict]:
    payload = declaration.get("Payload") or {}
    allowed = {"TargetOSVersion", "TargetBuildVersion", "TargetLocalDateTime", "DetailsURL"}
    unknown = [k for k in payload if k not in allowed]
    if unknown:
        return [_reason("Error.UnknownPayloadKeys", "unknown payload keys", UnknownPayloadKeys=unknown)]
    target = payload.get("TargetOSVersion")
    when = payload.get("TargetLocalDateTime")
    if not isinstance(target, str) or not _version(target) or not isinstance(when, str):
        return [_reason("Error.ConfigurationCannotBeDeserialized", "TargetOSVersion and TargetLocalDateTime "
                                                                   "are required")]
    try:
        dt.datetime.strptime(when, "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return [_reason("Error.ConfigurationCannotBeDeserialized", f"TargetLocalDateTime {when!r} is not "
                                                                   "yyyy-mm-ddThh:mm:ss")]
    if _version(target) <= _version(device.os_version):
        return [_reason("Error.ConfigurationCannotBeApplied",
                        f"target {target} is not newer than the installed {device.os_version}",
                        Error="The target OS version is at or below the installed version")]
    return []


_CHECKS = {
    "com.apple.configuration.softwareupdate.settings": _check_settings,
    "com.apple.configuration.softwareupdate.enforcement.specific": _check_enforcement,
}


def _apply(device) -> None:
    """Act on the active declarations: deferral and the earliest enforced deadline."""
    state = device.ddm
    active = [d for i, d in state.declarations.items() if state.evaluation[i]["active"]]
    state.deferral_days = None
    for declaration in active:
        if declaration["Type"] == "com.apple.configuration.softwareupdate.settings":
            deferrals = _effective(device, declaration["Payload"]).get("Deferrals", {})
            state.deferral_days = deferrals.get("CombinedPeriodInDays")
    enforced = []
    for declaration in active:
        if declaration["Type"] == "com.apple.configuration.softwareupdate.enforcement.specific":
            payload = declaration["Payload"]
            enforced.append(Scheduled(declaration["Identifier"], payload["TargetOSVersion"],
                                      payload.get("TargetBuildVersion"),
                                      dt.datetime.strptime(payload["TargetLocalDateTime"], "%Y-%m-%dT%H:%M:%S")))
    enforced.sort(key=lambda s: s.deadline_local)
    state.scheduled = enforced[0] if enforced else None
    if state.scheduled:
        state.pending = (state.scheduled.target_version, state.scheduled.target_build or "")
    elif state.install_state == "none":
        state.pending = ("", "")


# ---- time -----------------------------------------------------------------------------------------
def local_now(device, now: dt.datetime | None = None) -> dt.datetime:
    """Device-local wall time (naive), from the naive-UTC device clock."""
    now = now or device.clock()
    zone = device.ddm.time_zone
    if zone:
        aware = now.replace(tzinfo=dt.timezone.utc).astimezone(zoneinfo.ZoneInfo(zone))
        return aware.replace(tzinfo=None)
    return now + device.ddm.utc_offset


def deadline_passed(device, now: dt.datetime | None = None) -> bool:
    state = device.ddm
    return state.scheduled is not None and local_now(device, now) >= state.scheduled.deadline_local


def advance(device, now: dt.datetime | None = None) -> bool:
    """At or after the scheduled deadline (device-local), install the target and report. Returns True
    when an install was attempted."""
    if not deadline_passed(device, now):
        return False
    start_install(device, "declaration", "installing")
    if device.ddm.fail_install_with:
        fail_install(device, device.ddm.fail_install_with)
        device.ddm.fail_install_with = None
        return True
    finish_install(device)
    return True


# ---- install steps --------------------------------------------------------------------------------
_STEP_ITEMS = {"softwareupdate.install-state", "softwareupdate.install-reason"}


def start_install(device, reason: str, install_state: str = "downloading") -> None:
    """Begin installing the scheduled target. ``reason`` is one of install-reason.yaml's values
    (notification, install-tonight, system-settings, declaration...); reports install-state and reason."""
    state = device.ddm
    if state.scheduled is None:
        raise SimulatorError("no scheduled update to install")
    state.install_state = install_state
    state.install_reasons = [reason]
    # declaration-id is present only when the reason is "declaration" (install-reason.yaml).
    state.install_declaration = state.scheduled.identifier if reason == "declaration" else None
    report_status(device, full=False, only=_STEP_ITEMS)


def set_install_state(device, install_state: str) -> None:
    """downloading -> prepared -> installing (install-state.yaml), reported as it changes."""
    device.ddm.install_state = install_state
    report_status(device, full=False, only={"softwareupdate.install-state"})


def fail_install(device, reason: str) -> None:
    """The attempt failed: count it, keep the reason (failure-reason.yaml), report."""
    state = device.ddm
    state.failure_count += 1
    state.failure_reason = reason
    state.install_state = "failed"
    report_status(device)


def finish_install(device) -> None:
    """The device restarted on the target: new OS and build, nothing pending, full status report."""
    state = device.ddm
    target = state.scheduled
    device.os_version = target.target_version
    device.build_version = target.target_build or KNOWN_BUILDS.get(target.target_version) or "SIM" + \
        target.target_version.replace(".", "")
    state.install_state, state.pending, state.install_reasons = "none", ("", ""), []
    state.install_declaration, state.failure_count, state.failure_reason = None, 0, None
    # The declaration is satisfied: iOS keeps it valid and stops enforcing it.
    state.scheduled = None
    report_status(device)


# ---- status ---------------------------------------------------------------------------------------
def subscribed_items(device) -> set[str]:
    state = device.ddm
    names = {"management.declarations"}
    for identifier, declaration in state.declarations.items():
        if (declaration["Type"] == "com.apple.configuration.management.status-subscriptions"
                and state.evaluation.get(identifier, {}).get("active")):
            names |= {entry["Name"] for entry in declaration["Payload"].get("StatusItems", [])}
    installed = _version(device.os_version)
    return {n for n in names if n in STATUS_MIN_IOS and installed >= STATUS_MIN_IOS[n]}


def status_values(device) -> dict:
    """Every status item the device knows, by dotted name."""
    state = device.ddm
    failure = {"count": state.failure_count}
    if state.failure_count:
        failure.update(reason=state.failure_reason or "unknown",
                       timestamp=device.clock().replace(microsecond=0).isoformat() + "Z")
    install_reason = {"reason": list(state.install_reasons)}
    if state.install_declaration:
        install_reason["declaration-id"] = state.install_declaration
    declarations = {kind: [] for kind in STATUS_KINDS.values()}
    for identifier, declaration in sorted(state.declarations.items()):
        evaluation = state.evaluation[identifier]
        entry = {"identifier": identifier, "server-token": declaration["ServerToken"],
                 "active": evaluation["active"], "valid": evaluation["valid"]}
        if evaluation["reasons"]:
            entry["reasons"] = evaluation["reasons"]
        declarations[STATUS_KINDS[declaration["_kind"]]].append(entry)
    return {
        "device.model.identifier": device.product_name,
        "device.operating-system.version": device.os_version,
        "device.operating-system.build-version": device.build_version,
        "device.operating-system.supplemental.build-version": device.build_version,
        "device.operating-system.supplemental.extra-version": "",
        "management.declarations": declarations,
        "softwareupdate.install-state": state.install_state,
        "softwareupdate.pending-version": {"os-version": state.pending[0], "build-version": state.pending[1]},
        "softwareupdate.failure-reason": failure,
        "softwareupdate.install-reason": install_reason,
        "softwareupdate.beta-enrollment": state.beta_enrollment,
        "softwareupdate.device-id": device.product_name,
    }


def build_report(device, full: bool = True, only: set[str] | None = None) -> dict:
    values = status_values(device)
    tree: dict = {}
    for name in sorted(subscribed_items(device)):
        if only is not None and name not in only:
            continue
        node = tree
        parts = name.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = values[name]
    report = {"StatusItems": tree, "Errors": []}
    if full and _version(device.os_version) >= (17, 0):   # FullReport: iOS 17+ (statusreport.yaml)
        report["FullReport"] = True
    return report


def report_status(device, full: bool = True, only: set[str] | None = None) -> dict:
    report = build_report(device, full, only)
    response = request(device, "status", json.dumps(report).encode())
    if response.status_code != 200:
        raise SimulatorError(f"status report refused: HTTP {response.status_code} {response.text[:200]}")
    device.ddm.reports.append(report)
    return report

