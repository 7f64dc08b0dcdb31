"""The DDM room's wiring: ``init_app(app)`` registers its scheduler jobs, signal receivers, CLI groups,
the DeclarativeManagement check-in handler and the re-enrollment hook, and connects the spine's inbox.

Jobs: catalog refresh and SOFA vulnerability-feed refresh (daily, and once shortly after start), full
recomputation (hourly, so deferrals and deadlines move with the clock), a minute job draining the recompute queue, and the periodic
inventory (``inventory.py``: a daily DeviceInformation per device, for its time zone and OS). Each job is
an edge: the scheduler commits after it. Receivers only record work (``queue_recompute``) inside the
sender's transaction; after a request that queued something commits, the queue is drained through the
spine before the response leaves (and committed), so plans follow at once.
"""
from __future__ import annotations

import datetime as dt
import logging

from flask import g, has_app_context, request_finished
from sqlalchemy import event
from sqlalchemy.orm import Session

from ..protocol import checkin
from ..extensions import db
from ..scheduler import register_job
from ..signals import (device_checked_out, device_enrolled, device_facts_changed, device_reenrolled,
                       group_membership_changed)
from . import changes, enforcement_scope, sofa, spine
from . import cli, enforcement_cli  # noqa: F401  (the room's CLI groups attach to ``mdm_cli`` when imported)
from .catalog import CatalogError, ensure_catalog, sync_catalog
from .inventory import queue_inventory
from .plan import queue_recompute
from .protocol import READ_PATH_ENDPOINTS, handle_declarative_management, serve_unchanged
from .state_models import DeclarationSet

log = logging.getLogger(__name__)

# Facts that change a device's model or installed version, hence its plan (time_zone: its deadline instant).
PLAN_FACTS = {"os_version", "build_version", "product_name", "model_name", "software_update_device_id",
              "is_supervised", "enrollment_status", "time_zone"}


def init_app(app) -> None:
    """Wire the DDM room into ``app`` (called once per app by ``create_app``; idempotent)."""
    changes.connect(spine)
    checkin.register_handler("DeclarativeManagement", declarative_management)
    checkin.register_read_handler("DeclarativeManagement", serve_unchanged, READ_PATH_ENDPOINTS)
    register_job(refresh_catalog, "interval", hours=24,
                 next_run_time=dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=30))
    register_job(refresh_sofa, "interval", hours=24,
                 next_run_time=dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=45))
    register_job(recompute_all, "interval", hours=1)
    register_job(drain_recompute_queue, "interval", minutes=1)
    register_job(refresh_inventory, "interval", hours=1)      # asks only devices whose answer is a day old
    register_job(refresh_enforcement_sets, "interval", hours=1)
    for signal, receiver in ((device_facts_changed, _on_facts_changed), (device_enrolled, _on_enrolled),
                             (device_checked_out, _on_checked_out), (device_reenrolled, _on_reenrolled),
                             (group_membership_changed, _on_membership_changed)):
        signal.connect(receiver)          # blinker keeps one connection per receiver
    request_finished.connect(_drain_after_request)


# ---- the check-in handler -------------------------------------------------------------------------

def declarative_management(device, endpoint: str, data: bytes | None) -> tuple[int, bytes, str]:
    """The core's DeclarativeManagement message (mdm/protocol/checkin.py) -> ``protocol.handle_declarative_management``."""
    return handle_declarative_management(device, endpoint, data)


# ---- jobs (edges: the scheduler commits after each) ------------------------------------------------

def refresh_catalog(app) -> None:
    try:
        sync_catalog()
    except CatalogError:
        ensure_catalog()     # offline first run: fall back to the packaged snapshot


def refresh_sofa(app) -> None:
    sofa.refresh_job()         # plans pick the new CVE facts up at the next hourly recomputation


def refresh_enforcement_sets(app) -> set[int]:
    """Whether a device may get an enforcement policy's declaration depends on Apple's catalog: a release
    that expires or leaves gdmf must leave the devices too (Apple: "remove any deployed configurations that
    use OS versions or builds that are no longer available"), and a release newly offered to a model lets
    its devices in. A catalog refresh replans patch policies only, so this job rebuilds the sets of every
    device an enforcement policy reaches, hourly; only sets that differ change (and sync)."""
    return spine.refresh(set(enforcement_scope.reach()))


def recompute_all(app) -> None:
    spine.replan(None)


def drain_recompute_queue(app) -> None:
    spine.run_queued()


def refresh_inventory(app) -> None:
    queue_inventory()


# ---- signal receivers -------------------------------------------------------------------------------

def _queue_device(device) -> None:
    if device.id is None:
        db.session.flush()        # a device created in this transaction needs its id
    queue_recompute([device.id])


def _on_facts_changed(device, changed=(), **_):
    if not changed or set(changed) & PLAN_FACTS:
        _queue_device(device)


def _on_enrolled(device, **_):
    _queue_device(device)


def _on_checked_out(device, **_):
    _queue_device(device)


def _on_reenrolled(device, **_):
    """A new enrollment holds no declarations: drop the record of the set we served the old one, so the
    enrollment's first TokenUpdate (device_enrolled) serves a fresh set and queues the
    DeclarativeManagement command that the cancelled queue may have held."""
    DeclarationSet.query.filter_by(device_id=device.id).delete(synchronize_session="fetch")


def _on_membership_changed(group, device_ids=(), **_):
    queue_recompute(device_ids)


@event.listens_for(Session, "after_commit")
def _note_committed_queue(session):
    if session.info.pop("ddm_recompute_queued", False) and has_app_context():
        g.ddm_drain_queue = True


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back_queue(session):
    session.info.pop("ddm_recompute_queued", None)


def _drain_after_request(app, response, **_):
    """After the request's commit (its edge), a second unit of work: drain the queue, commit."""
    if not g.pop("ddm_drain_queue", False):
        return
    try:
        spine.run_queued()
        db.session.commit()
    except Exception:                     # the device's answer is already decided: never turn it into a 500
        db.session.rollback()
        log.exception("recompute after request failed; the minute job will retry")
