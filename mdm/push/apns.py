"""APNs pushes that wake devices, sent off the request path.

``request_push(device_ids)`` only records PushRequest rows in the caller's transaction (one pending row
per device). After that transaction commits, a background sender thread in this process sends what is
due; a scheduler job (every 30 s) sends whatever another process queued and the retries.

One APNs request per device: ``POST {gateway}/3/device/<hex token>`` over HTTP/2 with the push
certificate as TLS client certificate, headers ``apns-topic`` (the certificate's topic) and
``apns-push-type: mdm``, body ``{"mdm": "<PushMagic>"}``. Apple's answers:
200 sent · 400 BadDeviceToken / 410 Unregistered: the token is dead, stop using it · 429 and 5xx (and
connection errors): retry with exponential back-off up to APNS_MAX_ATTEMPTS · anything else: failed.
Push tokens and PushMagic are secrets: never logged.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
from flask import current_app
from sqlalchemy import event, select, update
from sqlalchemy.orm import Session

from . import cert as pushcert
from ..bulk import insert_rows
from ..extensions import db
from ..models import Device, PushRequest, utcnow
from ..scheduler import register_job

log = logging.getLogger(__name__)

GATEWAYS = {
    "production": "https://api.push.apple.com",
    "sandbox": "https://api.sandbox.push.apple.com",
}
# Settings read with these defaults (all can be set in instance/config.py or as MDM_<NAME>).
DEFAULT_BACKOFF_SECONDS = 30        # first retry delay; doubles per attempt
DEFAULT_BACKOFF_MAX_SECONDS = 3600
DEFAULT_TIMEOUT_SECONDS = 15
DEFAULT_CONCURRENCY = 8             # parallel streams on the one HTTP/2 connection
BATCH_SIZE = 500
# A claimed row whose sender died (process killed mid-send) is picked up again after this long.
CLAIM_LEASE_SECONDS = 300
# Finished rows are kept this long for the UI and audits, then deleted.
KEEP_FINISHED_DAYS = 30
# APNs says this token will never work again (Apple: "Handling notification responses from APNs").
DEAD_TOKEN_REASONS = {"BadDeviceToken", "Unregistered", "DeviceTokenNotForTopic"}
_HEX_TOKEN = re.compile(r"[0-9a-fA-F]{16,256}")
_TOKEN_IN_URL = re.compile(r"/3/device/[0-9a-fA-F]+")


class _RedactPushTokens(logging.Filter):
    """httpx logs every request URL at INFO; APNs URLs end in the device's push token (a secret)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args and isinstance(record.args, tuple):
            record.args = tuple(_TOKEN_IN_URL.sub("/3/device/<token>", str(arg)) if "/3/device/" in str(arg)
                                else arg for arg in record.args)
        return True


logging.getLogger("httpx").addFilter(_RedactPushTokens())
# hpack's DEBUG lines print every header it encodes, :path (the token) included.
logging.getLogger("hpack").setLevel(logging.INFO)


@dataclass
class PushResult:
    """What happened to one device's push. status: sent | pending (retry scheduled) | failed | skipped."""
    device_id: int
    status: str
    status_code: int | None = None
    reason: str | None = None
    apns_id: str | None = None
    push_request_id: int | None = None


# ---------------------------------------------------------------- queueing (request path)


def request_push(device_ids) -> list[int]:
    """Ask for a push to each device, in the caller's transaction: nothing is sent until it commits.
    Returns the device ids, sorted, without repeats.

    Keeps one pending row per device: a device with a pending row gets that row's ``requested_at``
    bumped (so a push already in flight is sent again afterwards) instead of a second row. Written with
    bulk statements (a policy edit can wake a whole fleet at once); the ORM-enabled UPDATE also moves
    ``requested_at`` on PushRequest objects this session already holds.
    """
    return request_push_new_rows(device_ids)[0]


def request_push_new_rows(device_ids) -> tuple[list[int], set[int]]:
    """``request_push``, also saying which devices got a new pending row: for those the newest push request
    is that unattempted row (the others had a pending row, now bumped), which a caller may know without
    reading it back."""
    ids = sorted({int(i) for i in device_ids})
    if not ids:
        return [], set()
    new_rows: set[int] = set()
    now = utcnow()
    session = db.session()
    for start in range(0, len(ids), BATCH_SIZE):
        chunk = ids[start:start + BATCH_SIZE]
        pending = set(session.scalars(select(PushRequest.device_id)
                                      .where(PushRequest.device_id.in_(chunk), PushRequest.status == "pending")))
        if pending:
            session.execute(update(PushRequest)
                            .where(PushRequest.device_id.in_(sorted(pending)), PushRequest.status == "pending")
                            .values(requested_at=now))
        fresh = [{"device_id": device_id, "status": "pending", "attempts": 0, "requested_at": now,
                  "next_attempt_at": now, "created_at": now} for device_id in chunk if device_id not in pending]
        if fresh:
            insert_rows(PushRequest.__table__, fresh)
            new_rows.update(row["device_id"] for row in fresh)
    session.info["mdm_push_app"] = current_app._get_current_object()
    return ids, new_rows


