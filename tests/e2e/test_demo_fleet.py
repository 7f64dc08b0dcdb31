"""The living demo fleet (``flask mdm simulate --keep-running``) against the real TLS server: devices keep
checking in on compressed time, install before or at the deadline, report schema-valid status, one
fails with a reason the server shows; stopping the fleet ends its threads. Plus the mix's realism and
the offline demo feed."""
from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from appleschema import Context, load, validate_keys, validate_protocol
from ddm_kit import load_snapshot_as_of_today

from mdm.ddm.catalog import SNAPSHOT_PATH, load_feed_file, parse_feed
from mdm.ddm.groups import add_devices, create_group
from mdm.ddm.policies import bind_policy
from mdm.ddm.results import results_for_policy
from mdm.ddm.rings import load_default_rings
from mdm.enroll.tokens import create_token, enrollment_url
from mdm.simulator.device import DeviceProfile
from mdm.simulator.live import enroll_live_fleet
from mdm.simulator.mix import FAILURE_REASON, MODELS, TIME_ZONES, Behaviour, fleet_mix, versions_for

MOVED_ON = {"Scheduled", "Downloading", "Prepared", "Installing", "Compliant", "Failed"}
# 20,000x: a real second is 5.6 simulated hours, a poll every 1-3 simulated hours; the Vanguard deadline,
# 2.5 to 4 simulated days away depending on the time zone, comes after 10-20 real seconds. Slower would
# be slow; much faster and a loaded machine could let a deadline pass before a user's chosen moment.
SPEED = 20_000
POLL_SECONDS = (0.2, 0.5)
MAX_POLLS = 200


def status_item_problems(report: dict, os_version: str, supervised: bool) -> list[str]:
    """Every status item in a report against its own declarative/status/<name>.yaml."""
    problems = validate_protocol("statusreport", report)
    ctx = Context(os_version=os_version, supervised=supervised, declaration=True)

    def walk(node, prefix):
        for key, value in node.items():
            name = f"{prefix}.{key}" if prefix else key
            try:
                schema = load(f"declarative/status/{name}.yaml")
            except FileNotFoundError:
                if isinstance(value, dict):
                    walk(value, name)
                else:
                    problems.append(f"{name}: no such status item")
                continue
            problems.extend(validate_keys({name: value}, schema["payloadkeys"], ctx))

    walk(report["StatusItems"], "")
    return problems


def test_kept_running_fleet_moves_past_pending_installs_and_reports_a_failure(live_server):
    app = live_server.app
    with app.app_context():
        load_snapshot_as_of_today()
        vanguard = next(r for r in load_default_rings(actor="test") if r.ring == "Vanguard")
        group_id = create_group("Demo fleet", actor="test").id
        bind_policy(vanguard.policy_id, groups=[group_id], actor="test")
        url = enrollment_url(create_token(description="demo", expires_in_days=1, max_uses=10, created_by="test"))
    plan = [
        (DeviceProfile("iPhone15,2", "18.6", time_zone="America/New_York"), Behaviour("prompt")),
        (DeviceProfile("iPad13,18", "17.5", time_zone="Asia/Tokyo"), Behaviour("tonight")),
        (DeviceProfile("iPhone16,1", "26.0", supervised=False, time_zone="Europe/Berlin"), Behaviour("deadline")),
        (DeviceProfile("iPhone12,1", "18.5", time_zone="Australia/Sydney"),
         Behaviour("prompt", fails_with=FAILURE_REASON, retry_after_hours=None)),
        (DeviceProfile("iPad16,3", "17.5", time_zone="America/Sao_Paulo"),
         Behaviour("prompt", fails_with=FAILURE_REASON, retry_after_hours=2)),
    ]
    enrolled = enroll_live_fleet(live_server.url, live_server.ca_file, url, plan, speed=SPEED,
                                 poll_seconds=POLL_SECONDS, workers=2)
    assert enrolled.errors == []
    fleet = enrolled.fleet
    udids = [live.device.udid for live in fleet.devices]
    failing, recovering = fleet.devices[3].device, fleet.devices[4].device
    with app.app_context():
        add_devices(group_id, udids, actor="test")
        assert {r.state for r in results_for_policy(vanguard.policy_id)} == {"Pending"}

    fleet.start()
    try:
        for _ in range(MAX_POLLS):
            fleet.wait_for_polls(fleet.min_polls() + 1, timeout_seconds=60)
            with app.app_context():
                states = {r.udid: r.state for r in results_for_policy(vanguard.policy_id)}
            if states.get(failing.udid) == "Failed" and all(
                    s == "Compliant" for u, s in states.items() if u != failing.udid):
                break
    finally:
        assert fleet.stop() is True
    assert not any(t.is_alive() for t in fleet.threads)
    assert not [t for t in threading.enumerate() if t.name.startswith("sim-fleet-")]
    assert fleet.errors == []

    with app.app_context():
        results = {r.udid: r for r in results_for_policy(vanguard.policy_id)}
    assert set(results) == set(udids)
    for udid, result in results.items():
        history = [h["state"] for h in result.history]
        assert history[0] == "Pending" and MOVED_ON & set(history), history
        if udid == failing.udid:
            assert result.state == "Failed" and FAILURE_REASON in result.detail, result.detail
        elif udid == recovering.udid:    # the failure count stays until the install succeeds
            assert result.state == "Compliant" and history.index("Failed") < history.index("Compliant"), history
        else:
            assert result.state == "Compliant", (result.state, result.detail)
            assert "Scheduled" in history and "Installing" in history, history
    # How each one got there (install-reason.yaml): the user's tap, Install Tonight, the deadline.
    reasons = [[r["StatusItems"]["softwareupdate"]["install-reason"]["reason"] for r in live.device.ddm.reports
                if "install-reason" in r["StatusItems"].get("softwareupdate", {})] for live in fleet.devices]
    assert ["notification"] in reasons[0] and ["install-tonight"] in reasons[1] and ["declaration"] in reasons[2]
    assert ["system-settings"] in reasons[4]           # the user freed space and installed from Settings

    for live in fleet.devices:
        device = live.device
        assert device.ddm.reports
        for report in device.ddm.reports:
            version = report["StatusItems"].get("device", {}).get("operating-system", {}).get("version", "17.0")
            assert status_item_problems(report, version, device.supervised) == []
    failure = failing.ddm.reports[-1]["StatusItems"]["softwareupdate"]["failure-reason"]
    assert failure["count"] == 1 and failure["reason"] == FAILURE_REASON
    assert failing.os_version == "18.5" and failing.ddm.install_state == "failed"


