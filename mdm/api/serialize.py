"""JSON shapes of the API's objects (times in UTC with a trailing Z).

A device's ``time_zone`` is the IANA zone it reported (DeviceInformation TimeZone), null when unknown or
not a valid zone name. Policy results (``mdm.ddm.results.DeviceResult.as_dict``) carry ``deadline_local``
(device wall time, as sent in TargetLocalDateTime) and ``deadline_utc``, null when the zone is unknown:
no instant rather than a wrong one.
"""
from __future__ import annotations

from datetime import datetime

from ..ddm.targets import zone_named


def iso(value: datetime | None) -> str | None:
    return value.isoformat() + "Z" if value else None


def device_json(d) -> dict:
    return {"id": d.id, "udid": d.udid, "serial_number": d.serial_number, "device_name": d.device_name,
            "platform": d.platform, "product_name": d.product_name, "model": d.model, "model_name": d.model_name,
            "os_version": d.os_version, "build_version": d.build_version,
            "software_update_device_id": d.software_update_device_id, "supervised": d.is_supervised,
            "time_zone": d.time_zone if zone_named(d.time_zone) else None,
            "enrollment_status": d.enrollment_status, "enrolled_at": iso(d.enrolled_at),
            "last_seen_at": iso(d.last_seen_at), "groups": [{"id": g.id, "name": g.name} for g in d.groups]}


def group_json(g, members: int | None = None) -> dict:
    data = {"id": g.id, "name": g.name, "description": g.description, "created_at": iso(g.created_at)}
    if members is not None:
        data["members"] = members
    return data


def command_json(c) -> dict:
    return {"uuid": c.uuid, "device_id": c.device_id, "request_type": c.request_type, "status": c.status,
            "not_now_count": c.not_now_count, "queued_by": c.queued_by, "queued_at": iso(c.queued_at),
            "sent_at": iso(c.sent_at), "completed_at": iso(c.completed_at), "error_chain": c.error_chain}
