"""The DDM spine: the patch-policy path from "these devices changed" to stored results, top to bottom.

    1. plan       ``plan.plan_devices``        which policy wins, target and deadline -> plan-changed ids
    2. sets       ``sync.compute_sets``        declarations and DeclarationsToken per device -> ChunkSets
    3. store      ``sync.store_sets``          sets written, DeclarativeManagement commands queued -> ids
       notify     ``sync.notify``              one push request for those devices -> ids with a new request
    4. results    ``results.record_results_bulk``  per-device state and history from plan, set, status (what
                                                   stage 3 queued and pushed is passed on, not read back)

This module is the only caller of more than one stage; each stage returns what the next needs and
calls none of the others. Callers above it (groups, protocol, jobs, cli) call it directly; services
below it (policies, catalog, plan's edge entry points) reach it through ``changes`` (the inbox the DDM
room connects in ``init_app``). Nothing here commits: the edge does (request, CLI command, job).
"""
from __future__ import annotations

import datetime as dt
import logging
from typing import Iterable

from ..bulk import collector_paused
from ..extensions import db
from . import plan, results, sync

log = logging.getLogger(__name__)

# Facts whose change can change which declarations apply (17 -> 18: the settings declaration applies).
SET_FACTS = {"os_version", "build_version", "product_name", "software_update_device_id"}


def replan(device_ids: Iterable[int] | None = None, *, now: dt.datetime | None = None) -> set[int]:
    """Plan ``device_ids`` (None = every device), then refresh the devices whose plan changed.
    Returns the ids whose plan changed."""
    changed = plan.plan_devices(device_ids, now=now)
    refresh(changed)
    return changed


def run_queued(*, now: dt.datetime | None = None) -> set[int]:
    """Drain the recompute queue: plan the queued devices, then refresh all of them that still exist (a
    fact such as supervision can change the declarations without changing the plan). Returns their ids."""
    ids = plan.queued_device_ids()
    if not ids:
        return set()
    plan.plan_devices(ids, now=now)
    refresh(plan.existing_device_ids(ids))
    return ids


def refresh(device_ids: Iterable[int]) -> set[int]:
    """Stages 2-4 for these devices, one chunk at a time. Returns the ids whose DeclarationsToken changed."""
    rounds = sync.chunks(device_ids)
    if not rounds:
        return set()
    run = sync.new_run()
    changed: set[int] = set()
    shared: dict = {}          # what the results stage reads once per refresh (the push identity)
    with collector_paused():   # see mdm/bulk.py: no full-heap collections every few chunks
        for chunk in rounds:
            sets = sync.compute_sets(run, chunk)
            new_pushes = sync.notify(sync.store_sets(run, sets))
            # what this chunk has just queued and pushed is known: results do not read it back
            results.record_results_bulk(sets.result_inputs, run.now, queued=sets.sync_wanted,
                                        new_pushes=new_pushes, shared=shared)
            db.session.flush()
            changed |= sets.changed
    db.session.expire_all()       # rows were written with bulk statements, past the identity map
    return changed


def status_received(device, changed_facts: set[str]) -> None:
    """After a status report (``status.ingest``): a new OS version can change the device's set, so
    refresh it; otherwise only its results move."""
    if changed_facts & SET_FACTS:
        refresh([device.id])
    else:
        results.record_device_results(device)

