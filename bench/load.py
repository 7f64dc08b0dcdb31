"""Load test: 1,000 simulated devices checking in and polling concurrently while an admin enqueues a bulk
command and edits a patch policy.

    .venv/bin/python bench/load.py [--devices 1000] [--workers 32] [--rounds 3] [--workdir DIR]

Against ``python -m mdm.run`` (the production process) on a throw-away instance. The devices enroll over
HTTPS (SCEP, Authenticate, TokenUpdate) once; with ``--workdir`` a second run reuses them (device key
generation and SCEP are the slow part). The four default rings are bound to four groups of devices and
every device learns DDM (mdm.simulator.ddm), so DeclarativeManagement commands make it fetch tokens,
declaration items and declarations and report status, like an iPhone.

Then ``--workers`` threads keep the devices polling (Idle, answer every command, repeat) for ``--rounds``
passes over the fleet. During the first pass the admin
  1. enqueues InstalledApplicationList on every device in one all-or-nothing bulk (mdm.protocol.queue.enqueue_bulk,
     from this process: a second writer on the database, as a second web process would be), and
  2. changes the General Adoption ring's deferral through the REST API (PATCH /api/v1/policies/<id>),
     which recomputes targets and refreshes the declarations of a quarter of the fleet inside the server.
A last pass lets every device drain what is left. Checks, printed as JSON (exit status 1 when one fails):
  - no HTTP 5xx answer to any device or admin request, no "database is locked" in the server log;
  - every device received each command exactly once (by CommandUUID) and the server recorded each as
    Acknowledged; every device received the bulk command;
  - every device ends holding the declarations the server computes for it now (same DeclarationsToken
    and the same ServerToken per identifier).
"""
from __future__ import annotations

import argparse
import collections
import json
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _instance import Instance, bind_default_rings, enrolled_devices  # noqa: E402

BULK_COMMAND = "InstalledApplicationList"


