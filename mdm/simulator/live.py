"""A kept-running fleet: enrolled simulated devices that keep checking in, on compressed time.

What is real: every request (signed check-ins, the command endpoint, DDM tokens, declaration items,
declarations and status reports over HTTPS) and the server's answers. What is simulated:
- push: the server's pushes go to APNs, which the simulator cannot receive, so each device polls the
  command endpoint and the DDM tokens every ``poll_seconds`` (real seconds, with jitter), as if woken;
- time: the device clock runs ``speed`` times faster than the wall clock from the moment the fleet
  starts (60 = one simulated minute per real second). Deadlines (device-local, in each device's IANA
  time zone), user habits and install durations are in simulated time; the server keeps real time;
- the person and the download: habits from ``mix.Behaviour``; downloading takes 8-20 simulated
  minutes, preparing 1-5, installing 10-20, then the device reports its new OS.

Each install step is sent as the status report iOS sends (install-state, install-reason, failure-reason,
then the full report with the new version), through ``ddm.py``. Devices are shared out between
``workers`` threads, each handling its devices one at a time; ``stop()`` ends and joins every thread.
A request that fails (server restarting...) is counted in ``errors`` and retried at the next poll.
"""
from __future__ import annotations

import datetime as dt
import logging
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

from . import ddm
from .device import DeviceProfile, SimulatedDevice, _utcnow
from .mix import Behaviour

log = logging.getLogger(__name__)

DOWNLOAD_MINUTES = (8, 20)
PREPARE_MINUTES = (1, 5)
INSTALL_MINUTES = (10, 20)
PROMPT_MINUTES = (5, 60)
TONIGHT_HOURS = (2, 4)
MAX_WAIT_SECONDS = 5.0        # a worker re-checks its devices at least this often (stop is immediate)
MAX_ERRORS_KEPT = 200


class SimClock:
    """Naive-UTC simulated time: stands at the wall clock until ``start()``, then runs ``speed`` times faster
    (so enrollment, however long it takes, costs no simulated time)."""

    def __init__(self, speed: float = 1.0):
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self.start_utc = _utcnow()
        self._started: float | None = None

    def start(self) -> None:
        self.start_utc, self._started = _utcnow(), time.monotonic()

    def __call__(self) -> dt.datetime:
        if self._started is None:
            return _utcnow()
        return self.start_utc + dt.timedelta(seconds=(time.monotonic() - self._started) * self.speed)

    def real_seconds(self, simulated: dt.timedelta) -> float:
        return max(0.0, simulated.total_seconds() / self.speed)


