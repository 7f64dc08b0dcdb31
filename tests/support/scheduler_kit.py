"""A second web process of the same deployment, for the scheduler tests (no tests here): ``Child`` runs
scheduler_child.py beside this file and reads what it prints, line by line. The ``children`` fixture
(tests/conftest.py) kills the ones a test leaves running."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent   # scheduler_child.py


class Child:
    """A separate OS process of the same deployment (tests/support/scheduler_child.py), read line by line."""

    def __init__(self, app, instance_path=None, **config):
        config = {"CERTS_DIR": app.config["CERTS_DIR"], "DATABASE_URL": app.config["DATABASE_URL"],
                  "instance_path": str(instance_path or app.instance_path), "SCHEDULER_LOCK_RETRY_SECONDS": 0.2,
                  **config}
        env = {**os.environ, "PYTHONPATH": str(HERE.parents[1])}
        self.process = subprocess.Popen([sys.executable, str(HERE / "scheduler_child.py"), json.dumps(config)],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def next_line(self, timeout=60):
        return self.lines.get(timeout=timeout)

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
