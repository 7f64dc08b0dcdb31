"""The production server as tests see it: ``python -m mdm.run`` (granian, TLS with our CA) in a child
process, on a free port, with the instance, certificates and database of a test's app.

The test keeps its own in-process app on the same database and instance (``.app``) for the admin's
side: creating enrollment tokens, queuing commands, reading what the server stored. Settings the
server needs from the start (an APNs stand-in's URL, a smaller body limit) are passed as ``config``
and given to both.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
START_TIMEOUT_SECONDS = 120   # the first start on a loaded machine creates keys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m mdm.run`` (or another ``-m`` module that calls ``mdm.run.main``, such as
    ``serving_apps``) with ``config``
    given as ``MDM_*`` variables. ``start()`` returns once the port accepts connections."""

    def __init__(self, root: Path, config: dict, *, port: int | None = None, module: str = "mdm.run",
                 args: tuple = (), extra_env: dict | None = None):
        self.root = Path(root)
        self.port = port or free_port()
        self.url = f"https://localhost:{self.port}"
        self.config = {"PORT": str(self.port), "LISTEN_HOST": "127.0.0.1", "SERVER_URL": self.url,
                       "SCHEDULER_ENABLED": "false", **{k: str(v) for k, v in config.items()}}
        self.module, self.args = module, tuple(args)
        self.extra_env = extra_env or {}
        self.process: subprocess.Popen | None = None
        self.starts = 0

    @property
    def ca_file(self) -> str:
        return str(Path(self.config["CERTS_DIR"]) / "ca.pem")

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MDM_")}
        env.update({f"MDM_{k}": v for k, v in self.config.items()})
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT), str(PROJECT / "tests" / "support"),
                                                         env.get("PYTHONPATH")]))
        env.update(self.extra_env)
        return env

    def start(self) -> "ServerProcess":
        self.starts += 1
        log = open(self.log_path(self.starts), "wb")
        self.process = subprocess.Popen([sys.executable, "-m", self.module, *self.args], cwd=PROJECT, env=self.env(),
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited {self.process.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"server did not start:\n{self.log()}")

    def log_path(self, n: int) -> Path:
        return self.root / f"server-{self.port}-{n}.log"

    def log(self, tail: int | None = 4000) -> str:
        """What the server printed (the last ``tail`` characters of each start; None: everything)."""
        return "\n".join(self.log_path(n).read_text(errors="replace")[-tail if tail else 0:]
                         for n in range(1, self.starts + 1) if self.log_path(n).exists())

    def signal(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    def workers(self) -> list[int]:
        try:
            return [int(pid) for pid in
                    Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()]
        except FileNotFoundError:
            return []

    def kill(self) -> None:
        """SIGKILL the server's main process, as a crash or the OOM killer would; its workers follow
        (``mdm.server.serve.die_with_parent``): wait until they are gone too, so the port is free again."""
        workers = self.workers()
        self.signal(signal.SIGKILL)
        self.process.wait()
        assert self.process.returncode == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers):
            assert time.monotonic() < deadline, "a worker outlived its killed supervisor"
            time.sleep(0.01)

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM and wait; whatever is left of the process group is killed."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)   # workers, should any outlive their parent
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()
        return self.process.returncode


def _alive(pid: int) -> bool:
    """Still running, in any of its threads: a process whose main thread has exited shows as a
    zombie while its other threads finish exiting, and only when the last one is gone are its
    sockets closed."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return False
    for tid in tasks:
        try:
            state = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if state not in ("Z", "X"):
            return True
    return False