@dataclass
class LiveDevice:
    """One device's loop: poll when due, then run the install steps whose simulated time has come."""
    device: SimulatedDevice
    behaviour: Behaviour
    clock: SimClock
    poll_seconds: tuple[float, float]
    rng: random.Random
    next_poll: float = 0.0                      # monotonic
    polls: int = 0
    errors: int = 0
    offer: tuple | None = None                  # (declaration, target) the user decided about
    user_install_at: dt.datetime | None = None  # device-local
    retry_at: dt.datetime | None = None         # device-local
    steps: list = field(default_factory=list)   # [(device-local due, action)]
    failed_once: bool = False
    backoff: bool = False                       # a request failed: nothing more until the next poll

    # ---- the loop ------------------------------------------------------------------------------
    def due(self) -> float:
        """Monotonic time of the next thing this device does."""
        if self.backoff:
            return self.next_poll
        wakes = [self.next_poll]
        local = ddm.local_now(self.device)
        for when in self._next_events():
            wakes.append(time.monotonic() + self.clock.real_seconds(when - local))
        return min(wakes)

    def _next_events(self) -> list[dt.datetime]:
        if self.steps:
            return [self.steps[0][0]]
        scheduled = self.device.ddm.scheduled
        if scheduled is None:
            return []
        if self.device.ddm.install_state == "failed":
            return [self.retry_at] if self.retry_at else []
        if self.device.ddm.install_state != "none":
            return []
        return [t for t in (self.user_install_at, scheduled.deadline_local) if t is not None]

    def step(self) -> None:
        """Poll if due, then act. A failed request is raised after the device is set to retry at its
        next poll (an interrupted install starts again from the download)."""
        try:
            if time.monotonic() >= self.next_poll:
                self.poll()
            self.act()
        except Exception as exc:
            self.errors += 1
            self.backoff = True
            if self.steps:
                self.steps.clear()
                self.device.ddm.install_state = "none"
            if time.monotonic() >= self.next_poll:
                self.next_poll = time.monotonic() + self.rng.uniform(*self.poll_seconds)
            log.warning("simulated device %s: %s", self.device.serial_number, exc)
            raise

    def poll(self) -> None:
        """What a device does when woken: answer queued commands, then check the DDM tokens."""
        self.polls += 1
        self.next_poll = time.monotonic() + self.rng.uniform(*self.poll_seconds)
        self.device.connect()
        ddm.sync(self.device)
        self.backoff = False

    # ---- the person and the installer ----------------------------------------------------------
    def act(self) -> None:
        state = self.device.ddm
        local = ddm.local_now(self.device)
        if self.steps and state.scheduled is None:       # the server withdrew the update mid-install
            self.steps.clear()
            ddm.set_install_state(self.device, "none")
        while self.steps and self.steps[0][0] <= local:
            _, action = self.steps.pop(0)
            action()
        if self.steps or state.scheduled is None or state.install_state not in ("none", "failed"):
            return
        offer = (state.scheduled.identifier, state.scheduled.target_version)
        if offer != self.offer:
            self.offer, self.retry_at = offer, None
            self.user_install_at = self._user_decision(local)
        if state.install_state == "failed":
            if self.retry_at and local >= self.retry_at:
                self._begin("system-settings", local)
        elif ddm.deadline_passed(self.device):
            self._begin("declaration", local)
        elif self.user_install_at and local >= self.user_install_at:
            self._begin("notification" if self.behaviour.habit == "prompt" else "install-tonight", local)

    def _user_decision(self, local: dt.datetime) -> dt.datetime | None:
        habit = self.behaviour.habit
        if habit == "prompt":
            return local + dt.timedelta(minutes=self.rng.uniform(*PROMPT_MINUTES))
        if habit == "tonight":
            night = dt.datetime.combine(local.date(), dt.time()) + dt.timedelta(
                hours=self.rng.uniform(*TONIGHT_HOURS))
            return night if night > local else night + dt.timedelta(days=1)
        return None

    def _minutes(self, bounds) -> dt.timedelta:
        return dt.timedelta(minutes=self.rng.uniform(*bounds))

    def _begin(self, reason: str, local: dt.datetime) -> None:
        ddm.start_install(self.device, reason, "downloading")
        at = local + self._minutes(DOWNLOAD_MINUTES)
        if self.behaviour.fails_with and not self.failed_once:
            self.steps = [(at, partial(self._fail, self.behaviour.fails_with))]
            return
        prepared = at + self._minutes(PREPARE_MINUTES)
        self.steps = [(at, partial(ddm.set_install_state, self.device, "prepared")),
                      (prepared, partial(ddm.set_install_state, self.device, "installing")),
                      (prepared + self._minutes(INSTALL_MINUTES), self._finish)]

    def _fail(self, reason: str) -> None:
        self.failed_once = True
        ddm.fail_install(self.device, reason)
        hours = self.behaviour.retry_after_hours
        self.retry_at = ddm.local_now(self.device) + dt.timedelta(hours=hours) if hours is not None else None

    def _finish(self) -> None:
        ddm.finish_install(self.device)
        self.offer = self.user_install_at = self.retry_at = None
        self.device.connect()          # iOS checks in after the restart; the server may have queued work


