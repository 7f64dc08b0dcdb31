"""The periodic inventory: once a day each enrolled device is asked DeviceInformation again (the default
queries, TimeZone among them), so a device that moved to another time zone, or was updated outside
a policy, has its deadline instant and plan follow.

A device is asked when its last acknowledged DeviceInformation answer is older than
``INVENTORY_INTERVAL_HOURS`` (default 24; 0 turns the job off) and none is waiting (queued or sent):
an offline device holds one query, never a pile. Commands are queued in chunks, each with one push
request; the caller's job commits per chunk.
"""
from __future__ import annotations

import datetime as dt
import logging

from flask import current_app
from sqlalchemy import and_, exists, or_, select

from ..extensions import db
from ..models import Command, Device, utcnow
from ..protocol.queue import enqueue_bulk
from ..unit_of_work import finish

log = logging.getLogger(__name__)

CHUNK = 500


def devices_due(now: dt.datetime, interval: dt.timedelta) -> list[int]:
    """Enrolled devices with no DeviceInformation waiting and no answer since ``now - interval``."""
    recent_or_waiting = exists().where(
        Command.device_id == Device.id, Command.request_type == "DeviceInformation",
        or_(Command.status.in_(("queued", "sent")),
            and_(Command.status == "Acknowledged", Command.completed_at >= now - interval)))
    return list(db.session.scalars(select(Device.id).where(Device.enrollment_status == "enrolled",
                                                           ~recent_or_waiting).order_by(Device.id)))


def queue_inventory(now: dt.datetime | None = None) -> int:
    """Queue the daily DeviceInformation where it is due, push those devices. Flushes per chunk (``unit_of_work.finish``). Returns how many."""
    hours = float(current_app.config.get("INVENTORY_INTERVAL_HOURS", 24))
    if hours <= 0:
        return 0
    ids = devices_due(now or utcnow(), dt.timedelta(hours=hours))
    for start in range(0, len(ids), CHUNK):
        devices = Device.query.filter(Device.id.in_(ids[start:start + CHUNK])).order_by(Device.id).all()
        enqueue_bulk(devices, "DeviceInformation", queued_by="system:inventory")
        finish()
    if ids:
        log.info("periodic inventory: DeviceInformation queued for %d devices", len(ids))
    return len(ids)
