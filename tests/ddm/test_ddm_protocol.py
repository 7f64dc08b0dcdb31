"""The DeclarativeManagement endpoints, per-device sets and tokens, the sync command, the iOS 17
restrictions profile, and the simulator's DDM client against the real HTTPS server."""
from __future__ import annotations

import datetime as dt
import json
import plistlib

import pytest

from appleschema import Context, validate_command, validate_declaration, validate_profile, validate_protocol
from ddm_kit import RING, Clock, load_snapshot_as_of_today
from mdm.ddm import declarations as decl
from mdm.ddm.policies import bind_policy, create_policy, delete_policy, update_policy
from mdm.ddm.protocol import handle_declarative_management
from mdm.ddm.state_models import DeclarationSet
from mdm.ddm.sync import refresh_devices
from mdm.extensions import db
from mdm.models import Command, Device, PushRequest

# a test's ``app`` holds Apple's feed snapshot as if fetched today (unshifted, its releases expire)
pytestmark = pytest.mark.usefixtures("snapshot_as_of_today")


def make_device(udid="DDM-1", os_version="18.0", supervised=True, product="iPhone15,2", enrolled=True):
    device = Device(udid=udid, product_name=product, os_version=os_version, build_version="X",
                    is_supervised=supervised, enrollment_status="enrolled" if enrolled else "authenticated",
                    push_token="ab" * 32, push_magic="MAGIC", topic="com.apple.mgmt.External.test")
    db.session.add(device)
    db.session.commit()
    return device


def call(device, endpoint, data=None):
    status, body, content_type = handle_declarative_management(device, endpoint, data)
    return status, (json.loads(body) if status == 200 and body else body)


def fetch_all(device) -> tuple[dict, dict, dict]:
    """tokens, manifest, {identifier: declaration} as a device would fetch them."""
    status, tokens = call(device, "tokens")
    assert status == 200 and validate_protocol("tokensresponse", tokens) == []
    status, items = call(device, "declaration-items")
    assert status == 200 and validate_protocol("declarationitemsresponse", items) == []
    assert items["DeclarationsToken"] == tokens["SyncTokens"]["DeclarationsToken"]
    kinds = {"Activations": "activation", "Configurations": "configuration", "Assets": "asset",
             "Management": "management"}
    fetched = {}
    for section, kind in kinds.items():
        for entry in items["Declarations"][section]:
            status, declaration = call(device, f"declaration/{kind}/{entry['Identifier']}")
            assert status == 200
            assert declaration["ServerToken"] == entry["ServerToken"]
            fetched[entry["Identifier"]] = declaration
    return tokens, items, fetched


def sync_commands(device):
    return Command.query.filter_by(device_id=device.id, request_type="DeclarativeManagement").order_by(Command.id).all()


def command_tokens(command):
    return json.loads(plistlib.loads(command.payload)["Command"]["Data"])["SyncTokens"]


def test_a_device_without_policy_gets_a_valid_minimal_set(app):
    with app.app_context():
        device = make_device()
        tokens, items, fetched = fetch_all(device)
        assert set(fetched) == {decl.ACTIVATION_ID, decl.STATUS_SUBSCRIPTIONS_ID}
        for declaration in fetched.values():
            assert validate_declaration(declaration, "iOS", "18.0") == []
        assert fetched[decl.ACTIVATION_ID]["Payload"]["StandardConfigurations"] == [decl.STATUS_SUBSCRIPTIONS_ID]
        assert call(device, "tokens")[1]["SyncTokens"]["DeclarationsToken"] == \
            tokens["SyncTokens"]["DeclarationsToken"]                     # stable while nothing changes
        # The full Type is accepted as well as the manifest type devices send.
        assert call(device, f"declaration/{decl.TYPE_ACTIVATION}/{decl.ACTIVATION_ID}")[0] == 200


