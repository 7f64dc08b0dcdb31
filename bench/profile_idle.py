"""In-process profile of one signed ``Idle`` with an empty queue: the Flask app through its test client
(no TLS, no HTTP server), so the figure is the application's own CPU per request.

    .venv/bin/python bench/profile_idle.py [--requests 2000] [--profile] [--top 25] [--dump FILE]
                                           [--mix idle|tokens|declaration-items] [--via client|bridge|loop]

One simulated device identity (issued by the app's CA and recorded as SCEP would), Authenticate +
TokenUpdate, its enrollment commands answered; then the same pre-signed Idle body is replayed
``--requests`` times. Prints one JSON line: CPU ms per request (``time.process_time``), SQL statements
and transactions (``BEGIN``) per request, counted with SQLAlchemy engine events. ``--profile`` adds a
cProfile of the loop (cumulative time, the top entries) on stderr.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import plistlib
import pstats
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "support"))   # the test kit: a device identity and real CMS signatures
sys.path.insert(0, str(ROOT / "bench"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--mix", choices=("idle", "tokens", "declaration-items"), default="idle",
                        help="idle (default), or the DeclarativeManagement tokens / declaration-items check-in "
                             "with the General Adoption ring bound to the device (a real declaration set)")
    parser.add_argument("--dump", metavar="FILE", help="with --profile: also write the raw stats to FILE (pstats)")
    parser.add_argument("--via", choices=("client", "bridge", "loop"), default="client",
                        help="client (default): Flask's test client; bridge: the production server's WSGI "
                             "bridge (mdm/server/serve.py) called as its worker thread calls it, with the "
                             "environ it builds, so werkzeug's test machinery is not counted; loop: the "
                             "bridge's event-loop step (the read path without Flask), as it runs on SQLite")
    args = parser.parse_args()

    from sqlalchemy import event

    from mdm.pki import ensure_pki
    from mdm.extensions import db
    from device_identity import DeviceIdentity, make_protocol_app

    tmp = Path(tempfile.mkdtemp(prefix="mdm-profile-idle-"))
    template = tmp / "certs-template"
    ensure_pki(template, ["localhost", "127.0.0.1"], "Test Org")
    app = make_protocol_app(tmp, template)
    client = app.test_client()
    ident = DeviceIdentity(app)
    ident.enroll(client)
    response = ident.connect(client)
    while response.data:   # answer the enrollment commands until the queue is empty
        uuid = plistlib.loads(response.data)["CommandUUID"]
        response = ident.connect(client, "Acknowledged", CommandUUID=uuid)
    path = "/mdm/connect"
    body = plistlib.dumps({"UDID": ident.udid, "Status": "Idle"}, fmt=plistlib.FMT_XML)
    if args.mix != "idle":
        bind_ring(app, ident.udid)
        path = "/mdm/checkin"
        body = plistlib.dumps({"MessageType": "DeclarativeManagement", "UDID": ident.udid,
                               "Endpoint": args.mix}, fmt=plistlib.FMT_XML)
    headers = {"Mdm-Signature": ident.sign(body), "Content-Type": "application/x-apple-aspen-mdm-checkin"}

    counts = {"statements": 0, "begins": 0, "commits": 0}
    with app.app_context():
        engine = db.engine

    def count(name):
        def listener(*_args, **_kwargs):
            counts[name] += 1
        return listener
    event.listen(engine, "before_cursor_execute", count("statements"))
    event.listen(engine, "begin", count("begins"))
    event.listen(engine, "commit", count("commits"))

    put = _bridge_put(app, path, body, headers, args.via == "loop") if args.via != "client" else (
        lambda: client.put(path, data=body, headers=headers))
    for _ in range(50):   # warm-up: caches, the connection pool
        assert put().status_code == 200
    for key in counts:
        counts[key] = 0
    if hasattr(put, "handed_off"):
        put.handed_off = 0
    profiler = cProfile.Profile() if args.profile else None
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    if profiler:
        profiler.enable()
    for _ in range(args.requests):
        response = put()
        assert response.status_code == 200 and (args.mix != "idle" or not response.data), response.data
    if profiler:
        profiler.disable()
    cpu, wall = time.process_time() - cpu_before, time.perf_counter() - wall_before
    print(json.dumps({"bench": f"profile-{args.mix}", "requests": args.requests,
                      "cpu_ms_per_request": round(1000 * cpu / args.requests, 3),
                      "wall_ms_per_request": round(1000 * wall / args.requests, 3),
                      **{f"{k}_per_request": round(v / args.requests, 2) for k, v in counts.items()},
                      **({"handed_to_flask": put.handed_off} if args.via == "loop" else {})}), flush=True)
    if profiler:
        if args.dump:
            profiler.dump_stats(args.dump)
        stats = pstats.Stats(profiler, stream=sys.stderr)
        stats.sort_stats("cumulative").print_stats(args.top)
        stats.sort_stats("tottime").print_stats(args.top)
    return 0


class _Answer:
    def __init__(self, status_code: int, data: bytes):
        self.status_code, self.data = status_code, data


def _bridge_put(app, path: str, body: bytes, headers: dict, on_event_loop: bool):
    """One PUT as a production worker thread runs it: ``WSGIBridge._environ`` from an RSGI-like scope,
    then ``WSGIBridge._call_app`` (request id, access line, the Flask app); or, ``on_event_loop``, as the
    event loop answers it (``WSGIBridge._answer_on_event_loop``: the read path, the access line)."""
    from mdm.server.serve import WSGIBridge
    bridge = WSGIBridge(app, max_body_bytes=8 << 20, body_deadline_seconds=60, threads=1,
                        event_loop_reads=app.extensions["mdm_event_loop_reads"])
    read = bridge.event_loop_reads[("PUT", path)]
    scope = SimpleNamespace(method="PUT", path=path, query_string="", server="127.0.0.1:8443",
                            client="127.0.0.1:50000", http_version="1.1", scheme="https",
                            headers={"host": "localhost:8443", "content-length": str(len(body)),
                                     **{name.lower(): value for name, value in headers.items()}})

    def put():
        environ = bridge._environ(scope, body, "0" * 16)
        answer = bridge._answer_on_event_loop(read, environ, time.monotonic()) if on_event_loop else None
        if answer is None:   # as the server does: the request runs through Flask (counted when on_event_loop)
            put.handed_off += on_event_loop
            answer = bridge._call_app(bridge._environ(scope, body, "0" * 16), time.monotonic())
        status, _headers, data = answer
        return _Answer(status, data)
    put.handed_off = 0
    return put


def bind_ring(app, udid: str) -> None:
    """The real feed and the default rings; the device in the General Adoption ring's group."""
    from _instance import FEED
    from mdm.ddm import catalog, rings
    from mdm.ddm.groups import add_devices, create_group
    from mdm.ddm.plan import recompute
    from mdm.ddm.policies import bind_policy
    from mdm.extensions import db
    from mdm.models import Device
    with app.app_context():
        catalog.apply_feed(catalog.load_feed_file(FEED), str(FEED))
        groups = []
        for ring in rings.load_default_rings():
            group = create_group(f"{ring.ring} devices")
            bind_policy(ring.policy_id, groups=[group.id])
            groups.append(group)
        add_devices(groups[-1], [Device.query.filter_by(udid=udid).one().id])
        db.session.commit()
        recompute()
        db.session.commit()


if __name__ == "__main__":
    sys.exit(main())
