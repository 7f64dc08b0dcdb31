"""Static device groups (any OS). Patch policies bound to a group apply to its iOS/iPadOS members.

Membership changes send ``mdm.signals.group_membership_changed``; the policy engine's receiver
queues the members for recomputation in the same transaction, and the service drains the queue through
the DDM spine (``spine.run_queued``) before its work ends (``unit_of_work.finish``), so plans follow at once.
"""
from __future__ import annotations

from typing import Iterable

from ..extensions import db
from ..models import Device, DeviceGroup, audit, group_members
from ..signals import group_membership_changed
from ..unit_of_work import finish
from . import spine
from .models import PolicyBinding
from .policies import FieldError, PolicyError, find_device, find_group


class GroupError(PolicyError):
    """Invalid group input; ``errors`` name the field."""


def _drain() -> None:
    """Plans, sets and results for the members the receivers queued; the service's work ends here."""
    spine.run_queued()
    finish()


def _check_name(name, exclude_id: int | None = None) -> str:
    if not isinstance(name, str) or not name.strip():
        raise GroupError([FieldError("name", "must not be empty")])
    name = name.strip()
    if len(name) > 255:
        raise GroupError([FieldError("name", "must be at most 255 characters")])
    clash = DeviceGroup.query.filter(db.func.lower(DeviceGroup.name) == name.lower())
    if exclude_id is not None:
        clash = clash.filter(DeviceGroup.id != exclude_id)
    if clash.first() is not None:
        raise GroupError([FieldError("name", f"a device group named {name!r} already exists")])
    return name


def require_group(ref) -> DeviceGroup:
    group = find_group(ref)
    if group is None:
        raise GroupError([FieldError("group", f"no device group {ref!r}")])
    return group


def list_groups() -> list[DeviceGroup]:
    return DeviceGroup.query.order_by(DeviceGroup.name).all()


def member_ids(group: DeviceGroup) -> set[int]:
    return {d for (d,) in db.session.query(group_members.c.device_id).filter(group_members.c.group_id == group.id)}


def create_group(name: str, description: str = "", *, actor: str = "system", source: str | None = None) -> DeviceGroup:
    group = DeviceGroup(name=_check_name(name), description=(description or "").strip())
    db.session.add(group)
    db.session.flush()
    audit("device_group.create", actor=actor, source=source, object_type="device_group", object_id=group.id,
          after={"name": group.name, "description": group.description})
    finish()
    return group


def rename_group(ref, new_name: str, *, actor: str = "system", source: str | None = None) -> DeviceGroup:
    group = require_group(ref)
    before = group.name
    group.name = _check_name(new_name, exclude_id=group.id)
    audit("device_group.rename", actor=actor, source=source, object_type="device_group", object_id=group.id,
          before={"name": before}, after={"name": group.name})
    # Plans name their group binding ("group:<name>"): members need a recompute.
    group_membership_changed.send(group, device_ids=member_ids(group))
    db.session.flush()
    _drain()
    return group


def _resolve_devices(refs: Iterable) -> list[Device]:
    devices, errors = [], []
    for ref in refs:
        device = find_device(ref)
        if device is None:
            errors.append(FieldError("device", f"no device {ref!r} (give an id, UDID or serial number)"))
        else:
            devices.append(device)
    if errors:
        raise GroupError(errors)
    if not devices:
        raise GroupError([FieldError("device", "give at least one device")])
    return devices


def add_devices(ref, device_refs: Iterable, *, actor: str = "system", source: str | None = None) -> set[int]:
    """Add devices (id, UDID or serial); returns the ids actually added."""
    group = require_group(ref)
    present = member_ids(group)
    added = {d.id for d in _resolve_devices(device_refs)} - present
    if added:
        db.session.execute(group_members.insert(), [{"group_id": group.id, "device_id": i} for i in sorted(added)])
        audit("device_group.add", actor=actor, source=source, object_type="device_group", object_id=group.id,
              after={"device_ids": sorted(added)})
        group_membership_changed.send(group, device_ids=added)
    db.session.flush()
    _drain()
    return added


def remove_devices(ref, device_refs: Iterable, *, actor: str = "system", source: str | None = None) -> set[int]:
    group = require_group(ref)
    removed = {d.id for d in _resolve_devices(device_refs)} & member_ids(group)
    if removed:
        db.session.execute(group_members.delete().where(group_members.c.group_id == group.id,
                                                        group_members.c.device_id.in_(sorted(removed))))
        audit("device_group.remove", actor=actor, source=source, object_type="device_group", object_id=group.id,
              before={"device_ids": sorted(removed)})
        group_membership_changed.send(group, device_ids=removed)
    db.session.flush()
    _drain()
    return removed


def delete_group(ref, *, actor: str = "system", source: str | None = None) -> set[int]:
    """Delete the group (its policy bindings go with it). Returns the former members' ids."""
    group = require_group(ref)
    members = member_ids(group)
    audit("device_group.delete", actor=actor, source=source, object_type="device_group", object_id=group.id,
          before={"name": group.name, "device_ids": sorted(members)})
    group_membership_changed.send(group, device_ids=members)
    db.session.delete(group)
    db.session.flush()
    _drain()
    return members


def group_summary(group: DeviceGroup) -> dict:
    members = db.session.query(Device).join(group_members, group_members.c.device_id == Device.id).filter(
        group_members.c.group_id == group.id).order_by(Device.id).all()
    policies = [b.policy.name for b in PolicyBinding.query.filter_by(group_id=group.id).order_by(PolicyBinding.id)]
    return {"id": group.id, "name": group.name, "description": group.description,
            "created_at": group.created_at.isoformat(), "policies": policies,
            "devices": [{"id": d.id, "udid": d.udid, "serial_number": d.serial_number, "platform": d.platform,
                         "os_version": d.os_version} for d in members]}
