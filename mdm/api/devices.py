"""Devices, their inventory, commands and policy results."""
from __future__ import annotations

from flask import jsonify, request

from ..accounts import Role
from ..accounts.access import api_error, requires
from ..accounts.actor import current_actor, current_source
from ..ddm.results import results_for_device
from ..devices.commands import ADMIN_COMMANDS, queue_device_command
from ..devices.query import DeviceFilters, device_page
from ..extensions import db
from ..models import Command, Device
from .blueprint import bp
from .serialize import command_json, device_json


def _device(device_id: int):
    return db.session.get(Device, device_id)


@bp.get("/devices")
@requires(Role.ReadOnly)
def list_devices():
    filters = DeviceFilters.from_args(request.args)
    if filters.errors:
        return api_error(400, "; ".join(filters.errors))
    page = device_page(filters)
    return jsonify({"devices": [device_json(d) for d in page.devices], "total": page.total, "page": page.page,
                    "per_page": page.per_page, "pages": page.pages})


@bp.get("/devices/<int:device_id>")
@requires(Role.ReadOnly)
def get_device(device_id):
    device = _device(device_id)
    if device is None:
        return api_error(404, f"no device {device_id}")
    return jsonify(device_json(device))


@bp.get("/devices/<int:device_id>/inventory")
@requires(Role.ReadOnly)
def device_inventory(device_id):
    device = _device(device_id)
    if device is None:
        return api_error(404, f"no device {device_id}")
    return jsonify({"device_id": device.id, "inventory": device.inventory or {}})


@bp.get("/devices/<int:device_id>/commands")
@requires(Role.ReadOnly)
def device_commands(device_id):
    device = _device(device_id)
    if device is None:
        return api_error(404, f"no device {device_id}")
    rows = Command.query.filter_by(device_id=device.id).order_by(Command.id.desc()).limit(200).all()
    return jsonify({"commands": [command_json(c) for c in rows]})


@bp.post("/devices/<int:device_id>/commands")
@requires(Role.HelpDesk)
def queue_command(device_id):
    device = _device(device_id)
    if device is None:
        return api_error(404, f"no device {device_id}")
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("request_type"), str):
        return api_error(400, f"request_type: required, one of {', '.join(ADMIN_COMMANDS)}")
    try:
        command = queue_device_command(device, body["request_type"], actor=current_actor(), source=current_source())
    except ValueError as exc:
        db.session.rollback()
        return api_error(400, str(exc))
    db.session.commit()
    return jsonify(command_json(command)), 201


@bp.get("/commands/<command_uuid>")
@requires(Role.ReadOnly)
def get_command(command_uuid):
    command = Command.query.filter_by(uuid=command_uuid.upper()).first()
    if command is None:
        return api_error(404, f"no command {command_uuid}")
    return jsonify(command_json(command))


@bp.get("/devices/<int:device_id>/results")
@requires(Role.ReadOnly)
def device_results(device_id):
    device = _device(device_id)
    if device is None:
        return api_error(404, f"no device {device_id}")
    return jsonify({"device_id": device.id, "results": [r.as_dict() for r in results_for_device(device)]})
