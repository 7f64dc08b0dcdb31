"""APScheduler in the web process. Rooms register their jobs through ``register_job``."""
from __future__ import annotations

import logging

from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger(__name__)

_JOBS: list = []


def register_job(func, trigger: str, **trigger_args) -> None:
    """Called at import time by a room: ``register_job(refresh_catalog, "interval", hours=24)``.
    ``func(app)`` runs inside an app context."""
    _JOBS.append((func, trigger, trigger_args))


# Rooms whose modules register jobs when imported.
JOB_MODULES = ("mdm.push", "mdm.enroll.scep", "mdm.ddm.jobs")


def _import_job_modules() -> None:
    import importlib
    for name in JOB_MODULES:
        importlib.import_module(name)


class SchedulerLocked(RuntimeError):
    """Another process already runs the scheduler for this deployment."""


def _take_scheduler_lock(app):
    """Exactly one scheduler per deployment: an exclusive lock held for the process lifetime.
    The lock is a file in the instance folder, shared by every process started from it (a reloader,
    a second ``run.sh``)."""
    import fcntl
    from pathlib import Path
    path = Path(app.instance_path) / "scheduler.lock"
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SchedulerLocked(f"another process holds {path}") from None
    return handle


def start_scheduler(app) -> BackgroundScheduler | None:
    """Start the scheduler unless another process of this deployment already runs one."""
    try:
        lock = _take_scheduler_lock(app)
    except SchedulerLocked as exc:
        log.warning("not starting a scheduler: %s", exc)
        return None
    app.extensions["mdm_scheduler_lock"] = lock
    _import_job_modules()
    scheduler = BackgroundScheduler(timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1,
                                                                   "misfire_grace_time": 3600})
    for func, trigger, trigger_args in _JOBS:
        scheduler.add_job(_in_context(app, func), trigger, id=f"{func.__module__}.{func.__name__}",
                          replace_existing=True, **trigger_args)
    scheduler.start()
    app.extensions["mdm_scheduler"] = scheduler
    log.info("scheduler started with %d jobs", len(_JOBS))
    return scheduler


def _in_context(app, func):
    def run():
        with app.app_context():
            try:
                func(app)
            except Exception:
                log.exception("scheduled job %s failed", func.__name__)
    run.__name__ = func.__name__
    return run