@event.listens_for(Session, "after_commit")
def _wake_sender_after_commit(session):
    app = session.info.pop("mdm_push_app", None)
    if app is not None:
        sender_for(app).wake()


@event.listens_for(Session, "after_rollback")
def _forget_after_rollback(session):
    session.info.pop("mdm_push_app", None)


# ---------------------------------------------------------------- sending


_send_lock = threading.Lock()   # one batch at a time per process: claim, send, record


def process_due_pushes(app=None) -> float | None:
    """Send every due pending push. Returns seconds until the next pending one (None: nothing pending).
    Runs in an app context (scheduler job, background sender)."""
    app = app or current_app._get_current_object()
    with _send_lock:
        for _ in range(1000):  # bounded: a batch that keeps refilling must not spin forever
            now = utcnow()
            query = (db.select(PushRequest)
                     .where(PushRequest.status == "pending", PushRequest.next_attempt_at <= now)
                     .order_by(PushRequest.next_attempt_at, PushRequest.id).limit(BATCH_SIZE))
            if db.engine.dialect.name != "sqlite":
                query = query.with_for_update(skip_locked=True)
            rows = db.session.scalars(query).all()
            if not rows:
                break
            _send_rows(app, rows)
        _prune_finished()
    next_at = db.session.scalar(db.select(db.func.min(PushRequest.next_attempt_at))
                                .where(PushRequest.status == "pending"))
    db.session.rollback()
    if next_at is None:
        return None
    return max(0.0, (next_at - utcnow()).total_seconds())


_last_prune = [0.0]


def _prune_finished() -> None:
    """At most hourly per process: drop finished rows older than KEEP_FINISHED_DAYS."""
    if time.monotonic() - _last_prune[0] < 3600 and _last_prune[0]:
        return
    _last_prune[0] = time.monotonic()
    cutoff = utcnow() - dt.timedelta(days=KEEP_FINISHED_DAYS)
    db.session.execute(db.delete(PushRequest).where(PushRequest.status != "pending",
                                                    PushRequest.requested_at < cutoff))
    db.session.commit()


def send_now(device_ids) -> list[PushResult]:
    """Push to these devices now, synchronously, one attempt each (CLI, tests). A retryable failure
    stays pending for the background sender. Results in the order of ``device_ids``."""
    app = current_app._get_current_object()
    wanted = [int(i) for i in device_ids]
    known = set(db.session.scalars(db.select(Device.id).where(Device.id.in_(wanted))))
    requested = request_push([i for i in wanted if i in known])
    # The rows just written or bumped, named before the commit: another sender may finish one before we
    # get to it, and then its outcome is what we report.
    row_ids = list(db.session.scalars(db.select(PushRequest.id).where(PushRequest.device_id.in_(requested),
                                                                      PushRequest.status == "pending")))
    db.session.info.pop("mdm_push_app", None)  # sent right here, not by the background sender
    db.session.commit()
    with _send_lock:
        rows = [r for r in (db.session.get(PushRequest, i) for i in row_ids) if r is not None]
        by_device = {r.device_id: r for r in _send_rows(app, rows)}
    return [by_device.get(i) or PushResult(i, "skipped" if i not in known else "pending",
                                           reason="no such device" if i not in known else "taken by another sender")
            for i in wanted]


@dataclass
class _Job:
    push_request_id: int
    device_id: int
    token: str
    push_magic: str
    claimed_at: dt.datetime


@dataclass
class _Outcome:
    status_code: int | None
    reason: str | None
    apns_id: str | None = None

    @property
    def retryable(self) -> bool:
        return self.status_code is None or self.status_code == 429 or self.status_code >= 500


