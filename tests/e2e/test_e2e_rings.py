"""The whole patch loop through the real HTTPS server: default rings loaded, bound to device groups;
simulated iPhones and iPads enroll, sync their declarations, report status, install the target at
the deadline in simulated time, and end Compliant."""
from __future__ import annotations

import datetime as dt

from ddm_kit import Clock, load_snapshot_as_of_today
from mdm.ddm.groups import add_devices, create_group
from mdm.ddm.policies import bind_policy
from mdm.ddm.results import results_for_policy
from mdm.ddm.rings import load_default_rings
from mdm.enroll.tokens import create_token, enrollment_url
from mdm.simulator import DeviceProfile, SimulatedDevice
from mdm.simulator import ddm as sim

# Two devices per ring: iOS 17 (deferral through a restrictions profile) and iOS 18 (settings declaration).
PROFILES = [DeviceProfile("iPhone15,2", "17.5"), DeviceProfile("iPad13,18", "18.0")]


def test_default_rings_bound_to_groups_bring_every_device_to_compliant(live_server):
    app = live_server.app
    with app.app_context():
        load_snapshot_as_of_today()
        rings = load_default_rings(actor="test")
        assert [r.ring for r in rings] == ["Vanguard", "Early Adoption", "General Adoption", "Late Adoption"]
        assert load_default_rings(actor="test") and all(
            not r.created_group and not r.created_policy for r in load_default_rings(actor="test"))
        url = enrollment_url(create_token(description="rings", expires_in_days=1, max_uses=20, created_by="test"))

    clock = Clock(dt.datetime.now(dt.timezone.utc).replace(tzinfo=None))
    devices_by_ring = {}
    for ring in rings:
        members = []
        for profile in PROFILES:
            device = SimulatedDevice(live_server.url, live_server.ca_file, profile=profile, clock=clock)
            sim.install(device)
            device.enroll(url)
            device.connect()                 # inventory commands
            members.append(device)
        devices_by_ring[ring.ring] = members
        with app.app_context():
            group = create_group(f"{ring.ring} devices", actor="test")
            add_devices(group.id, [d.udid for d in members], actor="test")
            bind_policy(ring.policy_id, groups=[group.id], actor="test")

    everyone = [d for members in devices_by_ring.values() for d in members]
    for device in everyone:
        device.connect()                     # DeclarativeManagement: tokens, items, declarations, status

    with app.app_context():
        for ring in rings:
            results = results_for_policy(ring.policy_id)
            assert len(results) == 2
            for result in results:
                assert result.state == "Scheduled", (ring.ring, result.detail)
                assert result.target_version and result.deadline_local
    # iOS 17 devices hold the deferral as a restrictions profile installed by MDM command.
    from mdm.ddm.declarations import RESTRICTIONS_PROFILE_ID
    for device in everyone:
        assert (RESTRICTIONS_PROFILE_ID in device.installed_profiles) == device.os_version.startswith("17")

    assert not any(sim.advance(d) for d in everyone)       # nothing installs before its deadline
    clock.now += dt.timedelta(days=90)
    for device in everyone:
        assert sim.advance(device) is True
        device.connect()                                   # anything the server queued after the OS change
        assert RESTRICTIONS_PROFILE_ID not in device.installed_profiles   # iOS 18+: declaration instead

    with app.app_context():
        for ring in rings:
            for result in results_for_policy(ring.policy_id):
                assert result.state == "Compliant", (ring.ring, result.detail)
    for device in everyone:
        device.close()
