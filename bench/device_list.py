"""Benchmark: the admin UI's device list with 10,000 devices, server time per page.

    .venv/bin/python bench/device_list.py [--devices 10000] [--repeat 30]

A throw-away instance (migrated database, real CA) holding N devices spread over models, OS versions,
supervision and last-seen ages, the four default rings bound to four groups, targets and declaration
sets computed (so the patch columns and filters have real rows behind them). A signed-in Read Only user
requests each page through the WSGI app in-process (no network, no TLS: the server's own time), several
times; p50 and p99 per page are printed as JSON. Target: < 150 ms.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FEED = ROOT.parent / "shared" / "feeds" / "gdmf-pmv-2024-09-20-sample.json"

PAGES = {
    "first page": ("/devices", {}),
    "page 150": ("/devices?page=150", {}),
    "search": ("/devices?q=Phone%2001", {}),
    "search: middle of a serial": ("/devices?q=04567", {}),
    "sort: deadline, descending": ("/devices?sort=-deadline", {}),
    "filter: supervised, iOS 17.5": ("/devices?supervised=yes&os=17.5", {}),
    "filter: patch state below target": ("/devices?patch=below", {}),
    "htmx partial, page 20": ("/devices?page=20", {"HX-Request": "true"}),
}


def build(n_devices: int) -> None:
    from sqlalchemy import insert

    from mdm.ddm import catalog, rings
    from mdm.ddm.models import PolicyBinding
    from mdm.ddm.plan import recompute
    from mdm.extensions import db
    from mdm.models import Device, DeviceGroup, group_members, utcnow
    now = utcnow()
    catalog.apply_feed(catalog.load_feed_file(FEED), str(FEED))
    models = ["iPhone15,2", "iPhone14,5", "iPhone16,1", "iPad13,4", "iPhone12,1", "iPad14,1"]
    versions = ["17.5", "17.6.1", "18.0", "16.7.2", "17.7"]
    db.session.execute(insert(Device.__table__), [
        {"udid": f"LIST-{i:06d}", "serial_number": f"SN{i:06d}", "device_name": f"Phone {i:05d}",
         "product_name": models[i % len(models)], "model_name": "iPad" if "iPad" in models[i % len(models)] else "iPhone",
         "software_update_device_id": models[i % len(models)], "os_version": versions[(i // 7) % len(versions)],
         "is_supervised": i % 4 != 0, "enrollment_status": "enrolled", "push_token_invalid": False, "inventory": {},
         "created_at": now, "last_seen_at": now - dt.timedelta(hours=i % 2000)} for i in range(n_devices)])
    ring_results = rings.load_default_rings()
    group_ids = []
    for r in ring_results:
        group = DeviceGroup(name=f"{r.ring} devices")
        db.session.add(group)
        db.session.flush()
        group_ids.append(group.id)
        db.session.add(PolicyBinding(policy_id=r.policy_id, group_id=group.id))
    ids = [i for (i,) in db.session.query(Device.id).order_by(Device.id)]
    db.session.execute(insert(group_members), [{"group_id": group_ids[n % 4], "device_id": d}
                                               for n, d in enumerate(ids)])
    db.session.commit()
    recompute()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="mdm-bench-list-"))
    try:
        from mdm import create_app
        from mdm.ops.bootstrap import initialise
        from mdm.extensions import db
        app = create_app({"DATABASE_URL": f"sqlite:///{workdir / 'bench.db'}", "SCHEDULER_ENABLED": False,
                          "CERTS_DIR": str(workdir / "certs"), "LOG_LEVEL": "WARNING", "SECRETS_KEY": "0" * 64,
                          "SERVER_URL": "https://localhost:8443"},
                         instance_path=str(workdir / "instance"))
        with app.app_context():
            initialise()
            started = time.perf_counter()
            build(args.devices)
            from mdm.accounts import Role, create_admin
            create_admin("bench", "bench password 123", Role.ReadOnly, created_by="bench")
            db.session.commit()
            db.session.remove()
        print(json.dumps({"devices": args.devices, "setup_seconds": round(time.perf_counter() - started, 1)}),
              flush=True)
        from ui_support import Browser   # signs in the way the login page does (CSRF, Referer)
        client = Browser(app).login("bench", "bench password 123").client
        base = "https://localhost"
        results = []
        for label, (path, headers) in PAGES.items():
            times = []
            for _ in range(args.repeat + 2):
                start = time.perf_counter()
                response = client.get(path, base_url=base, headers=headers)
                times.append((time.perf_counter() - start) * 1000)
                if response.status_code != 200:
                    raise SystemExit(f"{path}: HTTP {response.status_code}")
            times = sorted(times[2:])   # the first two warm caches and templates
            results.append({"page": label, "path": path, "p50_ms": round(statistics.median(times), 1),
                            "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 1),
                            "bytes": len(response.data)})
            print(json.dumps(results[-1]), flush=True)
        worst = max(r["p99_ms"] for r in results)
        print(json.dumps({"bench": "device_list", "devices": args.devices, "worst_p99_ms": worst,
                          "target_ms": 150, "met": worst < 150}), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
