"""Brute-force throttling of the unauthenticated enrollment endpoints, per remote address.

Enrollment URLs (``/enroll/<token>``) and SCEP challenges are secrets a stranger could try to guess.
Each failed token lookup and each refused SCEP request counts one failure for the sender's address;
once an address has ``ENROLL_FAILURES_PER_MINUTE`` failures within a minute, both endpoints answer it
429 with ``Retry-After`` until the oldest of those failures is a minute old. Successful requests are
never counted, so a shop enrolling many devices behind one NAT address is not slowed down.

The counters live in this process's memory (one process serves a deployment; with several web
processes each keeps its own, so the effective limit is N per process). The start of each block is
audited (``enroll.throttled``); every refused request is logged.
"""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque

DEFAULT_FAILURES_PER_MINUTE = 20
WINDOW_SECONDS = 60.0
# Bound memory under a spray from many addresses: the least recently failing addresses are forgotten.
MAX_TRACKED_ADDRESSES = 10_000


class FailureThrottle:
    """Failures per key within a sliding window. Thread-safe (the server runs a thread pool)."""

    def __init__(self, limit: int, window_seconds: float = WINDOW_SECONDS, clock=time.monotonic,
                 max_keys: int = MAX_TRACKED_ADDRESSES):
        self.limit = int(limit)
        self.window = float(window_seconds)
        self.clock = clock
        self.max_keys = max_keys
        self._failures: OrderedDict[str, deque] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque | None:
        failures = self._failures.get(key)
        if failures is None:
            return None
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return None
        return failures

    def retry_after(self, key: str) -> int | None:
        """Seconds until ``key`` may try again, or None when it is not throttled."""
        if self.limit <= 0:
            return None
        with self._lock:
            now = self.clock()
            failures = self._recent(key, now)
            if failures is None or len(failures) < self.limit:
                return None
            # Allowed again once enough of the failures have left the window.
            free_at = failures[len(failures) - self.limit] + self.window
            return max(1, math.ceil(free_at - now))

    def record_failure(self, key: str) -> bool:
        """Count one failure; True when this failure is the one that reaches the limit."""
        if self.limit <= 0:
            return False
        with self._lock:
            now = self.clock()
            failures = self._recent(key, now)
            if failures is None:
                failures = self._failures[key] = deque()
                while len(self._failures) > self.max_keys:
                    self._failures.popitem(last=False)
            else:
                self._failures.move_to_end(key)
            failures.append(now)
            return len(failures) == self.limit


def enrollment_throttle(app=None) -> FailureThrottle:
    """The app's throttle for enrollment-token lookups and SCEP requests (created on first use)."""
    from flask import current_app
    app = app or current_app._get_current_object()
    throttle = app.extensions.get("mdm_enroll_throttle")
    if throttle is None:
        limit = app.config.get("ENROLL_FAILURES_PER_MINUTE", DEFAULT_FAILURES_PER_MINUTE)
        throttle = app.extensions.setdefault("mdm_enroll_throttle", FailureThrottle(int(limit)))
    return throttle


def client_address(request, config) -> str:
    """The sender's address: the remote address, or the last X-Forwarded-For hop when the request came
    through one of TRUSTED_PROXY_ADDRESSES (otherwise every device behind the proxy would share one)."""
    remote = request.remote_addr or "?"
    forwarded = request.headers.get("X-Forwarded-For", "")
    if forwarded and config.get("TRUSTED_PROXY_ADDRESSES"):
        from .certauth import _is_trusted_proxy
        if _is_trusted_proxy(config["TRUSTED_PROXY_ADDRESSES"], request.remote_addr):
            last = forwarded.split(",")[-1].strip()
            if last:
                return last[:64]
    return remote
