"""Benchmark: the server alone answering pre-signed device requests, replayed with Debian's ``wrk``.

    .venv/bin/python bench/replay.py [--devices 200] [--connections 200] [--seconds 20]
                                     [--mix checkin|idle|ddm] [--workers N] [--workdir DIR]
                                     [--database-url postgresql://...]
    .venv/bin/python bench/replay.py --mix idle --workdir DIR --export FILE     # sign, write FILE, stop
    .venv/bin/python bench/replay.py --url URL --requests FILE [--server-pid PID]   # any MDM server

The second and third forms drive ANY MDM server with the same load: ``--export`` writes the pre-signed
requests of an enrolled fleet (one JSON object a line: ``path``, ``signature``, ``body``; the fleet is the
one enrolled on this server's instance in DIR), and ``--url URL --requests FILE`` replays them against
URL (a reference server that knows those devices, e.g. one sharing the fleet's CA and enrollment, or this
server again). Without ``--server-pid`` no CPU figure is reported (the server may be anywhere on this
machine); with it, the CPU time of that process and its children is measured the same way.

A device signs every request with RSA-2048 (~2 ms CPU), so a load generator that signs on the same
cores measures itself. Instead: enroll N simulated devices once (real SCEP, Authenticate, TokenUpdate
over HTTPS against ``python -m mdm.run``), sign each device's requests once, then let ``wrk`` replay
them over TLS at C connections, rotating over the devices (a small Lua script).

--mix checkin (default): per device an Idle to /mdm/connect and a TokenUpdate (same token) to
    /mdm/checkin, alternating. Targets: <= 0.8 ms server CPU per request, >= 1,500 req/s, p99 < 50 ms,
    0 errors.
--mix idle: per device only the Idle to /mdm/connect (the check-in that changes nothing: the
    per-request CPU target of issue 12, <= 1.0 ms).
--mix ddm: per device the DeclarativeManagement ``tokens`` and ``declaration-items`` check-ins, with
    the four default rings bound (real declarations). Target: p99 < 20 ms.

Prints one JSON line: requests, rate, latency percentiles, errors, server CPU ms per request (utime +
stime of the server process from /proc/<pid>/stat, before/after the run).
"""
from __future__ import annotations

import argparse
import json
import plistlib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _instance import Instance, bind_default_rings, enrolled_devices  # noqa: E402


def signed_requests(devices, mix: str) -> list[tuple[str, str, bytes]]:
    """(path, Mdm-Signature, body) for each request to replay."""
    out = []
    for device in devices:
        if mix == "idle":
            messages = [("/mdm/connect", {"UDID": device.udid, "Status": "Idle"})]
        elif mix == "checkin":
            messages = [("/mdm/connect", {"UDID": device.udid, "Status": "Idle"}),
                        ("/mdm/checkin", {"MessageType": "TokenUpdate", "UDID": device.udid, "Topic": device.topic,
                                          "Token": device.push_token, "PushMagic": device.push_magic,
                                          "UnlockToken": device.unlock_token})]
        else:
            messages = [("/mdm/checkin", {"MessageType": "DeclarativeManagement", "UDID": device.udid,
                                          "Endpoint": endpoint}) for endpoint in ("tokens", "declaration-items")]
        for path, message in messages:
            body = plistlib.dumps(message, fmt=plistlib.FMT_XML)
            out.append((path, device.sign(body), body))
    return out


def lua_script(requests: list[tuple[str, str, bytes]]) -> str:
    """Requests formatted once per wrk thread in init(); request() only rotates over them."""
    def long_string(value: str) -> str:
        return "[==[" + value + "]==]"
    entries = ",\n".join("{%s,%s,%s}" % (long_string(path), long_string(signature), long_string(body.decode()))
                         for path, signature, body in requests)
    return f"""
local raw = {{
{entries}
}}
local formatted = {{}}
local counter = 0
function init(args)
  for i, r in ipairs(raw) do
    formatted[i] = wrk.format("PUT", r[1], {{["Mdm-Signature"] = r[2],
      ["Content-Type"] = "application/x-apple-aspen-mdm-checkin"}}, r[3])
  end
  counter = math.random(#formatted)
end
function request()
  counter = counter % #formatted + 1
  return formatted[counter]
end
done = function(summary, latency, requests)
  io.write(string.format("JSON {{\\"requests\\":%d,\\"non2xx\\":%d,\\"connect\\":%d,\\"read\\":%d,\\"write\\":%d,"
    .. "\\"timeout\\":%d,\\"p50_ms\\":%.2f,\\"p90_ms\\":%.2f,\\"p99_ms\\":%.2f,\\"max_ms\\":%.2f,\\"seconds\\":%.3f}}\\n",
    summary.requests, summary.errors.status, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout, latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, summary.duration / 1e6))
end
"""


