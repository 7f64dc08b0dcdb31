"""The simulated device's DDM sync when an administrator changes its declaration set in the middle of it
(between the manifest and a declaration): it starts over from the tokens, as a device does on the new
DeclarationsToken the server sends, and ends holding the server's current set. A mismatch that persists
is a server bug, and the simulator says so. Real HTTPS server, real policy edits."""
from __future__ import annotations

import itertools

import pytest

from ddm_kit import load_snapshot_as_of_today
from mdm.ddm.groups import add_devices, create_group
from mdm.ddm.policies import bind_policy, update_policy
from mdm.ddm.rings import load_default_rings
from mdm.enroll.tokens import create_token, enrollment_url
from mdm.extensions import db
from mdm.simulator import DeviceProfile, SimulatedDevice
from mdm.simulator import ddm as sim
from mdm.simulator.device import SimulatorError


@pytest.fixture
def synced(live_server):
    """An iOS 18 device in the General Adoption ring, synced once."""
    app = live_server.app
    with app.app_context():
        load_snapshot_as_of_today()
        ring = load_default_rings(actor="test")[2]
        url = enrollment_url(create_token(description="sync", expires_in_days=1, max_uses=1, created_by="test"))
    device = SimulatedDevice(live_server.url, live_server.ca_file, profile=DeviceProfile("iPhone15,2", "18.0"))
    sim.install(device)
    device.enroll(url)
    device.connect()
    with app.app_context():
        group = create_group("sync devices", actor="test")
        add_devices(group.id, [device.udid], actor="test")
        bind_policy(ring.policy_id, groups=[group.id], actor="test")
    device.connect()
    assert device.ddm.declarations_token
    yield app, ring.policy_id, device
    device.close()


def edit(app, policy_id, deferral_days: int) -> None:
    with app.app_context():
        update_policy(policy_id, {"deferral_days": deferral_days}, actor="test")
        db.session.commit()


def edit_during_items(app, policy_id, device, times: int | None):
    """Change the ring's deferral each time the device has just fetched its manifest (``times`` of them,
    or every time): the next declaration it fetches no longer matches that manifest."""
    deferrals = itertools.count(40)
    edits = []

    def hook(response):
        if b"<string>declaration-items</string>" in response.request.content and (
                times is None or len(edits) < times):
            edit(app, policy_id, next(deferrals))
            edits.append(response.request.url)
    device.http.event_hooks["response"].append(hook)
    return edits


def test_a_set_changed_between_manifest_and_declaration_is_synced_again(synced):
    app, policy_id, device = synced
    before = device.ddm.declarations_token
    settings_id = next(i for i, d in device.ddm.declarations.items()
                       if d["Type"] == "com.apple.configuration.softwareupdate.settings")
    held_before = device.ddm.declarations[settings_id]["ServerToken"]
    edit(app, policy_id, 39)              # the device has a set to fetch ...
    edits = edit_during_items(app, policy_id, device, times=1)   # ... which changes while it does
    device.ddm.fetched.clear()
    assert sim.sync(device) is True
    assert len(edits) == 1
    assert device.ddm.fetched.count("declaration-items") == 2      # started over once
    assert device.ddm.declarations_token != before
    assert device.ddm.declarations[settings_id]["ServerToken"] != held_before
    assert device.ddm.declarations[settings_id]["Payload"]["Deferrals"]["CombinedPeriodInDays"] == 40
    device.ddm.fetched.clear()
    assert sim.sync(device) is False                              # holds the server's current set
    assert device.ddm.fetched == ["tokens"]


def test_a_mismatch_that_persists_is_reported_as_a_server_bug(synced):
    app, policy_id, device = synced
    edit(app, policy_id, 39)
    edit_during_items(app, policy_id, device, times=None)
    device.ddm.fetched.clear()
    with pytest.raises(SimulatorError, match=rf"does not match its manifest entry in {sim.SYNC_ATTEMPTS} syncs"):
        sim.sync(device)
    assert device.ddm.fetched.count("declaration-items") == sim.SYNC_ATTEMPTS
