"""Devices: the searchable list with bulk actions, and one device's detail page with live fragments."""
from __future__ import annotations

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user

from ..accounts import Role
from ..accounts.access import is_htmx, requires
from ..accounts.actor import current_actor, current_source
from ..ddm import enforcement
from ..ddm.group_admin import GroupError, add_members
from ..ddm.models import PatchPolicy
from ..devices.commands import (ADMIN_COMMANDS, DESTRUCTIVE_COMMANDS, BulkRefusal, check_bulk_command,
                               queue_bulk_command, queue_device_command)
from ..devices.query import PATCH_STATES, PLATFORM_CHOICES, DeviceFilters, device_page, filter_choices
from ..extensions import db
from ..models import Command, Device, DeviceCertificate, DeviceGroup
from .device_facts import declarations_for, policy_results_for, time_zone_of

bp = Blueprint("devices", __name__, url_prefix="/devices")


@bp.route("")
@requires(Role.ReadOnly)
def index():
    filters = DeviceFilters.from_args(request.args)
    page = device_page(filters, with_patch=True)
    groups = DeviceGroup.query.order_by(DeviceGroup.name).all()
    context = {"filters": filters, "page": page, "groups": groups, "choices": filter_choices(),
               "patch_states": PATCH_STATES, "commands": ADMIN_COMMANDS, "platform_choices": PLATFORM_CHOICES,
               "chips": filters.chips({g.id: g.name for g in groups}, _policy_names(filters.policy))}
    if is_htmx() and request.headers.get("HX-Target") == "device-table":
        return render_template("ui/devices/_table.html", **context)
    return render_template("ui/devices/index.html", **context)


def _policy_names(policy_id: int | None) -> dict:
    policy = db.session.get(PatchPolicy, policy_id) if policy_id else None
    return {policy.id: policy.name} if policy else {}


@bp.route("/bulk", methods=["POST"])
@requires(Role.HelpDesk)
def bulk():
    """Add the selected devices to a group (Manager) or queue one command on each (Help Desk; a
    destructive command to several devices needs the typed confirmation: mdm/devices/commands.py)."""
    ids = list(dict.fromkeys(int(i) for i in request.form.getlist("device_id") if i.isdigit()))
    action = request.form.get("action", "")
    if not ids:
        return _bulk_answer("Select at least one device.", error=True)
    if action == "add_to_group":
        if not current_user.has_role(Role.Manager):
            return _bulk_answer("Adding devices to groups needs the Manager role or higher.", error=True, status=403)
        group = db.session.get(DeviceGroup, request.form.get("group_id", type=int) or 0)
        if group is None:
            return _bulk_answer("Choose a group.", error=True)
        try:
            added = add_members(group, ids, actor=current_actor(), source=current_source())
        except GroupError as exc:
            db.session.rollback()
            return _bulk_answer(str(exc), error=True)
        db.session.commit()
        return _bulk_answer(f"Added {len(added)} device(s) to {group.name} ({len(ids) - len(added)} already there).")
    if action.startswith("command:"):
        request_type = action.split(":", 1)[1]
        devices = Device.query.filter(Device.id.in_(ids)).all()
        refusal = check_bulk_command(request_type, len(devices), current_user.role_enum, request.form.get("confirm"))
        if refusal is not None:
            return _bulk_refused(refusal, request_type, len(devices))
        try:
            queue_bulk_command(devices, request_type, actor=current_actor(), source=current_source())
        except ValueError as exc:
            db.session.rollback()
            return _bulk_answer(str(exc), error=True)
        db.session.commit()
        return _bulk_answer(f"Queued {request_type} for {len(devices)} device(s).")
    return _bulk_answer("Choose an action.", error=True)


def _bulk_refused(refusal: BulkRefusal, request_type: str, device_count: int):
    current_app.logger.info("bulk %s to %d devices refused for %s: %s", request_type, device_count,
                            current_user.username, refusal.message)
    if refusal.phrase is None or not is_htmx():
        return _bulk_answer(refusal.message, error=True, status=refusal.status)
    return render_template("ui/devices/_bulk_confirm.html", refusal=refusal, request_type=request_type,
                           device_count=device_count, typed=request.form.get("confirm")), refusal.status


def _bulk_answer(message: str, error: bool = False, status: int | None = None):
    if is_htmx():
        return render_template("ui/_message.html", message=message, error=error), status or (422 if error else 200)
    flash(message)
    return redirect(url_for("devices.index"))


def _device_or_404(device_id: int) -> Device:
    device = db.session.get(Device, device_id)
    if device is None:
        abort(404)
    return device


@bp.route("/<int:device_id>")
@requires(Role.ReadOnly)
def detail(device_id):
    device = _device_or_404(device_id)
    certs = DeviceCertificate.query.filter_by(device_id=device.id).order_by(DeviceCertificate.id.desc()).all()
    return render_template("ui/devices/detail.html", device=device, certs=certs, commands=ADMIN_COMMANDS,
                           destructive=DESTRUCTIVE_COMMANDS, command_rows=_command_rows(device),
                           declarations=declarations_for(device), results=policy_results_for(device),
                           enforcement_results=enforcement.results_for_device(device),
                           groups=DeviceGroup.query.order_by(DeviceGroup.name).all(), device_zone=time_zone_of(device))


def _command_rows(device: Device):
    return Command.query.filter_by(device_id=device.id).order_by(Command.id.desc()).limit(50).all()


@bp.route("/<int:device_id>/commands")
@requires(Role.ReadOnly)
def commands_fragment(device_id):
    """Polled by the detail page: the command queue and history."""
    device = _device_or_404(device_id)
    return render_template("ui/devices/_commands.html", device=device, command_rows=_command_rows(device))


@bp.route("/<int:device_id>/commands", methods=["POST"])
@requires(Role.HelpDesk)
def queue_command(device_id):
    device = _device_or_404(device_id)
    request_type = request.form.get("request_type", "")
    error = None
    try:
        queue_device_command(device, request_type, actor=current_actor(), source=current_source())
        db.session.commit()
    except ValueError as exc:
        db.session.rollback()
        error = str(exc)
    if is_htmx():
        return render_template("ui/devices/_commands.html", device=device, command_rows=_command_rows(device),
                               error=error), (422 if error else 200)
    flash(error or f"Queued {request_type}.")
    return redirect(url_for("devices.detail", device_id=device.id))


@bp.route("/<int:device_id>/results")
@requires(Role.ReadOnly)
def results_fragment(device_id):
    """Polled by the detail page: Policy Results (status, target, deadline, countdown)."""
    device = _device_or_404(device_id)
    return render_template("ui/devices/_results.html", device=device, results=policy_results_for(device),
                           enforcement_results=enforcement.results_for_device(device))
