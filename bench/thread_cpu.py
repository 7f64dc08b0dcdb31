"""CPU time per thread of a running server process tree, grouped by thread name, over a window.

    .venv/bin/python bench/thread_cpu.py --pid PID [--seconds 10]

Reads ``utime + stime`` of every thread (``/proc/<pid>/task/<tid>/stat``) of PID and its children
before and after the window; prints one JSON line: CPU seconds per thread name (``comm``: granian's
Rust runtime threads, the ``mdm-app_N`` pool threads that run Flask, the event-loop thread, ...). Run it
while ``replay.py`` drives the server, to see where the server's CPU goes without a profiler's overhead.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            children = task / "children"
            if children.exists():
                todo.extend(int(c) for c in children.read_text().split())
    return out


def thread_cpu(pids: list[int]) -> dict[tuple[int, int], tuple[str, float]]:
    out = {}
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                stat = (task / "stat").read_text()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2:].split()
            out[(pid, int(task.name))] = (comm, (int(fields[11]) + int(fields[12])) / TICKS)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--per-thread", action="store_true", help="one entry per thread id (match them with "
                        "``py-spy dump --pid``, which names each Python thread and its native id)")
    args = parser.parse_args()
    pids = tree(args.pid)
    before = thread_cpu(pids)
    time.sleep(args.seconds)
    after = thread_cpu(pids)
    by_name: Counter = Counter()
    for key, (comm, cpu) in after.items():
        name = re.sub(r"[_-]?\d+$", "_N", comm) if not args.per_thread else f"{comm}:{key[1]}"
        by_name[f"{key[0] if key[0] != args.pid else 'main'}:{name}"] += cpu - before.get(key, (comm, 0.0))[1]
    total = sum(by_name.values())
    print(json.dumps({"bench": "thread-cpu", "seconds": args.seconds, "cpu_seconds": round(total, 2),
                      "by_thread": {k: round(v, 2) for k, v in by_name.most_common() if v > 0}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