class Statuses:
    """HTTP status codes seen by the simulated devices (an httpx response hook)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = collections.Counter()

    def hook(self, response: httpx.Response) -> None:
        with self.lock:
            self.counts[response.status_code] += 1


def poll(device) -> int:
    """What a device does after a push: Idle, then answer commands until none is left. A device without
    DDM state (first pass) fetches the tokens itself, as iOS does after enrolling."""
    from mdm.simulator import ddm
    answered = device.connect()
    if device.ddm.declarations_token is None:
        ddm.sync(device)
    return answered


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=32, help="devices talking to the server at once")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the fleet while the admin acts")
    parser.add_argument("--workdir", help="keep the instance and devices here and reuse them next time")
    args = parser.parse_args()
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="mdm-bench-load-"))
    instance = Instance(workdir)
    instance.start()
    log_offset = (workdir / "server.log").stat().st_size
    report: dict = {"bench": "load", "devices": args.devices, "workers": args.workers}
    try:
        started = time.perf_counter()
        devices = enrolled_devices(instance, args.devices, workers=4)
        report["enroll_or_load_seconds"] = round(time.perf_counter() - started, 1)
        bind_default_rings(instance)

        from mdm.simulator import ddm
        statuses = Statuses()
        for device in devices:
            ddm.install(device)
            device.http.event_hooks["response"].append(statuses.hook)
            device.received_commands.clear()

        app = instance.app()
        with app.app_context():
            from mdm.accounts import Role, create_api_token
            from mdm.ddm.policies import require_policy
            from mdm.extensions import db
            _token, api_secret = create_api_token(f"bench-load-{time.time_ns()}", Role.Manager, created_by="bench")
            from mdm.ddm.policies import settings_of
            policy = require_policy("General Adoption")
            policy_id = policy.id
            # The deferral reaches devices: SoftwareUpdateSettings on iOS 18, the restrictions profile on 17.
            deferral_days = settings_of(policy).deferral_days
            new_deferral_days = deferral_days + 1 if deferral_days < 20 else deferral_days - 1
            db.session.commit()
            db.session.remove()

        admin: dict = {}

        def act_as_admin():
            time.sleep(2)         # the fleet is busy polling by now
            with app.app_context():
                from mdm.extensions import db
                from mdm.models import Device
                from mdm.protocol.queue import enqueue_bulk
                t = time.perf_counter()
                targets = Device.query.filter_by(enrollment_status="enrolled").all()
                commands = enqueue_bulk(targets, BULK_COMMAND, queued_by="bench-admin")
                admin["bulk_uuids"] = {c.device_id: c.uuid for c in commands}
                db.session.commit()
                admin["bulk_seconds"] = round(time.perf_counter() - t, 2)
                db.session.remove()
            with httpx.Client(verify=instance.ca_file, timeout=300) as client:
                t = time.perf_counter()
                response = client.patch(f"{instance.url}/api/v1/policies/{policy_id}", json={"deferral_days": new_deferral_days},
                                        headers={"Authorization": f"Bearer {api_secret}"})
                admin["policy_edit_status"] = response.status_code
                admin["policy_edit_seconds"] = round(time.perf_counter() - t, 2)

        errors: list[str] = []
        admin_thread = threading.Thread(target=act_as_admin, name="admin")
        started = time.perf_counter()
        cpu_before = instance.cpu_seconds()
        answered = 0
        with ThreadPoolExecutor(max_workers=args.workers) as pool:
            for n in range(args.rounds + 1):
                if n == 0:
                    admin_thread.start()
                if n == args.rounds:
                    admin_thread.join()       # the drain pass starts after the admin is done
                for future in [pool.submit(poll, d) for d in devices]:
                    try:
                        answered += future.result()
                    except Exception as exc:  # noqa: BLE001 (summarised below)
                        errors.append(f"{type(exc).__name__}: {exc}"[:300])
        report["load_seconds"] = round(time.perf_counter() - started, 1)
        report["server_cpu_seconds"] = round(instance.cpu_seconds() - cpu_before, 1)
        report["commands_answered"] = answered
        report["commands_by_type"] = dict(collections.Counter(
            c["Command"]["RequestType"] for d in devices for c in d.received_commands))
        report["device_requests"] = sum(statuses.counts.values())
        report["requests_per_s"] = round(report["device_requests"] / report["load_seconds"], 1)
        report["http_statuses"] = dict(sorted(statuses.counts.items()))
        report["admin"] = {k: v for k, v in admin.items() if k != "bulk_uuids"}
        report["device_errors"] = errors[:10]

        # ---- checks --------------------------------------------------------------------------------
        server_log = (workdir / "server.log").read_bytes()[log_offset:].decode(errors="replace")
        checks = {
            "no_5xx": not any(code >= 500 for code in statuses.counts) and admin.get("policy_edit_status") == 200,
            "no_database_is_locked": "database is locked" not in server_log,
            "no_device_errors": not errors,
        }
        duplicates = 0
        missing_bulk = 0
        received: dict[str, set[str]] = {}
        for device in devices:
            uuids = [c["CommandUUID"] for c in device.received_commands]
            duplicates += len(uuids) - len(set(uuids))
            received[device.udid] = set(uuids)
        with app.app_context():
            from mdm.ddm import sync
            from mdm.extensions import db
            from mdm.models import Command, Device
            by_udid = {d.udid: d for d in Device.query}
            not_acknowledged = 0
            for device in devices:
                stored = by_udid[device.udid]
                for command_uuid in received[device.udid]:
                    command = Command.query.filter_by(uuid=command_uuid).one()
                    if command.status not in ("Acknowledged", "Superseded"):
                        not_acknowledged += 1
                bulk_uuid = admin.get("bulk_uuids", {}).get(stored.id)
                if bulk_uuid is None or bulk_uuid not in received[device.udid]:
                    missing_bulk += 1
            wrong_declarations = 0
            for device in devices:
                expected = sync.compute_set(by_udid[device.udid])
                held = {i: d["ServerToken"] for i, d in device.ddm.declarations.items()}
                if (device.ddm.declarations_token != expected.token
                        or held != {d["Identifier"]: d["ServerToken"] for d in expected.declarations}):
                    wrong_declarations += 1
            queued_left = Command.query.filter(Command.status.in_(("queued", "sent"))).count()
            db.session.rollback()
        checks.update({
            "each_command_received_exactly_once": duplicates == 0,
            "each_received_command_acknowledged": not_acknowledged == 0,
            "every_device_got_the_bulk_command": missing_bulk == 0,
            "every_device_has_the_right_declarations": wrong_declarations == 0,
            "nothing_left_queued": queued_left == 0,
        })
        report["details"] = {"duplicate_deliveries": duplicates, "not_acknowledged": not_acknowledged,
                             "missing_bulk": missing_bulk, "wrong_declarations": wrong_declarations,
                             "commands_left_queued": queued_left,
                             "server_log_lines_with_locked": server_log.count("database is locked")}
        report["checks"] = checks
        report["ok"] = all(checks.values())
        report["server_peak_rss_mb"] = round(instance.rss_mb(), 1)
        print(json.dumps(report), flush=True)
        return 0 if report["ok"] else 1
    finally:
        instance.stop()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