def test_the_mix_is_models_in_apples_feed_on_versions_they_run():
    releases, _ = parse_feed(load_feed_file(SNAPSHOT_PATH))
    majors_in_feed: dict[str, set[int]] = {}
    for release in releases:
        for model in release.supported_devices:
            majors_in_feed.setdefault(model, set()).add(int(release.product_version.split(".")[0]))
    for product, _, launch, last_major in MODELS:
        assert product in majors_in_feed, product
        assert max(majors_in_feed[product]) == last_major, product      # the newest major Apple offers it
        assert versions_for(launch, last_major), product

    mix = fleet_mix(20)
    assert mix == fleet_mix(20) and mix != fleet_mix(20, seed=2)
    for profile, _ in mix:
        launch, last_major = next((m[2], m[3]) for m in MODELS if m[0] == profile.product_name)
        assert profile.os_version in versions_for(launch, last_major)
    products = {p.product_name for p, _ in mix}
    assert any(p.startswith("iPhone") for p in products) and any(p.startswith("iPad") for p in products)
    assert {p.os_version.split(".")[0] for p, _ in mix} == {"17", "18", "26"}
    assert {p.supervised for p, _ in mix} == {True, False}
    assert {p.time_zone for p, _ in mix} == set(TIME_ZONES)
    assert Counter(b.habit for _, b in mix) == {"prompt": 8, "tonight": 6, "deadline": 6}
    failing = [b for _, b in mix if b.fails_with]
    assert len(failing) == 2 and all(b.fails_with == FAILURE_REASON and b.habit == "prompt" and
                                     6 <= b.retry_after_hours <= 18 for b in failing)


def test_simulated_device_answers_its_time_zone_when_asked():
    from mdm.simulator.device import SimulatedDevice, _device_information
    from appleschema import validate_command_response
    device = SimulatedDevice("https://localhost", str(SNAPSHOT_PATH.parent / "apple-root-ca.pem"),
                             profile=DeviceProfile(time_zone="Asia/Kolkata"))
    response = _device_information(device, {"Command": {"Queries": ["TimeZone", "OSVersion"]}})
    assert response["QueryResponses"] == {"TimeZone": "Asia/Kolkata", "OSVersion": "17.5"}
    assert validate_command_response("DeviceInformation", response) == []
    device.close()


def test_demo_feed_moves_the_packaged_snapshot_to_today(app, tmp_path):
    out = tmp_path / "demo-feed.json"
    result = app.test_cli_runner().invoke(args=["mdm", "demo-feed", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "For demos only" in result.output
    releases, _ = parse_feed(json.loads(out.read_text()))
    newest = max(r.posting_date for r in releases)
    assert newest == dt.date.today() - dt.timedelta(days=2)
    original, _ = parse_feed(load_feed_file(SNAPSHOT_PATH))
    assert sorted((r.product_version, r.build) for r in releases) == \
        sorted((r.product_version, r.build) for r in original)
    synced = app.test_cli_runner().invoke(args=["mdm", "catalog", "sync", "--file", str(out), "--json"])
    assert synced.exit_code == 0, synced.output
    status = json.loads(synced.output)["status"]
    assert status["unexpired_releases"] > 0 and status["source"] == str(out)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_simulate_keep_running_command_stops_cleanly_on_a_signal(live_server, stop_signal):
    app = live_server.app
    env = {**os.environ, "MDM_INSTANCE_PATH": app.instance_path, "MDM_DATABASE_URL": app.config["DATABASE_URL"],
           "MDM_CERTS_DIR": app.config["CERTS_DIR"], "MDM_SERVER_URL": live_server.url,
           "MDM_SCHEDULER_ENABLED": "false"}
    command = [sys.executable, "-m", "flask", "--app", "wsgi", "mdm", "simulate", "--devices", "2", "--keep-running",
               "--speed", "600", "--poll-seconds", "0.2"]
    process = subprocess.Popen(command, cwd=Path(__file__).resolve().parents[2], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "Ctrl-C stops the fleet" in line:
                break
        assert "enrolled 2 of 2 devices" in "".join(lines), "".join(lines)
        process.send_signal(stop_signal)
        rest = process.communicate(timeout=120)[0]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, rest
    assert rest.rstrip().endswith("fleet stopped"), rest
