"""Device groups and their members."""
from __future__ import annotations

from flask import jsonify, request

from ..accounts import Role
from ..accounts.access import api_error, requires
from ..accounts.actor import current_actor, current_source
from ..ddm.group_admin import GroupError, add_members, create_group, delete_group, member_counts, member_ids_of, \
    remove_members, update_group
from ..extensions import db
from ..models import Device, DeviceGroup
from .blueprint import bp
from .serialize import device_json, group_json


def _group(group_id: int):
    return db.session.get(DeviceGroup, group_id)


def _body() -> dict | None:
    body = request.get_json(silent=True)
    return body if isinstance(body, dict) else None


@bp.get("/groups")
@requires(Role.ReadOnly)
def list_groups():
    counts = member_counts()
    return jsonify({"groups": [group_json(g, counts.get(g.id, 0))
                               for g in DeviceGroup.query.order_by(DeviceGroup.name)]})


@bp.post("/groups", endpoint="create_group")
@requires(Role.Manager)
def create():
    body = _body()
    if body is None:
        return api_error(400, "send a JSON object: {\"name\": ..., \"description\": ...}")
    try:
        group = create_group(str(body.get("name") or ""), str(body.get("description") or ""),
                             actor=current_actor(), source=current_source())
    except GroupError as exc:
        db.session.rollback()
        return api_error(409 if "already exists" in str(exc) else 400, str(exc))
    db.session.commit()
    return jsonify(group_json(group, 0)), 201


@bp.get("/groups/<int:group_id>")
@requires(Role.ReadOnly)
def get_group(group_id):
    group = _group(group_id)
    if group is None:
        return api_error(404, f"no device group {group_id}")
    return jsonify(group_json(group, len(member_ids_of(group))))


@bp.patch("/groups/<int:group_id>", endpoint="update_group")
@requires(Role.Manager)
def update(group_id):
    group, body = _group(group_id), _body()
    if group is None:
        return api_error(404, f"no device group {group_id}")
    if body is None:
        return api_error(400, "send a JSON object with name and/or description")
    try:
        update_group(group, str(body.get("name", group.name)), body.get("description"), actor=current_actor(),
                     source=current_source())
    except GroupError as exc:
        db.session.rollback()
        return api_error(409 if "already exists" in str(exc) else 400, str(exc))
    db.session.commit()
    return jsonify(group_json(group))


@bp.delete("/groups/<int:group_id>", endpoint="delete_group")
@requires(Role.Manager)
def delete(group_id):
    group = _group(group_id)
    if group is None:
        return api_error(404, f"no device group {group_id}")
    delete_group(group, actor=current_actor(), source=current_source())
    db.session.commit()
    return "", 204


@bp.get("/groups/<int:group_id>/members", endpoint="group_members")
@requires(Role.ReadOnly)
def members(group_id):
    group = _group(group_id)
    if group is None:
        return api_error(404, f"no device group {group_id}")
    devices = group.devices.order_by(Device.id).all()
    return jsonify({"group_id": group.id, "devices": [device_json(d) for d in devices]})


@bp.post("/groups/<int:group_id>/members", endpoint="add_group_members")
@requires(Role.Manager)
def add(group_id):
    group, body = _group(group_id), _body()
    if group is None:
        return api_error(404, f"no device group {group_id}")
    ids = body.get("device_ids") if body else None
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        return api_error(400, "device_ids: a list of device ids")
    try:
        added = add_members(group, ids, actor=current_actor(), source=current_source())
    except GroupError as exc:
        db.session.rollback()
        return api_error(400, str(exc))
    db.session.commit()
    return jsonify({"added": sorted(added)})


@bp.delete("/groups/<int:group_id>/members/<int:device_id>", endpoint="remove_group_member")
@requires(Role.Manager)
def remove(group_id, device_id):
    group = _group(group_id)
    if group is None:
        return api_error(404, f"no device group {group_id}")
    removed = remove_members(group, [device_id], actor=current_actor(), source=current_source())
    db.session.commit()
    return jsonify({"removed": sorted(removed)})
