"""The spine's inbox: how modules BELOW the spine hand "these devices changed" to it.

``policies`` (its settings are read by ``plan``), ``catalog`` (read by ``plan``) and ``plan``'s own
edge entry points sit below ``mdm/ddm/spine.py`` in the import graph, so they cannot import it. They call
these functions instead; the DDM room connects them to the spine in ``mdm.ddm.jobs.init_app``
(``connect(spine)``). Modules above the spine (groups, protocol, jobs, cli) call the spine directly.

Nothing here commits: the edge that called the service does.
"""
from __future__ import annotations

import datetime as dt
from typing import Iterable

_spine = None


class SpineNotConnected(RuntimeError):
    """The DDM room was not initialised (``mdm.ddm.jobs.init_app(app)``, called by ``create_app``)."""


def connect(spine) -> None:
    """Called once by the DDM room's ``init_app`` with the ``mdm.ddm.spine`` module."""
    global _spine
    _spine = spine


def _connected():
    if _spine is None:
        raise SpineNotConnected("the DDM spine is not connected: create the app with mdm.create_app")
    return _spine


def replan(device_ids: Iterable[int] | None, *, now: dt.datetime | None = None) -> set[int]:
    """Plans, then sets, commands and results for these devices (None = all). Returns plan-changed ids."""
    return _connected().replan(device_ids, now=now)


def run_queued(*, now: dt.datetime | None = None) -> set[int]:
    """Drain the recompute queue through the spine. Returns the ids processed."""
    return _connected().run_queued(now=now)


def refresh(device_ids: Iterable[int]) -> set[int]:
    """Sets, commands and results (not plans) for these devices. Returns the ids whose token changed."""
    return _connected().refresh(device_ids)
