"""Device groups: create, rename, delete, and members of any OS."""
from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from ..accounts import Role
from ..accounts.access import is_htmx, requires
from ..accounts.actor import current_actor, current_source
from ..ddm.group_admin import GroupError, add_members, create_group, delete_group, member_counts, remove_members, \
    update_group
from ..devices.query import DeviceFilters, device_page
from ..extensions import db
from ..models import Device, DeviceGroup
from .responses import redirect_after_change

bp = Blueprint("groups", __name__, url_prefix="/groups")


def _group_or_404(group_id: int) -> DeviceGroup:
    group = db.session.get(DeviceGroup, group_id)
    if group is None:
        abort(404)
    return group


@bp.route("")
@requires(Role.ReadOnly)
def index():
    groups = DeviceGroup.query.order_by(DeviceGroup.name).all()
    return render_template("ui/groups/index.html", groups=groups, counts=member_counts())


@bp.route("", methods=["POST"])
@requires(Role.Manager)
def create():
    try:
        group = create_group(request.form.get("name", ""), request.form.get("description", ""),
                             actor=current_actor(), source=current_source())
    except GroupError as exc:
        db.session.rollback()
        groups = DeviceGroup.query.order_by(DeviceGroup.name).all()
        return render_template("ui/groups/index.html", groups=groups, counts=member_counts(), error=str(exc),
                               form=request.form), 422
    db.session.commit()
    flash(f"Group {group.name} created.")
    return redirect(url_for("groups.detail", group_id=group.id))


@bp.route("/<int:group_id>")
@requires(Role.ReadOnly)
def detail(group_id):
    group = _group_or_404(group_id)
    members = group.devices.order_by(Device.device_name, Device.id).limit(1000).all()
    return render_template("ui/groups/detail.html", group=group, members=members,
                           member_total=group.devices.count())


@bp.route("/<int:group_id>", methods=["POST"])
@requires(Role.Manager)
def rename(group_id):
    group = _group_or_404(group_id)
    try:
        update_group(group, request.form.get("name", ""), request.form.get("description"),
                     actor=current_actor(), source=current_source())
    except GroupError as exc:
        db.session.rollback()
        flash(f"Not renamed: {exc}")
        return redirect(url_for("groups.detail", group_id=group_id))
    db.session.commit()
    flash("Group saved.")
    return redirect(url_for("groups.detail", group_id=group.id))


@bp.route("/<int:group_id>", methods=["DELETE"])
@requires(Role.Manager)
def delete(group_id):
    group = _group_or_404(group_id)
    name = group.name
    delete_group(group, actor=current_actor(), source=current_source())
    db.session.commit()
    flash(f"Group {name} deleted.")
    return redirect_after_change(url_for("groups.index"))


@bp.route("/<int:group_id>/candidates")
@requires(Role.Manager)
def candidates(group_id):
    """HTMX search box: devices to add, any OS."""
    group = _group_or_404(group_id)
    filters = DeviceFilters.from_args(request.args)
    filters.per_page = 20
    page = device_page(filters) if filters.q else None
    return render_template("ui/groups/_candidates.html", group=group, page=page)


@bp.route("/<int:group_id>/members", methods=["POST"])
@requires(Role.Manager)
def add(group_id):
    group = _group_or_404(group_id)
    ids = [int(i) for i in request.form.getlist("device_id") if i.isdigit()]
    try:
        added = add_members(group, ids, actor=current_actor(), source=current_source())
    except GroupError as exc:
        db.session.rollback()
        flash(str(exc))
        return redirect(url_for("groups.detail", group_id=group_id))
    db.session.commit()
    flash(f"Added {len(added)} device(s).")
    return _back_to_group(group)


@bp.route("/<int:group_id>/members/<int:device_id>", methods=["DELETE"])
@requires(Role.Manager)
def remove(group_id, device_id):
    group = _group_or_404(group_id)
    remove_members(group, [device_id], actor=current_actor(), source=current_source())
    db.session.commit()
    if is_htmx():
        return ""  # the row is removed in place
    return _back_to_group(group)


def _back_to_group(group):
    return redirect_after_change(url_for("groups.detail", group_id=group.id))
