"""The policy engine's wiring: scheduler jobs and signal receivers (imported with the DDM models).

Jobs: catalog refresh and SOFA vulnerability-feed refresh (daily, and once shortly after start), full recomputation (hourly, so deferrals
and deadlines move with the clock), a minute job draining the recompute queue, and the periodic
inventory (``inventory.py``: a daily DeviceInformation per device, for its time zone and OS). Receivers only
record work (``queue_recompute``) inside the sender's transaction; after a request that queued
something commits, the queue is drained before the response leaves, so plans follow at once.
"""
from __future__ import annotations

import datetime as dt
import logging

from flask import g, has_app_context, request_finished
from sqlalchemy import event
from sqlalchemy.orm import Session

from ..scheduler import register_job
from ..signals import device_checked_out, device_enrolled, device_facts_changed, group_membership_changed

log = logging.getLogger(__name__)

# Facts that change a device's model or installed version, hence its plan (time_zone: its deadline instant).
PLAN_FACTS = {"os_version", "build_version", "product_name", "model_name", "software_update_device_id",
              "is_supervised", "enrollment_status", "time_zone"}


def refresh_catalog(app) -> None:
    from .catalog import CatalogError, ensure_catalog, sync_catalog
    try:
        sync_catalog()
    except CatalogError:
        ensure_catalog()     # offline first run: fall back to the packaged snapshot


def refresh_sofa(app) -> None:
    from .sofa import refresh_job
    refresh_job()         # plans pick the new CVE facts up at the next hourly recomputation


def recompute_all(app) -> None:
    from .plan import recompute
    recompute()


def drain_recompute_queue(app) -> None:
    from .plan import run_queued_recomputes
    run_queued_recomputes()


def refresh_inventory(app) -> None:
    from .inventory import queue_inventory
    queue_inventory()


register_job(refresh_catalog, "interval", hours=24,
             next_run_time=dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=30))
register_job(refresh_sofa, "interval", hours=24,
             next_run_time=dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=45))
register_job(recompute_all, "interval", hours=1)
register_job(drain_recompute_queue, "interval", minutes=1)
register_job(refresh_inventory, "interval", hours=1)      # asks only devices whose answer is a day old


# ---- signal receivers -------------------------------------------------------------------------------

def _queue(device_ids) -> None:
    from .plan import queue_recompute
    queue_recompute(device_ids)


def _queue_device(device) -> None:
    if device.id is None:
        from ..extensions import db
        db.session.flush()        # a device created in this transaction needs its id
    _queue([device.id])


@device_facts_changed.connect
def _on_facts_changed(device, changed=(), **_):
    if not changed or set(changed) & PLAN_FACTS:
        _queue_device(device)


@device_enrolled.connect
def _on_enrolled(device, **_):
    _queue_device(device)


@device_checked_out.connect
def _on_checked_out(device, **_):
    _queue_device(device)


@group_membership_changed.connect
def _on_membership_changed(group, device_ids=(), **_):
    _queue(device_ids)


@event.listens_for(Session, "after_commit")
def _note_committed_queue(session):
    if session.info.pop("ddm_recompute_queued", False) and has_app_context():
        g.ddm_drain_queue = True


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back_queue(session):
    session.info.pop("ddm_recompute_queued", None)


@request_finished.connect
def _drain_after_request(app, response, **_):
    if not g.pop("ddm_drain_queue", False):
        return
    from ..extensions import db
    from .plan import run_queued_recomputes
    try:
        run_queued_recomputes()
    except Exception:                     # the device's answer is already decided: never turn it into a 500
        db.session.rollback()
        log.exception("recompute after request failed; the minute job will retry")