@pytest.mark.parametrize("endpoint, code", [
    ("declaration/configuration/not.ours", 404),
    (f"declaration/asset/{decl.ACTIVATION_ID}", 404),       # right identifier, wrong type
    ("declaration/configuration", 400),
    ("declaration//x", 400),
    ("settings", 400),
    ("", 400),
])
def test_bad_declaration_requests(app, endpoint, code):
    with app.app_context():
        device = make_device()
        status, body, _ = handle_declarative_management(device, endpoint, None)
        assert status == code and body


def test_policy_declarations_validate_and_one_sync_command_carries_the_tokens(app):
    with app.app_context():
        device = make_device()
        policy = create_policy(RING)
        bind_policy(policy.id, devices=[device.udid])     # recompute -> refresh_devices
        tokens, _, fetched = fetch_all(device)
        enforcement = fetched[decl.enforcement_identifier(policy.id)]
        settings = fetched[decl.settings_identifier(policy.id)]
        for declaration in fetched.values():
            assert validate_declaration(declaration, "iOS", "18.0", supervised=True) == []
        assert settings["Payload"]["Deferrals"] == {"CombinedPeriodInDays": 3}
        assert enforcement["Payload"]["TargetLocalDateTime"].endswith("T09:00:00")
        assert enforcement["Payload"]["DetailsURL"] == "https://it.example.com/ios"
        assert sorted(fetched[decl.ACTIVATION_ID]["Payload"]["StandardConfigurations"]) == sorted(
            i for i, d in fetched.items() if d["Type"].startswith("com.apple.configuration."))

        commands = sync_commands(device)
        assert len(commands) == 1 and commands[0].status == "queued"
        assert command_tokens(commands[0])["DeclarationsToken"] == tokens["SyncTokens"]["DeclarationsToken"]
        assert validate_command(plistlib.loads(commands[0].payload)) == []
        assert PushRequest.query.filter_by(device_id=device.id).count() == 1

        # A second change while the command still waits rewrites it instead of queueing another.
        update_policy(policy.id, {"grace_days": 14})
        commands = sync_commands(device)
        new_token = call(device, "tokens")[1]["SyncTokens"]["DeclarationsToken"]
        assert new_token != tokens["SyncTokens"]["DeclarationsToken"]
        assert len(commands) == 1 and command_tokens(commands[0])["DeclarationsToken"] == new_token

        # Once the device took that command, the next change queues a new one; no change queues nothing.
        commands[0].status = "Acknowledged"
        db.session.commit()
        assert refresh_devices([device.id]) == set()
        assert len(sync_commands(device)) == 1
        update_policy(policy.id, {"local_time": "18:30"})
        assert [c.status for c in sync_commands(device)] == ["Acknowledged", "queued"]


def test_deleting_a_policy_removes_its_declarations(app):
    with app.app_context():
        device = make_device()
        policy = create_policy(RING)
        bind_policy(policy.id, devices=[device.udid])
        delete_policy(policy.id)
        _, _, fetched = fetch_all(device)
        assert set(fetched) == {decl.ACTIVATION_ID, decl.STATUS_SUBSCRIPTIONS_ID}
        assert call(device, f"declaration/configuration/{decl.enforcement_identifier(policy.id)}")[0] == 404


def test_unknown_model_still_gets_a_valid_set_with_the_reason_recorded(app):
    with app.app_context():
        device = make_device(product="iPhone99,9")
        policy = create_policy(RING)
        bind_policy(policy.id, devices=[device.udid])
        _, _, fetched = fetch_all(device)
        assert decl.enforcement_identifier(policy.id) not in fetched
        assert decl.settings_identifier(policy.id) in fetched          # settings do not need a target
        notes = db.session.get(DeclarationSet, device.id).notes
        assert any(n.startswith("enforcement:") and "model" in n for n in notes), notes


def test_unenrolled_device_gets_no_command(app):
    with app.app_context():
        device = make_device(enrolled=False)
        policy = create_policy(RING)
        bind_policy(policy.id, devices=[device.udid])
        assert Command.query.count() == 0
        assert db.session.get(DeclarationSet, device.id) is not None


