"""Run many simulated devices against one server, concurrently (demos, load, end-to-end tests)."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .device import DeviceProfile, SimulatedDevice


@dataclass
class FleetReport:
    devices: list[SimulatedDevice] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    enroll_seconds: float = 0.0
    connect_seconds: float = 0.0
    commands_answered: int = 0


def run_fleet(server_url: str, ca_file: str, enrollment_url: str, count: int, *,
              profile: DeviceProfile | None = None, workers: int = 8, connect_rounds: int = 1) -> FleetReport:
    """Enroll ``count`` devices, then let each connect ``connect_rounds`` times (as after a push)."""
    report = FleetReport()
    profile = profile or DeviceProfile()

    def enroll_one(_):
        device = SimulatedDevice(server_url, ca_file, profile=profile)
        device.enroll(enrollment_url)
        return device

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(enroll_one, i) for i in range(count)]:
            try:
                report.devices.append(future.result())
            except Exception as exc:  # reported, not raised: a fleet run summarises
                report.errors.append(f"enroll: {exc}")
    report.enroll_seconds = time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in range(connect_rounds):
            for future in [pool.submit(d.connect) for d in report.devices]:
                try:
                    report.commands_answered += future.result()
                except Exception as exc:
                    report.errors.append(f"connect: {exc}")
    report.connect_seconds = time.perf_counter() - started
    return report
