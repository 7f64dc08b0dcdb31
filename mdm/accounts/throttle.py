"""Brute-force throttling: the unauthenticated enrollment endpoints per remote address, and admin
sign-in per (account, address) and per address.

Enrollment. Enrollment URLs (``/enroll/<token>``) and SCEP challenges are secrets a stranger could try
to guess. Each failed token lookup and each refused SCEP request counts one failure for the sender's
address; once an address has ``ENROLL_FAILURES_PER_MINUTE`` failures within a minute, both endpoints
answer it 429 with ``Retry-After`` until the oldest of those failures is a minute old. Successful
requests are never counted, so a shop enrolling many devices behind one NAT address is not slowed
down. The counters live in this process's memory (one process serves a deployment; with several web
processes each keeps its own, so the effective limit is N per process). The start of each block is
audited (``enroll.throttled``); every refused request is logged.

Sign-in. Failed admin sign-ins count against two keys: the (account name, address) pair
(``LOGIN_FAILURES_PER_ACCOUNT_ADDRESS`` = 5) and the address alone (``LOGIN_FAILURES_PER_ADDRESS`` =
20), within ``LOGIN_WINDOW`` (15 min). A key that reaches its limit is locked for ``LOGIN_LOCK``
(15 min): sign-ins on it answer 429 with ``Retry-After``, the right password included. There is
deliberately no per-account key: a stranger can lock only their own address out, never the
administrator signing in from elsewhere. Unknown account names are counted exactly like real ones,
and the 429 message is the same, so neither reveals which accounts exist. The counters are rows in
the database (``LoginThrottle`` in mdm/accounts/models.py), shared by every web process and kept across
restarts. The start of each lock is audited (``admin.login_throttled``); each refused attempt is logged.
"""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import timedelta

from flask import current_app
from sqlalchemy.exc import IntegrityError

from . import LoginThrottle
from ..config import is_trusted_proxy
from ..extensions import db
from ..models import utcnow

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
        if is_trusted_proxy(config["TRUSTED_PROXY_ADDRESSES"], request.remote_addr):
            last = forwarded.split(",")[-1].strip()
            if last:
                return last[:64]
    return remote


# --- admin sign-in ---------------------------------------------------------------------------------

LOGIN_FAILURES_PER_ACCOUNT_ADDRESS = 5
LOGIN_FAILURES_PER_ADDRESS = 20
LOGIN_WINDOW = timedelta(minutes=15)
LOGIN_LOCK = timedelta(minutes=15)
_KEY_USERNAME_CHARS = 200  # the key column holds 300; a longer name shares its counter with its prefix


@dataclass(frozen=True)
class LoginLock:
    """A key that is locked: what it covers (for the audit log) and for how long."""
    scope: str            # "account and address" or "address"
    address: str
    retry_after_s: int


def _login_keys(username: str, address: str) -> list[tuple[str, str, int]]:
    name = (username or "").strip().lower()[:_KEY_USERNAME_CHARS]
    return [(f"acct:{address}:{name}", "account and address", LOGIN_FAILURES_PER_ACCOUNT_ADDRESS),
            (f"addr:{address}", "address", LOGIN_FAILURES_PER_ADDRESS)]


def _seconds_left(until, now) -> int:
    return max(1, math.ceil((until - now).total_seconds()))


def login_lock(username: str, address: str) -> LoginLock | None:
    """The lock that refuses this sign-in now, or None."""
    now = utcnow()
    for key, scope, _limit in _login_keys(username, address):
        row = db.session.get(LoginThrottle, key)
        if row is not None and row.locked_until is not None and row.locked_until > now:
            return LoginLock(scope, address, _seconds_left(row.locked_until, now))
    return None


def record_login_failure(username: str, address: str) -> list[LoginLock]:
    """Count one failed sign-in; returns the locks this failure started (to audit). The caller commits."""
    now = utcnow()
    _forget_stale_login_counters(now)
    started = []
    for key, scope, limit in _login_keys(username, address):
        row = _locked_counter(key, now)
        if now - row.window_started_at > LOGIN_WINDOW:
            row.failures, row.window_started_at, row.locked_until = 0, now, None
        row.failures = (row.failures or 0) + 1
        if row.failures >= limit and row.locked_until is None:
            row.locked_until = now + LOGIN_LOCK
            started.append(LoginLock(scope, address, _seconds_left(row.locked_until, now)))
    return started


def _locked_counter(key: str, now) -> LoginThrottle:
    """The counter row, locked for this transaction (PostgreSQL: FOR UPDATE; SQLite writers queue anyway),
    so parallel guesses cannot overwrite each other's counts; made if missing, even when a parallel
    request makes it at the same moment."""
    row = db.session.get(LoginThrottle, key, with_for_update=True)
    if row is not None:
        return row
    try:
        with db.session.begin_nested():
            row = LoginThrottle(key=key, failures=0, window_started_at=now)
            db.session.add(row)
        return row
    except IntegrityError:
        return db.session.get(LoginThrottle, key, with_for_update=True, populate_existing=True)


def clear_login_failures(username: str, address: str) -> None:
    """A successful sign-in forgets that account's failures from that address (not the address's own:
    signing in to one's own account must not reset the count of guesses at others)."""
    key, _scope, _limit = _login_keys(username, address)[0]
    row = db.session.get(LoginThrottle, key)
    if row is not None:
        db.session.delete(row)


def _forget_stale_login_counters(now) -> None:
    """Rows whose window and lock are both over count nothing any more (bounded table under a spray)."""
    stale = LoginThrottle.window_started_at < now - LOGIN_WINDOW
    unlocked = db.or_(LoginThrottle.locked_until.is_(None), LoginThrottle.locked_until < now)
    LoginThrottle.query.filter(stale, unlocked).delete(synchronize_session=False)