def profile_commands(device):
    return Command.query.filter(Command.device_id == device.id,
                                Command.request_type.in_(("InstallProfile", "RemoveProfile"))).order_by(Command.id).all()


def test_ios17_deferral_goes_in_a_restrictions_profile_installed_updated_and_removed(app):
    with app.app_context():
        device = make_device(os_version="17.5")
        policy = create_policy(dict(RING, deferral_days=7))
        bind_policy(policy.id, devices=[device.udid])
        _, _, fetched = fetch_all(device)
        assert decl.settings_identifier(policy.id) not in fetched       # iOS 17: no settings declaration
        assert decl.enforcement_identifier(policy.id) in fetched
        [install] = profile_commands(device)
        command = plistlib.loads(install.payload)
        assert validate_command(command, Context("iOS", "17.5")) == []
        profile = plistlib.loads(command["Command"]["Payload"])
        assert profile["PayloadContent"][0]["enforcedSoftwareUpdateDelay"] == 7
        assert validate_profile(profile, Context("iOS", "17.5", supervised=True)) == []

        update_policy(policy.id, {"deferral_days": 14})
        first, second = profile_commands(device)
        assert first.status == "Superseded" and second.status == "queued"
        assert plistlib.loads(plistlib.loads(second.payload)["Command"]["Payload"])[
            "PayloadContent"][0]["enforcedSoftwareUpdateDelay"] == 14

        # The device reports iOS 18: the settings declaration takes over and the profile is removed.
        status = json.dumps({"StatusItems": {"device": {"operating-system": {"version": "18.0"}}}, "Errors": []})
        assert handle_declarative_management(device, "status", status.encode())[0] == 200
        commands = profile_commands(device)
        assert commands[-1].request_type == "RemoveProfile"
        assert plistlib.loads(commands[-1].payload)["Command"]["Identifier"] == decl.RESTRICTIONS_PROFILE_ID
        assert decl.settings_identifier(policy.id) in fetch_all(db.session.get(Device, device.id))[2]


# ---- the simulator's DDM client through the real server ------------------------------------------------
def test_simulated_device_syncs_reports_and_installs_at_the_deadline(live_server):
    from mdm.ddm.results import results_for_policy
    from mdm.enroll.tokens import create_token, enrollment_url
    from mdm.simulator import DeviceProfile, SimulatedDevice
    from mdm.simulator import ddm as sim

    with live_server.app.app_context():
        load_snapshot_as_of_today()
        url = enrollment_url(create_token(description="ddm", expires_in_days=1, max_uses=5, created_by="test"))
    clock = Clock(dt.datetime.now(dt.timezone.utc).replace(tzinfo=None))
    device = SimulatedDevice(live_server.url, live_server.ca_file, profile=DeviceProfile(os_version="18.0"),
                             clock=clock)
    sim.install(device)
    device.enroll(url)
    device.connect()
    with live_server.app.app_context():
        policy = create_policy(RING)
        bind_policy(policy.id, devices=[device.udid])
        policy_id = policy.id
    device.connect()                         # DeclarativeManagement -> tokens, items, declarations, status
    state = device.ddm
    assert state.scheduled is not None and all(e["valid"] == "valid" and e["active"]
                                               for e in state.evaluation.values())
    with live_server.app.app_context():
        [result] = results_for_policy(policy_id)
        assert result.state == "Scheduled", result.detail
        target = result.target_version

    assert sim.advance(device) is False                      # before the deadline nothing happens
    clock.now = clock.now + dt.timedelta(days=60)
    assert sim.advance(device) is True
    assert device.os_version == target
    with live_server.app.app_context():
        [result] = results_for_policy(policy_id)
        assert result.state == "Compliant", result.detail
        states = [h["state"] for h in result.history]
        assert "Scheduled" in states and states[-1] == "Compliant"
    device.close()


