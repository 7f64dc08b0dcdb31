"""Device group administration for the UI and the API, through the DDM room's group service
(mdm/ddm/groups.py: audited, signalled, recomputed). This module only shapes arguments as forms and
JSON send them (device ids), adds the description edit the service does not cover, and counts members.

Why in the DDM room: group membership is what policy bindings target (a change re-plans devices), so
the group rules live beside the engine; the UI and the API are two doors to the same service."""
from __future__ import annotations

from sqlalchemy import func, select

from ..extensions import db
from ..models import DeviceGroup, audit_update, group_members
from . import groups as service
from .groups import GroupError  # noqa: F401  (re-exported: callers catch it from here)


def create_group(name: str, description: str = "", *, actor: str, source: str | None = None) -> DeviceGroup:
    return service.create_group(name, description or "", actor=actor, source=source)


def update_group(group: DeviceGroup, name: str, description: str | None = None, *, actor: str,
                 source: str | None = None) -> DeviceGroup:
    if (name or "").strip() != group.name:
        service.rename_group(group, name, actor=actor, source=source)
    if description is not None and description.strip()[:1024] != group.description:
        before = {"description": group.description}
        group.description = description.strip()[:1024]
        audit_update("device_group.update", name=group.name, actor=actor, source=source,
                     object_type="device_group", object_id=group.id, before=before,
                     after={"description": group.description})
    return group


def delete_group(group: DeviceGroup, *, actor: str, source: str | None = None) -> set[int]:
    return service.delete_group(group, actor=actor, source=source)


def member_ids_of(group: DeviceGroup) -> set[int]:
    return service.member_ids(group)


def add_members(group: DeviceGroup, device_ids, *, actor: str, source: str | None = None) -> set[int]:
    return service.add_devices(group, [int(i) for i in device_ids], actor=actor, source=source)


def remove_members(group: DeviceGroup, device_ids, *, actor: str, source: str | None = None) -> set[int]:
    ids = [int(i) for i in device_ids]
    return service.remove_devices(group, ids, actor=actor, source=source) if ids else set()


def member_counts() -> dict[int, int]:
    """{group id: number of member devices} for every group with members."""
    rows = db.session.execute(select(group_members.c.group_id, func.count()).group_by(group_members.c.group_id))
    return dict(rows.all())
