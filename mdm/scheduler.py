"""APScheduler in the web process. Each room registers its jobs with ``register_job`` from its
``init_app(app)`` (mdm/push/apns.py, mdm/enroll/scep.py, mdm/ddm/jobs.py), called by ``create_app``.

Exactly one scheduler per deployment: the process that runs it holds a lock for its lifetime. On SQLite
(one host) the lock is a file in the instance folder; on PostgreSQL it is a session-level advisory lock
(``pg_try_advisory_lock``) on a dedicated connection, so web processes on several hosts sharing one
database elect one scheduler. A process started with ``standby=True`` that finds the lock taken keeps
trying and takes over when the holder dies (its connection closes, PostgreSQL releases the lock).

Every job's last run is stored (``scheduler_job_runs``): after downtime an overdue job runs once at
start, coalesced, not once per missed interval, and then keeps its rhythm.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import logging
import threading
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from .extensions import db, normalise_database_url
from .models import SchedulerJobRun
from .unit_of_work import edge

log = logging.getLogger(__name__)

_JOBS: list = []

# pg_try_advisory_lock's key: a constant of this application ("MDMSCHED"). Advisory locks are per
# database, so two deployments in one PostgreSQL cluster do not share it.
ADVISORY_LOCK_KEY = int.from_bytes(b"MDMSCHED", "big") & 0x7FFF_FFFF_FFFF_FFFF
LOCK_RETRY_SECONDS = 30


def register_job(func, trigger: str, **trigger_args) -> None:
    """Called by a room's ``init_app``: ``register_job(refresh_catalog, "interval", hours=24)``. Jobs are
    code, so the list is per process; registering the same job again replaces it. ``func(app)`` runs
    inside an app context; the job commits what it did (it is an edge). An optional ``next_run_time``
    asks for an early first run after each start (it never delays a catch-up)."""
    _JOBS[:] = [job for job in _JOBS if job_id(job[0]) != job_id(func)]
    _JOBS.append((func, trigger, trigger_args))


def registered_jobs() -> list[tuple]:
    """(func, trigger, trigger args) of every registered job, in registration order."""
    return list(_JOBS)


def job_id(func) -> str:
    return f"{func.__module__}.{func.__name__}"


class SchedulerLocked(RuntimeError):
    """Another process already runs the scheduler for this deployment."""


# ---------------------------------------------------------------- the lock

class _FileLock:
    """SQLite, one host: an exclusive ``flock`` on ``instance/scheduler.lock``, shared by every process
    started from that instance folder (a reloader, a second ``run.sh``)."""

    def __init__(self, app):
        self.path = Path(app.instance_path) / "scheduler.lock"
        self.handle = None

    def acquire(self) -> bool:
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self.handle = handle
        return True

    def alive(self) -> bool:
        return self.handle is not None

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def __str__(self):
        return str(self.path)


class _AdvisoryLock:
    """PostgreSQL: a session-level advisory lock on a connection of its own, outside the pool, held for
    the process lifetime. PostgreSQL releases it when that connection ends, however the process dies."""

    def __init__(self, app):
        self.url = normalise_database_url(app.config["SQLALCHEMY_DATABASE_URI"])
        self.engine = None
        self.connection = None

    def acquire(self) -> bool:
        self.release()
        self.engine = create_engine(self.url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        try:
            connection = self.engine.connect()
            taken = connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY}).scalar()
        except Exception as exc:   # database unreachable: not the holder, try again later
            log.warning("scheduler lock: cannot reach the database: %s", type(exc).__name__)
            self.release()
            return False
        if not taken:
            connection.close()
            self.release()
            return False
        self.connection = connection
        return True

    def alive(self) -> bool:
        """The lock is ours as long as its connection lives."""
        if self.connection is None:
            return False
        try:
            self.connection.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def release(self) -> None:
        if self.connection is not None:
            try:
                self.connection.close()
            except Exception:
                pass
            self.connection = None
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None

    def __str__(self):
        return f"PostgreSQL advisory lock {ADVISORY_LOCK_KEY}"


def scheduler_lock(app):
    if normalise_database_url(app.config["SQLALCHEMY_DATABASE_URI"]).get_backend_name() == "postgresql":
        return _AdvisoryLock(app)
    return _FileLock(app)


# ---------------------------------------------------------------- starting

def start_scheduler(app, *, jobs=None, standby: bool = True) -> BackgroundScheduler | None:
    """Start the scheduler unless another process of this deployment already runs one (then None).
    With ``standby`` (the default), a refused process keeps trying every ``SCHEDULER_LOCK_RETRY_SECONDS`` in a daemon
    thread and starts its scheduler when the holder is gone. ``jobs`` replaces the registered jobs."""
    lock = scheduler_lock(app)
    if jobs is None:
        jobs = registered_jobs()
    retry_seconds = float(app.config.get("SCHEDULER_LOCK_RETRY_SECONDS") or LOCK_RETRY_SECONDS)
    if lock.acquire():
        scheduler = _start(app, jobs, lock)
        _watch(app, jobs, lock, scheduler, retry_seconds)
        return scheduler
    log.warning("not starting a scheduler: another process holds %s%s", lock,
                " (standing by)" if standby else "")
    if standby:
        _watch(app, jobs, lock, None, retry_seconds)
    return None


def _start(app, jobs, lock) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1,
                                                                   "misfire_grace_time": 3600})
    last_runs = _last_runs(app)
    now = dt.datetime.now(dt.timezone.utc)
    for func, trigger, trigger_args in jobs:
        args = dict(trigger_args)
        requested_first = args.pop("next_run_time", None)
        if trigger == "interval":
            interval = IntervalTrigger(**args).interval
            first = _first_run(now, interval, last_runs.get(job_id(func)), requested_first)
            # start_date anchors the rhythm at the first run: later runs come every interval after it.
            scheduler.add_job(_in_context(app, func), IntervalTrigger(**args, start_date=first, timezone="UTC"),
                              id=job_id(func), name=job_id(func), replace_existing=True, next_run_time=first)
        else:
            extra = {"next_run_time": requested_first} if requested_first else {}
            scheduler.add_job(_in_context(app, func), trigger, id=job_id(func), name=job_id(func),
                              replace_existing=True, **args, **extra)
    scheduler.start()
    app.extensions["mdm_scheduler"] = scheduler
    app.extensions["mdm_scheduler_lock"] = lock
    log.info("scheduler started with %d jobs (lock: %s)", len(jobs), lock)
    return scheduler


def _first_run(now, interval, last_run, requested_first):
    """When an interval job first runs after a start: one interval after its last run, or at once
    (a single catch-up) when that moment passed while no scheduler ran. A job that never ran waits one
    interval (or its requested first run)."""
    if last_run is None:
        first = now + interval
    else:
        first = max(now, last_run.replace(tzinfo=dt.timezone.utc) + interval)
    if requested_first is not None:
        first = min(first, max(now, requested_first))
    return first


def _last_runs(app) -> dict:
    with app.app_context():
        try:
            return {row.job_id: row.last_run_at for row in db.session.scalars(db.select(SchedulerJobRun))}
        finally:
            db.session.remove()


def _record_run(job: str, started: dt.datetime) -> None:
    db.session.rollback()
    db.session.merge(SchedulerJobRun(job_id=job, last_run_at=started.replace(tzinfo=None)))
    db.session.commit()


def _in_context(app, func):
    name = job_id(func)

    def run():
        started = dt.datetime.now(dt.timezone.utc)
        with app.app_context():
            try:
                with edge(f"job:{name}"):      # a job is an edge: its work commits once
                    func(app)
            except Exception:
                log.exception("scheduled job %s failed", func.__name__)
            try:
                _record_run(name, started)
            except Exception:
                log.exception("could not record the run of %s", name)
    run.__name__ = func.__name__
    return run


# ---------------------------------------------------------------- keeping the lock

def _watch(app, jobs, lock, scheduler, retry_seconds) -> None:
    """A daemon thread: the holder checks that its lock still lives (a PostgreSQL restart ends the
    connection and frees the lock for another process) and pauses its jobs when it does not; a standby
    takes the lock when it is free and starts, or resumes, its scheduler."""
    stop = threading.Event()
    app.extensions["mdm_scheduler_watch_stop"] = stop
    state = {"scheduler": scheduler, "holding": scheduler is not None}

    def loop():
        while not stop.wait(retry_seconds):
            try:
                if state["holding"]:
                    if not lock.alive():
                        log.error("scheduler lock lost (%s): pausing the jobs until it is taken again", lock)
                        state["scheduler"].pause()
                        state["holding"] = False
                        lock.release()
                    continue
                if lock.acquire():
                    if state["scheduler"] is None:
                        state["scheduler"] = _start(app, jobs, lock)
                    else:
                        state["scheduler"].resume()
                        log.info("scheduler lock taken again: jobs resumed")
                    state["holding"] = True
            except Exception:
                log.exception("scheduler lock watch failed")

    threading.Thread(target=loop, daemon=True, name="mdm-scheduler-lock").start()


def stop_scheduler(app) -> None:
    """Shut down this process's scheduler (if any) and release the lock."""
    stop = app.extensions.pop("mdm_scheduler_watch_stop", None)
    if stop:
        stop.set()
    scheduler = app.extensions.pop("mdm_scheduler", None)
    if scheduler is not None:
        scheduler.shutdown(wait=False)
    lock = app.extensions.pop("mdm_scheduler_lock", None)
    if lock is not None:
        lock.release()