# ---- the simulator's device-side rules, on a minimal device object ------------------------------------
class MinimalDevice:
    def __init__(self, os_version="18.0", supervised=True):
        self.udid, self.product_name, self.os_version, self.build_version = "MIN", "iPhone15,2", os_version, "X"
        self.supervised, self.clock, self.command_handlers = supervised, Clock(dt.datetime(2026, 1, 1)), {}


def held(device, *declarations):
    from mdm.simulator import ddm as sim
    sim.install(device)
    configs = [d["Identifier"] for d in declarations]
    for d in (*declarations, {"Type": decl.TYPE_ACTIVATION, "Identifier": "act",
                              "Payload": {"StandardConfigurations": configs}}):
        d = decl.with_server_token(d)
        d["_kind"] = "activation" if d["Type"] == decl.TYPE_ACTIVATION else "configuration"
        device.ddm.declarations[d["Identifier"]] = d
    sim.evaluate(device)
    return device.ddm.evaluation


def settings(**payload):
    return {"Type": decl.TYPE_SETTINGS, "Identifier": "s", "Payload": payload}


@pytest.mark.parametrize("download, install", [("Allowed", "AlwaysOn"), ("AlwaysOff", "Allowed"),
                                               ("AlwaysOff", "AlwaysOn")])
def test_simulator_rejects_invalid_automatic_action_combinations(download, install):
    evaluation = held(MinimalDevice(), settings(AutomaticActions={"Download": download, "InstallOSUpdates": install}))
    assert evaluation["s"]["valid"] == "invalid"
    assert evaluation["s"]["reasons"][0]["description"] == "Invalid global settings declaration"


def test_simulator_ignores_settings_its_os_or_enrollment_does_not_support():
    device = MinimalDevice(supervised=False)
    evaluation = held(device, settings(Deferrals={"CombinedPeriodInDays": 30},
                                       AutomaticActions={"Download": "AlwaysOff", "InstallOSUpdates": "AlwaysOn"}))
    assert evaluation["s"] == {"valid": "valid", "active": True, "reasons": []}
    assert device.ddm.deferral_days is None                            # supervised-only: ignored
    ios17 = held(MinimalDevice("17.5"), settings(Notifications=True))
    assert ios17["s"]["reasons"][0]["code"] == "Error.ConfigurationNotSupported"
    unknown = held(MinimalDevice(), settings(Deferrals={"CombinedPeriodInDays": 3, "Bogus": 1}))
    assert unknown["s"]["reasons"][0]["code"] == "Error.UnknownPayloadKeys"


@pytest.mark.parametrize("target, valid", [("18.0", "invalid"), ("17.7", "invalid"), ("18.0.1", "valid")])
def test_simulator_errors_on_a_target_at_or_below_its_version(target, valid):
    device = MinimalDevice("18.0")
    evaluation = held(device, {"Type": decl.TYPE_ENFORCEMENT, "Identifier": "e", "Payload": {
        "TargetOSVersion": target, "TargetLocalDateTime": "2026-01-05T09:00:00"}})
    assert evaluation["e"]["valid"] == valid
    assert (device.ddm.scheduled is not None) == (valid == "valid")


def test_simulator_status_report_matches_apples_schema():
    from mdm.simulator import ddm as sim
    device = MinimalDevice("18.0")
    held(device, decl.status_subscriptions(Device(product_name="iPhone15,2", os_version="18.0")).declaration,
         {"Type": decl.TYPE_ENFORCEMENT, "Identifier": "e", "Payload": {
             "TargetOSVersion": "18.1", "TargetLocalDateTime": "2026-01-05T09:00:00"}})
    report = sim.build_report(device)
    assert validate_protocol("statusreport", report) == []
    assert report["StatusItems"]["softwareupdate"]["pending-version"] == {"os-version": "18.1", "build-version": ""}
    assert report["StatusItems"]["device"]["operating-system"]["version"] == "18.0"
