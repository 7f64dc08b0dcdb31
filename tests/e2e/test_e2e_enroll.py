"""End to end through the real HTTPS server: simulated iPhones enroll, get SCEP identities,
check in with signed messages, answer DeviceInformation, and show up in ``flask mdm devices``."""
from __future__ import annotations

import json

from mdm.extensions import db
from mdm.models import Command, Device
from mdm.simulator import DeviceProfile, SimulatedDevice
from mdm.simulator.fleet import run_fleet


def _enrollment_url(server):
    from mdm.enroll.tokens import create_token, enrollment_url
    with server.app.app_context():
        token = create_token(description="e2e", expires_in_days=1, max_uses=100, created_by="test")
        return enrollment_url(token)


def test_fifty_devices_enroll_and_report_inventory(live_server):
    url = _enrollment_url(live_server)
    report = run_fleet(live_server.url, live_server.ca_file, url, 50, workers=8)
    assert report.errors == []
    assert len(report.devices) == 50
    # Each device answered the three commands the first TokenUpdate queues. A device whose declaration
    # set happened to be first computed after its TokenUpdate (another request drained the recompute
    # queue first) is also told to sync its DDM status subscriptions once: nothing else may arrive.
    answered = [[c["Command"]["RequestType"] for c in d.received_commands] for d in report.devices]
    assert all(types[:3] == ["DeviceInformation", "SecurityInfo", "ProfileList"] for types in answered)
    assert all(set(types[3:]) <= {"DeclarativeManagement"} and len(types) <= 4 for types in answered)

    with live_server.app.app_context():
        devices = Device.query.all()
        assert len(devices) == 50
        assert all(d.enrollment_status == "enrolled" for d in devices)
        assert all(d.is_supervised is True for d in devices)
        assert {d.product_name for d in devices} == {"iPhone15,2"}
        assert {d.os_version for d in devices} == {"17.5"}
        statuses = {c.status for c in Command.query.all() if c.request_type != "DeclarativeManagement"}
        assert statuses == {"Acknowledged"}

    result = live_server.app.test_cli_runner().invoke(args=["mdm", "devices", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert {d["udid"] for d in listed} == {d.udid for d in report.devices}
    assert all(d["supervised"] is True and d["enrollment"] == "enrolled" for d in listed)


def test_not_now_command_is_offered_again(live_server):
    url = _enrollment_url(live_server)
    device = SimulatedDevice(live_server.url, live_server.ca_file, profile=DeviceProfile(os_version="18.0"),
                             not_now_once={"DeviceInformation"})
    device.enroll(url)
    device.connect()            # DeviceInformation answered NotNow: the exchange ends there
    device.connect()            # offered again, answered, then SecurityInfo and ProfileList
    types = [c["Command"]["RequestType"] for c in device.received_commands]
    assert types == ["DeviceInformation", "DeviceInformation", "SecurityInfo", "ProfileList"]
    with live_server.app.app_context():
        info = Command.query.filter_by(request_type="DeviceInformation").one()
        assert info.status == "Acknowledged" and info.not_now_count == 1
        assert db.session.get(Device, info.device_id).os_version == "18.0"
    device.close()


def test_checked_out_device_is_unenrolled_but_kept(live_server):
    url = _enrollment_url(live_server)
    device = SimulatedDevice(live_server.url, live_server.ca_file)
    device.enroll(url)
    assert device.checkout().status_code == 200
    with live_server.app.app_context():
        stored = Device.query.filter_by(udid=device.udid).one()
        assert stored.enrollment_status == "unenrolled"
        assert stored.push_token is None
        assert stored.commands.count() == 3  # history kept
    device.close()


def test_simulated_iphone_sends_what_apples_schema_allows_for_ios(live_server):
    from appleschema import Context, validate_checkin
    url = _enrollment_url(live_server)
    device = SimulatedDevice(live_server.url, live_server.ca_file)
    device.enroll(url)
    ctx = Context("iOS", device.os_version, supervised=True)
    assert validate_checkin(device.authenticate_message(), ctx) == []
    device.connect()
    with live_server.app.app_context():
        stored = Device.query.filter_by(udid=device.udid).one()
        # The device name comes from DeviceInformation, not from Authenticate, on iOS.
        assert stored.device_name == device.device_name
        assert stored.serial_number == device.serial_number
    device.close()