def _send_rows(app, rows: list[PushRequest]) -> list[PushResult]:
    """Claim these pending rows (committed), send them outside any transaction, record the outcomes."""
    now = utcnow()
    results, jobs = [], []
    problem = _identity_problem(app)
    topic = pushcert.current_topic() if problem is None else None
    devices = {d.id: d for d in db.session.scalars(
        db.select(Device).where(Device.id.in_(sorted({r.device_id for r in rows}))))} if rows else {}
    for row in rows:
        if row.status != "pending":
            results.append(_result(row))  # finished meanwhile by another sender
            continue
        device = devices.get(row.device_id)
        why_not = _why_not_push(device, topic)
        if why_not:
            row.status, row.last_reason, row.claimed_at = "skipped", why_not, None
            results.append(_result(row))
            log.info("push to device %s skipped: %s", row.device_id, why_not)
            continue
        row.attempts += 1
        row.claimed_at = now
        row.next_attempt_at = now + dt.timedelta(seconds=CLAIM_LEASE_SECONDS)
        if problem:
            # Nothing to gain from retrying until the operator installs a usable certificate.
            row.status, row.last_status_code, row.last_reason, row.claimed_at = "failed", None, problem, None
            results.append(_result(row))
            continue
        jobs.append(_Job(row.id, row.device_id, device.push_token, device.push_magic, now))
    db.session.commit()
    if not jobs:
        return results

    try:
        client, base_url = _client(app), gateway_url(app.config)
    except (OSError, ValueError) as exc:  # unreadable or mismatched key/certificate files
        outcomes = [_Outcome(None, f"cannot load the push identity: {exc}"[:255]) for _ in jobs]
    else:
        workers = max(1, min(int(app.config.get("APNS_CONCURRENCY", DEFAULT_CONCURRENCY)), len(jobs)))
        if workers == 1:
            outcomes = [_post(client, base_url, topic, job) for job in jobs]
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="apns") as pool:
                outcomes = list(pool.map(lambda job: _post(client, base_url, topic, job), jobs))

    for job, outcome in zip(jobs, outcomes):
        row = db.session.get(PushRequest, job.push_request_id)
        if row is None or row.status != "pending" or row.claimed_at != job.claimed_at:
            continue  # our lease ran out and someone else took the row
        _record(app, row, job, outcome)
        results.append(_result(row))
    db.session.commit()
    return results


def _why_not_push(device: Device | None, topic: str | None) -> str | None:
    if device is None:
        return "device deleted"
    if device.enrollment_status != "enrolled":
        return f"device is not enrolled ({device.enrollment_status})"
    if not device.push_token or not device.push_magic:
        return "device has no push token yet (no TokenUpdate)"
    if device.push_token_invalid:
        return "device's push token was rejected by APNs; waiting for a new TokenUpdate"
    if not _HEX_TOKEN.fullmatch(device.push_token):
        return "device's push token is not hex"
    if topic and device.topic and device.topic != topic:
        return (f"device enrolled with topic {device.topic} but the push certificate's topic is {topic}; "
                "re-enroll the device")
    return None


def _identity_problem(app) -> str | None:
    """Why no push can succeed with the installed identity and settings, or None."""
    try:
        gateway = gateway_url(app.config)
    except ValueError as exc:
        return str(exc)[:255]
    info = pushcert.status()
    if info["not_after"] <= utcnow():
        return f"push certificate expired on {info['not_after']:%Y-%m-%d}; renew it (flask mdm push csr)"
    if info["is_placeholder"] and gateway in GATEWAYS.values():
        return "no Apple push certificate installed (placeholder identity); see flask mdm push csr"
    return None


def _post(client: httpx.Client, base_url: str, topic: str, job: _Job) -> _Outcome:
    headers = {"apns-topic": topic, "apns-push-type": "mdm"}
    try:
        response = client.post(f"{base_url}/3/device/{job.token}", json={"mdm": job.push_magic}, headers=headers)
    except httpx.HTTPError as exc:
        # The URL carries the token: keep it out of what we store and log.
        message = str(exc).replace(job.token, "<token>") or type(exc).__name__
        return _Outcome(None, f"connection error: {type(exc).__name__}: {message}"[:255])
    reason = None
    if response.status_code != 200:
        try:
            reason = response.json().get("reason")
        except ValueError:
            reason = None
        reason = reason or response.reason_phrase or f"HTTP {response.status_code}"
    return _Outcome(response.status_code, reason, response.headers.get("apns-id"))