def run_wrk(url: str, script: Path, connections: int, seconds: int, threads: int) -> dict:
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script), url]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    match = re.search(r"^JSON (.*)$", output, re.M)
    if not match:
        raise RuntimeError(f"wrk printed no summary:\n{output}")
    return json.loads(match.group(1))


def export_requests(requests: list[tuple[str, str, bytes]], path: Path) -> None:
    with open(path, "w") as out:
        for url_path, signature, body in requests:
            out.write(json.dumps({"path": url_path, "signature": signature, "body": body.decode()}) + "\n")


def import_requests(path: Path) -> list[tuple[str, str, bytes]]:
    out = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            item = json.loads(line)
            out.append((item["path"], item["signature"], item["body"].encode()))
    if not out:
        raise SystemExit(f"{path}: no requests")
    return out


class ExternalServer:
    """A server this bench did not start: CPU from /proc when its pid is given, else none."""

    def __init__(self, pid: int | None):
        self.pid = pid

    def cpu_seconds(self) -> float | None:
        if self.pid is None:
            return None
        from _instance import process_tree_cpu_seconds
        return process_tree_cpu_seconds(self.pid)

    def rss_mb(self) -> float | None:
        if self.pid is None:
            return None
        from _instance import process_tree_rss_mb
        return process_tree_rss_mb(self.pid)


def measure(server, url: str, script: Path, args, label: str, devices: int) -> dict:
    # Warm-up: connections, caches, the first declaration sets.
    run_wrk(url, script, args.connections, 3, args.threads)
    cpu_before = server.cpu_seconds()
    result = run_wrk(url, script, args.connections, args.seconds, args.threads)
    cpu_after = server.cpu_seconds()
    errors = result["non2xx"] + result["connect"] + result["read"] + result["write"] + result["timeout"]
    cpu_ms = (None if cpu_before is None else
              round(1000 * (cpu_after - cpu_before) / max(1, result["requests"]), 3))
    rss = server.rss_mb()
    return {
        "bench": label, "url": url, "devices": devices, "connections": args.connections,
        "workers": args.workers, "requests": result["requests"],
        "req_per_s": round(result["requests"] / result["seconds"], 1),
        "p50_ms": result["p50_ms"], "p90_ms": result["p90_ms"], "p99_ms": result["p99_ms"],
        "max_ms": result["max_ms"], "errors": errors, "non2xx": result["non2xx"],
        "socket_errors": {k: result[k] for k in ("connect", "read", "write", "timeout")},
        "server_cpu_ms_per_request": cpu_ms,
        "server_peak_rss_mb": None if rss is None else round(rss, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--mix", choices=("checkin", "idle", "ddm"), default="checkin")
    parser.add_argument("--workers", type=int, default=None,
                        help="MDM_WORKERS of the server this bench starts (default: the server's default, 1)")
    parser.add_argument("--workdir", help="keep the instance and devices here and reuse them next time")
    parser.add_argument("--database-url", help="the server's database (default: SQLite in the work directory); "
                                               "use a work directory of its own per database")
    parser.add_argument("--export", metavar="FILE", help="write the pre-signed requests to FILE and stop")
    parser.add_argument("--url", help="replay against this server instead of starting one (needs --requests)")
    parser.add_argument("--requests", metavar="FILE", help="pre-signed requests written by --export")
    parser.add_argument("--server-pid", type=int, help="with --url: measure this process tree's CPU")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    if args.url or args.requests:
        if not (args.url and args.requests):
            parser.error("--url and --requests go together")
        requests = import_requests(Path(args.requests))
        with tempfile.TemporaryDirectory(prefix="mdm-bench-replay-") as tmp:
            script = Path(tmp) / "replay.lua"
            script.write_text(lua_script(requests))
            result = measure(ExternalServer(args.server_pid), args.url, script, args,
                             f"replay-file:{Path(args.requests).name}", len({b for _, _, b in requests}))
        print(json.dumps(result), flush=True)
        return 0
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="mdm-bench-replay-"))
    extra_env = {"MDM_WORKERS": str(args.workers)} if args.workers else None
    instance = Instance(workdir, extra_env=extra_env, database_url=args.database_url)
    instance.start()
    try:
        devices = enrolled_devices(instance, args.devices)
        if args.mix == "ddm":
            bind_default_rings(instance)
        requests = signed_requests(devices, args.mix)
        if args.export:
            export_requests(requests, Path(args.export))
            print(json.dumps({"exported": len(requests), "file": args.export, "url": instance.url}), flush=True)
            return 0
        script = workdir / f"replay-{args.mix}.lua"
        script.write_text(lua_script(requests))
        print(json.dumps(measure(instance, instance.url, script, args, f"replay-{args.mix}", len(devices))),
              flush=True)
    finally:
        instance.stop()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
