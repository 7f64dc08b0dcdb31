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


def start_scheduler(app) -> BackgroundScheduler:
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