def _record(app, row: PushRequest, job: _Job, outcome: _Outcome) -> None:
    now = utcnow()
    row.last_status_code, row.last_reason = outcome.status_code, outcome.reason
    row.apns_id = outcome.apns_id or row.apns_id
    row.claimed_at = None
    if outcome.status_code == 200:
        row.sent_at = now
        if row.requested_at > job.claimed_at:
            # Asked again while in flight: the device may have checked in before that command existed.
            row.status, row.attempts, row.next_attempt_at = "pending", 0, now
        else:
            row.status = "sent"
        log.info("push to device %s sent (apns-id %s)", row.device_id, outcome.apns_id)
        return
    log.warning("push to device %s: %s %s (attempt %d)", row.device_id, outcome.status_code or "-",
                outcome.reason, row.attempts)
    if outcome.reason in DEAD_TOKEN_REASONS or outcome.status_code == 410:
        device = db.session.get(Device, row.device_id)
        # Only if the device has not sent a new token meanwhile.
        if device is not None and device.push_token == job.token:
            device.push_token_invalid = True
        row.status = "failed"
        return
    max_attempts = int(app.config.get("APNS_MAX_ATTEMPTS", 5))
    if outcome.retryable and row.attempts < max_attempts:
        row.status = "pending"
        row.next_attempt_at = now + dt.timedelta(seconds=_backoff_seconds(app, row.attempts))
    else:
        row.status = "failed"


def _backoff_seconds(app, attempts: int) -> float:
    base = float(app.config.get("APNS_BACKOFF_SECONDS", DEFAULT_BACKOFF_SECONDS))
    ceiling = float(app.config.get("APNS_BACKOFF_MAX_SECONDS", DEFAULT_BACKOFF_MAX_SECONDS))
    return min(ceiling, base * 2 ** max(0, attempts - 1))


def _result(row: PushRequest) -> PushResult:
    return PushResult(row.device_id, row.status, row.last_status_code, row.last_reason, row.apns_id, row.id)


# ---------------------------------------------------------------- the HTTP/2 client


def gateway_url(config) -> str:
    gateway = str(config.get("APNS_GATEWAY") or "production").strip()
    if gateway in GATEWAYS:
        return GATEWAYS[gateway]
    if gateway.startswith("https://"):
        return gateway.rstrip("/")
    raise ValueError(f"APNS_GATEWAY must be 'production', 'sandbox' or an https:// URL, not {gateway!r}")


_client_lock = threading.Lock()


def _client(app) -> httpx.Client:
    """One HTTP/2 client per process and app, rebuilt when the push identity or gateway settings change."""
    key = (pushcert.identity_stamp(), gateway_url(app.config), app.config.get("APNS_CA_FILE"))
    with _client_lock:
        current = app.extensions.get("mdm_apns_client")
        if current and current[0] == key:
            return current[1]
        context = ssl.create_default_context(cafile=_default_ca_bundle())
        if app.config.get("APNS_CA_FILE"):
            context.load_verify_locations(cafile=app.config["APNS_CA_FILE"])
        pushcert.load_client_identity(context)
        timeout = float(app.config.get("APNS_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS))
        client = httpx.Client(http2=True, verify=context, timeout=timeout)
        app.extensions["mdm_apns_client"] = (key, client)
    if current:
        current[1].close()  # safe: batches (the only users) run one at a time under _send_lock
    return client


def _default_ca_bundle() -> str | None:
    try:
        import certifi
        return certifi.where()
    except ImportError:
        return None


# ---------------------------------------------------------------- the background sender


class _Sender:
    """A thread that sends due pushes, started on demand and ending when nothing is pending."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()
        self.wanted = threading.Event()
        self.thread: threading.Thread | None = None
        self.stopped = False

    def wake(self) -> None:
        with self.lock:
            if self.stopped:
                return
            self.wanted.set()
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="apns-sender", daemon=True)
                self.thread.start()

    def _run(self) -> None:
        while True:
            self.wanted.clear()
            with self.app.app_context():
                try:
                    wait = process_due_pushes(self.app)
                except Exception:
                    log.exception("push sender failed; the scheduler job will retry")
                    wait = None
            with self.lock:
                if self.stopped or (wait is None and not self.wanted.is_set()):
                    self.thread = None
                    return
            if wait is not None:
                # A short floor so rows another process holds locked cannot make this loop spin.
                self.wanted.wait(timeout=min(max(wait, 0.2), 60.0))

    def stop(self, timeout: float = 10.0) -> None:
        with self.lock:
            self.stopped = True
            thread = self.thread
            self.wanted.set()
        if thread is not None:
            thread.join(timeout)


_senders_lock = threading.Lock()


def sender_for(app) -> _Sender:
    with _senders_lock:
        sender = app.extensions.get("mdm_push_sender")
        if sender is None:
            sender = app.extensions["mdm_push_sender"] = _Sender(app)
        return sender


def shutdown(app) -> None:
    """Stop the background sender and close the APNs connection (tests, process exit)."""
    sender_for(app).stop()
    entry = app.extensions.pop("mdm_apns_client", None)
    if entry:
        entry[1].close()


def init_app(app) -> None:
    """The push room's wiring (called by ``create_app``): the job that sends due pushes."""
    register_job(process_due_pushes, "interval", seconds=30)
