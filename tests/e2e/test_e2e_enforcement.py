"""A Software Update Enforcement policy through the real HTTPS server: simulated iPhones and iPads
enroll, are bound through a mixed device group, receive the enforcement declaration (valid against
Apple's schema), report it valid and active, install the version at the set device-local time in
simulated time, and end Compliant; a model the catalog does not list the version for is Not applicable."""
from __future__ import annotations

import datetime as dt

from appleschema import validate_declaration
from mdm.ddm import enforcement
from mdm.ddm.groups import add_devices, create_group
from mdm.enroll.tokens import create_token, enrollment_url
from mdm.extensions import db
from mdm.simulator import DeviceProfile, SimulatedDevice
from mdm.simulator import ddm as sim
from ddm_kit import Clock, load_snapshot_as_of_today as load_current_catalog

TYPE = "com.apple.configuration.softwareupdate.enforcement.specific"
PROFILES = [DeviceProfile("iPhone15,2", "17.5"), DeviceProfile("iPad13,18", "18.0"),
            DeviceProfile("iPhone15,2", "18.0", supervised=False),
            DeviceProfile("iPhone10,3", "16.7.10")]      # iPhone X: 26.6.1 is not offered to it


def test_a_specific_version_policy_reaches_devices_and_ends_compliant(live_server):
    app = live_server.app
    at = (dt.date.today() + dt.timedelta(days=3)).isoformat() + "T18:00"
    with app.app_context():
        load_current_catalog()
        policy = enforcement.create_policy({"name": "26.6.1 by Thursday", "target_version": "26.6.1",
                                            "enforce_at": at, "details_url": "https://intranet.example/ios"},
                                           actor="test")
        db.session.commit()
        policy_id = policy.id
        url = enrollment_url(create_token(description="enforce", expires_in_days=1, max_uses=10, created_by="test"))

    clock = Clock(dt.datetime.now(dt.timezone.utc).replace(tzinfo=None))
    devices = []
    for profile in PROFILES:
        device = SimulatedDevice(live_server.url, live_server.ca_file, profile=profile, clock=clock)
        sim.install(device)
        device.enroll(url)
        device.connect()                       # inventory
        devices.append(device)
    phone17, ipad, unsupervised, iphone_x = devices
    with app.app_context():
        group = create_group("Everyone", actor="test")
        add_devices(group.id, [d.udid for d in devices], actor="test")
        enforcement.bind_policy(policy_id, groups=[group.id], actor="test")
        db.session.commit()
    for device in devices:
        device.connect()                       # DeclarativeManagement: tokens, items, declarations, status

    identifier = f"mdm.enforce.{policy_id}"
    for device in (phone17, ipad, unsupervised):
        # As received (the simulator keeps its own "_kind" next to what the server sent).
        declaration = {k: v for k, v in device.ddm.declarations[identifier].items() if not k.startswith("_")}
        assert declaration["Type"] == TYPE
        assert declaration["Payload"]["TargetOSVersion"] == "26.6.1"
        assert declaration["Payload"]["TargetLocalDateTime"] == at + ":00"
        assert validate_declaration(declaration, "iOS", device.os_version, supervised=device.profile.supervised) == []
        assert device.ddm.evaluation[identifier]["valid"] == "valid" and device.ddm.evaluation[identifier]["active"]
    assert identifier not in iphone_x.ddm.declarations

    with app.app_context():
        results = {r.udid: r for r in enforcement.results_for_policy(policy_id)}
        db.session.commit()
    for device in (phone17, ipad, unsupervised):
        assert results[device.udid].state == "Scheduled", results[device.udid].detail
    assert results[iphone_x.udid].state == "Not applicable"
    assert "not in Apple's catalog for iPhone10,3" in results[iphone_x.udid].detail

    assert not any(sim.advance(d) for d in devices)       # nothing installs before the set time
    clock.now += dt.timedelta(days=5)
    for device in (phone17, ipad, unsupervised):
        assert sim.advance(device) is True
        assert device.os_version == "26.6.1"
        device.connect()                                    # the server drops the satisfied declaration
        assert identifier not in device.ddm.declarations
    assert sim.advance(iphone_x) is False

    with app.app_context():
        results = {r.udid: r for r in enforcement.results_for_policy(policy_id)}
        db.session.commit()
    for device in (phone17, ipad, unsupervised):
        assert results[device.udid].state == "Compliant", results[device.udid].detail
    assert results[iphone_x.udid].state == "Not applicable"
    for device in devices:
        device.close()
