"""Benchmark: target/deadline recomputation for many devices (default 100,000).

    .venv/bin/python bench/recompute.py [--devices N] [--with-sync]

Builds a throw-away SQLite database: the real 2024-09-20 gdmf feed, the four default rings bound to
four device groups, N iOS devices spread over every model and several installed versions. Then
measures, in wall time and peak RSS:
  1. the first recomputation (every plan is new: bulk insert),
  2. a second one with nothing changed (the hourly job's usual case: reads only),
  3. one after a policy edit that changes a quarter of the plans (bulk update), for the devices the
     policy reaches, as ``policies.update_policy`` does,
  4. the same after another edit of that ring, with every device recomputed (the hourly job's scope).
After each run the bench waits for the push sender (a thread of the same process, woken by the commit) to
handle the pushes the run requested, and reports that time beside the run's own (``pushes_sent_after_s``).
By default the DDM protocol room's declaration refresh is left out (``refresh=False``) so the figure is
the policy engine's own; ``--with-sync`` includes it. Targets (issue 12): with ``--with-sync``, the first run
< 10 s and every other run < 5 s, < 400 MB RSS throughout.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FEED = ROOT.parent / "shared" / "feeds" / "gdmf-pmv-2024-09-20-sample.json"
NOW = dt.datetime(2024, 9, 30, 12, 0)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(app, n_devices: int) -> None:
    from sqlalchemy import insert

    from mdm.extensions import db
    from mdm.models import Device, DeviceGroup, group_members
    from mdm.ddm import catalog, rings
    from mdm.ddm.models import PolicyBinding
    catalog.apply_feed(catalog.load_feed_file(FEED), str(FEED), now=NOW)
    ring_results = rings.load_default_rings()
    models = sorted({m for r in catalog.releases() for m in r.supported_devices})
    versions = ["17.5.1", "17.6", "17.6.1", "17.7", "18.0", "16.7.2"]
    db.session.execute(insert(Device.__table__), [
        {"udid": f"BENCH-{i:07d}", "serial_number": f"B{i:07d}", "product_name": models[i % len(models)],
         "os_version": versions[(i // len(models)) % len(versions)], "enrollment_status": "enrolled",
         "push_token_invalid": False, "inventory": {}, "created_at": NOW} for i in range(n_devices)])
    group_ids = []
    for r in ring_results:
        group = DeviceGroup(name=f"{r.ring} devices")
        db.session.add(group)
        db.session.flush()
        group_ids.append(group.id)
        db.session.add(PolicyBinding(policy_id=r.policy_id, group_id=group.id))
    device_ids = [i for (i,) in db.session.query(Device.id).order_by(Device.id)]
    db.session.execute(insert(group_members), [{"group_id": group_ids[i % 4], "device_id": d}
                                               for i, d in enumerate(device_ids)])
    db.session.commit()


def drain_pushes() -> float:
    """Wait until the push sender (a thread of this process, woken by the commit) has handled every push
    the run requested; returns how long that took. The next run starts on a quiet process, so each figure
    is the recomputation's own and the sending is reported beside it."""
    from mdm.extensions import db
    from mdm.models import PushRequest
    start = time.perf_counter()
    while db.session.scalar(db.select(db.func.count(PushRequest.id)).where(PushRequest.status == "pending")):
        db.session.rollback()
        time.sleep(0.05)
    db.session.rollback()
    return time.perf_counter() - start


def timed(label: str, func) -> dict:
    start = time.perf_counter()
    changed = func()
    seconds = time.perf_counter() - start
    result = {"run": label, "seconds": round(seconds, 2), "changed": len(changed),
              "peak_rss_mb": round(peak_rss_mb(), 1), "pushes_sent_after_s": round(drain_pushes(), 2)}
    print(json.dumps(result), flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--with-sync", action="store_true", help="include mdm.ddm.sync.refresh_devices")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="mdm-bench-"))
    try:
        from mdm import create_app
        from mdm.extensions import db
        app = create_app({"DATABASE_URL": f"sqlite:///{workdir / 'bench.db'}", "SCHEDULER_ENABLED": False,
                          "CERTS_DIR": str(workdir / "certs"), "LOG_LEVEL": "WARNING"},
                         instance_path=str(workdir / "instance"))
        with app.app_context():
            db.create_all()
            build(app, args.devices)
            print(json.dumps({"devices": args.devices, "setup_peak_rss_mb": round(peak_rss_mb(), 1)}), flush=True)
            from mdm.ddm.plan import recompute
            from mdm.ddm.policies import devices_reached, require_policy, settings_of
            refresh = args.with_sync
            timed("first (all new)", lambda: recompute(now=NOW, refresh=refresh))
            timed("unchanged", lambda: recompute(now=NOW, refresh=refresh))
            # A policy edit as the service does it (``policies.update_policy``): store the setting, then the
            # spine for the devices the policy reaches, at the bench's clock instead of the wall clock.
            policy = require_policy("General Adoption")
            policy.grace_days = settings_of(policy).grace_days + 1
            db.session.commit()
            timed("after editing one ring", lambda: recompute(devices_reached(policy.id), now=NOW, refresh=refresh))
            # The same edit followed by the hourly job's full recomputation (every device considered).
            policy.grace_days += 1
            db.session.commit()
            timed("after editing one ring, every device recomputed",
                  lambda: recompute(now=NOW, refresh=refresh))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
