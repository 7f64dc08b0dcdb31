"""Shared bench plumbing: a throw-away instance served by the real production process, and a fleet of
enrolled simulated devices that is generated once and reused (device keys and SCEP are slow).

An instance lives in a work directory (``--workdir``; a temp directory when not given):
    <workdir>/db.sqlite, certs/, instance/, devices/<udid>.json (+ .key.pem, .cert.pem), state.json
With ``database_url`` (``--database-url``) the database is that one instead of db.sqlite (e.g. an empty
PostgreSQL database; the devices in the work directory then belong to it: use one work directory per
database).
Re-running a bench with the same ``--workdir`` reuses the database, the CA and the enrolled devices.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FEED = ROOT.parent / "shared" / "feeds" / "gdmf-pmv-2024-09-20-sample.json"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (every thread's children), from /proc."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            pass
    return out


def process_tree_cpu_seconds(root: int) -> float:
    """utime + stime of a process tree (all threads), from /proc/<pid>/stat."""
    total = 0
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def process_tree_rss_mb(root: int) -> float:
    """Peak resident memory of a process tree, added up."""
    total = 0
    for pid in process_tree(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            continue
    return total / 1024


class Instance:
    """One MDM instance on disk; ``start()`` runs ``python -m mdm.run`` on it (the production process)."""

    def __init__(self, workdir: Path, *, scheduler: bool = False, extra_env: dict | None = None,
                 database_url: str | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        state_file = self.workdir / "state.json"
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        if "port" not in state:
            state = {"port": free_port(), "secret_key": os.urandom(16).hex()}
            state_file.write_text(json.dumps(state))
        self.port = state["port"]
        self.url = f"https://localhost:{self.port}"
        self.env = {
            **os.environ,
            "MDM_DATABASE_URL": database_url or f"sqlite:///{self.workdir / 'db.sqlite'}",
            "MDM_CERTS_DIR": str(self.workdir / "certs"),
            "MDM_SECRET_KEY": state["secret_key"],
            "MDM_INSTANCE_PATH": str(self.workdir / "instance"),
            "MDM_SERVER_URL": self.url,
            "MDM_LISTEN_HOST": "127.0.0.1",
            "MDM_PORT": str(self.port),
            "MDM_SCHEDULER_ENABLED": "true" if scheduler else "false",
            "MDM_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
            **(extra_env or {}),
        }
        self.process: subprocess.Popen | None = None
        self._app = None

    @property
    def ca_file(self) -> str:
        return str(self.workdir / "certs" / "ca.pem")

    # ---- the server process ------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> None:
        log = open(self.workdir / "server.log", "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "mdm.run"], cwd=str(self.workdir), env=self.env,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; see {self.workdir}/server.log")
            try:
                context = ssl.create_default_context(cafile=self.ca_file)
                urllib.request.urlopen(f"{self.url}/ca.pem", context=context, timeout=2).read()
                return
            except Exception:
                time.sleep(0.3)
        raise RuntimeError("server did not come up")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def pids(self) -> list[int]:
        """The server's process tree: the supervisor and its worker processes."""
        return process_tree(self.process.pid)

    def cpu_seconds(self) -> float:
        """utime + stime of the server's processes (all their threads), from /proc/<pid>/stat."""
        return process_tree_cpu_seconds(self.process.pid)

    def rss_mb(self) -> float:
        """Peak resident memory of the server's processes, added up."""
        return process_tree_rss_mb(self.process.pid)

    # ---- an app on the same database, for set-up and checks from the bench process -------------
    def app(self):
        if self._app is None:
            for key, value in self.env.items():
                if key.startswith("MDM_"):
                    os.environ[key] = value
            from mdm import create_app
            self._app = create_app(instance_path=str(self.workdir / "instance"))
        return self._app


# ---- enrolled simulated devices, generated once -------------------------------------------------

def _save_device(directory: Path, device) -> None:
    from cryptography.hazmat.primitives import serialization
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{device.udid}.key.pem").write_bytes(device.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (directory / f"{device.udid}.cert.pem").write_bytes(device.cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{device.udid}.json").write_text(json.dumps({
        "udid": device.udid, "serial_number": device.serial_number, "product_name": device.product_name,
        "os_version": device.os_version, "supervised": device.supervised, "topic": device.topic,
        "checkin_url": device.checkin_url, "server_mdm_url": device.server_mdm_url,
        "push_token": device.push_token.hex(), "push_magic": device.push_magic,
        "unlock_token": device.unlock_token.hex(), "device_name": device.device_name}))