class LiveFleet:
    """Devices kept running by worker threads until ``stop()``."""

    def __init__(self, devices: list[LiveDevice], clock: SimClock, workers: int = 8):
        self.devices = devices
        self.clock = clock
        self.workers = max(1, min(workers, len(devices) or 1))
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._progress = threading.Condition(self._lock)

    def start(self) -> None:
        self.clock.start()
        for index in range(self.workers):
            mine = self.devices[index::self.workers]
            thread = threading.Thread(target=self._work, args=(mine,), name=f"sim-fleet-{index}", daemon=True)
            self.threads.append(thread)
            thread.start()

    def _work(self, devices: list[LiveDevice]) -> None:
        while not self.stop_event.is_set():
            for live in devices:
                if self.stop_event.is_set():
                    return
                if live.due() <= time.monotonic():
                    try:
                        live.step()
                    except Exception as exc:
                        with self._lock:
                            if len(self.errors) < MAX_ERRORS_KEPT:
                                self.errors.append(f"{live.device.serial_number}: {exc}")
                    with self._progress:
                        self._progress.notify_all()
            wait = min((live.due() for live in devices), default=time.monotonic() + MAX_WAIT_SECONDS)
            self.stop_event.wait(min(MAX_WAIT_SECONDS, max(0.0, wait - time.monotonic())))

    def stop(self, timeout_seconds: float = 60.0) -> bool:
        """Stop every worker and wait for it; True when all ended. Devices stay enrolled."""
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout_seconds)
        for live in self.devices:
            live.device.close()
        return not any(t.is_alive() for t in self.threads)

    # ---- progress --------------------------------------------------------------------------------
    def min_polls(self) -> int:
        return min((live.polls for live in self.devices), default=0)

    def wait_for_polls(self, polls: int, timeout_seconds: float) -> bool:
        """Block until every device has polled ``polls`` times (or the fleet stopped / timed out)."""
        deadline = time.monotonic() + timeout_seconds
        with self._progress:
            while self.min_polls() < polls and not self.stop_event.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._progress.wait(min(left, 1.0))
        return self.min_polls() >= polls

    def summary(self) -> str:
        states = Counter(live.device.ddm.install_state for live in self.devices)
        versions = Counter(live.device.os_version for live in self.devices)
        return (f"simulated {self.clock():%Y-%m-%d %H:%M}Z | polls {sum(d.polls for d in self.devices)} | "
                f"install-state {dict(sorted(states.items()))} | OS {dict(sorted(versions.items()))} | "
                f"errors {sum(d.errors for d in self.devices)}")


@dataclass
class EnrolledFleet:
    fleet: LiveFleet | None
    errors: list[str]
    enroll_seconds: float


def enroll_live_fleet(server_url: str, ca_file: str, enrollment_url: str,
                      plan: list[tuple[DeviceProfile, Behaviour]], *, speed: float = 60.0,
                      poll_seconds: tuple[float, float] = (20.0, 60.0), workers: int = 8,
                      seed: int = 1) -> EnrolledFleet:
    """Enroll one device per (profile, behaviour) with DDM, each polling once right away; not started."""
    clock = SimClock(speed)
    errors: list[str] = []

    def enroll_one(index_item):
        index, (profile, behaviour) = index_item
        device = SimulatedDevice(server_url, ca_file, profile=profile, clock=clock)
        ddm.install(device, time_zone=profile.time_zone)
        device.enroll(enrollment_url)
        device.connect()                   # the inventory commands queued at enrollment
        rng = random.Random(seed * 100_003 + index)
        # The first poll spreads over one interval so the fleet does not check in all at once.
        return LiveDevice(device, behaviour, clock, poll_seconds, rng,
                          next_poll=time.monotonic() + rng.uniform(0, poll_seconds[1]))

    started = time.perf_counter()
    devices = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for future in [pool.submit(enroll_one, item) for item in enumerate(plan)]:
            try:
                devices.append(future.result())
            except Exception as exc:
                errors.append(f"enroll: {exc}")
    fleet = LiveFleet(devices, clock, workers) if devices else None
    return EnrolledFleet(fleet, errors, time.perf_counter() - started)