def _load_device(directory: Path, udid: str, server_url: str, ca_file: str):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from mdm.simulator.device import DeviceProfile, SimulatedDevice
    data = json.loads((directory / f"{udid}.json").read_text())
    device = SimulatedDevice(server_url, ca_file, udid=data["udid"], serial_number=data["serial_number"],
                             profile=DeviceProfile(product_name=data["product_name"], os_version=data["os_version"],
                                                   supervised=data["supervised"], device_name=data["device_name"]))
    device.key = serialization.load_pem_private_key((directory / f"{udid}.key.pem").read_bytes(), None)
    device.cert = x509.load_pem_x509_certificate((directory / f"{udid}.cert.pem").read_bytes())
    device.topic, device.checkin_url, device.server_mdm_url = data["topic"], data["checkin_url"], data["server_mdm_url"]
    device.push_token, device.push_magic = bytes.fromhex(data["push_token"]), data["push_magic"]
    device.unlock_token = bytes.fromhex(data["unlock_token"])
    return device


PROFILES = (("iPhone15,2", "17.5"), ("iPhone16,1", "18.0"), ("iPhone14,5", "17.6"), ("iPad13,4", "18.0"))


def enrolled_devices(instance: Instance, count: int, *, workers: int = 4) -> list:
    """``count`` devices enrolled on this instance over HTTPS (SCEP, Authenticate, TokenUpdate); devices
    enrolled by an earlier run with the same workdir are reused, only the missing ones are enrolled."""
    from concurrent.futures import ThreadPoolExecutor

    from mdm.simulator.device import DeviceProfile, SimulatedDevice
    directory = instance.workdir / "devices"
    known = sorted(p.name[:-5] for p in directory.glob("*.json")) if directory.exists() else []
    devices = [_load_device(directory, udid, instance.url, instance.ca_file) for udid in known[:count]]
    missing = count - len(devices)
    if missing <= 0:
        return devices
    app = instance.app()
    with app.app_context():
        from mdm.enroll.tokens import create_token, enrollment_url
        from mdm.extensions import db
        token = create_token(description="bench", expires_in_days=1, max_uses=missing, created_by="bench")
        url = enrollment_url(token)
        db.session.remove()

    def enroll(i):
        model, os_version = PROFILES[(len(known) + i) % len(PROFILES)]
        device = SimulatedDevice(instance.url, instance.ca_file,
                                 profile=DeviceProfile(product_name=model, os_version=os_version))
        device.enroll(url)
        device.connect()   # drain the enrollment commands (DeviceInformation, SecurityInfo, ProfileList)
        _save_device(directory, device)
        return device

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for n, device in enumerate(pool.map(enroll, range(missing)), 1):
            devices.append(device)
            if n % 50 == 0:
                print(f"  enrolled {n}/{missing} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    return devices


def bind_default_rings(instance: Instance) -> None:
    """The real 2024-09-20 feed, the four default rings bound to four groups, every device in one of them
    (devices enrolled since an earlier run join a group too); targets and declarations recomputed."""
    app = instance.app()
    with app.app_context():
        from mdm.ddm import catalog, rings
        from mdm.ddm.groups import add_devices, create_group, member_ids, require_group
        from mdm.ddm.models import PatchPolicy
        from mdm.ddm.plan import recompute
        from mdm.ddm.policies import bind_policy, require_policy
        from mdm.extensions import db
        from mdm.models import Device
        if not PatchPolicy.query.count():
            catalog.apply_feed(catalog.load_feed_file(FEED), str(FEED))
            for ring in rings.load_default_rings():
                group = create_group(f"{ring.ring} devices")
                bind_policy(ring.policy_id, groups=[group.id])
            db.session.commit()
        groups = [require_group(f"{ring} devices") for ring, *_ in rings.DEFAULT_RINGS]
        grouped = set().union(*(member_ids(g) for g in groups))
        ids = [d.id for d in Device.query.order_by(Device.id) if d.id not in grouped]
        for n, group in enumerate(groups):
            if ids[n::len(groups)]:
                add_devices(group, ids[n::len(groups)])
        db.session.commit()
        recompute()
        db.session.remove()
