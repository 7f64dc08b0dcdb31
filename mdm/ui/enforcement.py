"""Device Management › Policy Management › Patch Management › Software Update Enforcement: policies that
install one specific iOS/iPadOS version by a set date and device-local time. List, form (the version
picked from the catalog for the models in scope, or typed), bindings, results and preview; every change
goes through ``mdm/ddm/enforcement.py`` (the same validation and messages as the CLI and the API).
Read Only sees everything, Manager changes; every form carries the CSRF token. This view commits."""
from __future__ import annotations

from flask import Blueprint, abort, flash, render_template, request, url_for

from ..accounts import Role
from ..accounts.access import requires
from ..accounts.actor import current_actor, current_source
from ..ddm import catalog
from ..ddm import enforcement as service
from ..ddm import enforcement_scope as scope
from ..ddm.enforcement_models import EnforcementPolicy
from ..ddm.policies import PolicyError
from ..ddm.targets import version_key
from ..extensions import db
from ..models import DeviceGroup, utcnow
from .responses import redirect_after_change

bp = Blueprint("enforcement", __name__)


def _policy_or_404(policy_id: int) -> EnforcementPolicy:
    policy = db.session.get(EnforcementPolicy, policy_id)
    if policy is None:
        abort(404)
    return policy


def _form_data() -> dict:
    return {f: request.form.get(f, "") for f in service.FIELDS}


def catalog_versions(device_ids) -> list[dict]:
    """The versions the catalog offers (unexpired) to the models in scope, or to any model without a scope:
    [{version, builds, models}] newest first, for the version picker."""
    catalog.ensure_catalog()
    index = scope.release_index()
    models = set(service.models_in_scope(device_ids, index)) or set(index.by_model)
    now = utcnow()
    found: dict[str, dict] = {}
    for model in models:
        for release in index.releases_for(model):
            if release.expired(now):
                continue
            slot = found.setdefault(release.version, {"version": release.version, "builds": set(), "models": 0})
            slot["builds"] |= set(release.builds)
            slot["models"] += 1
    rows = sorted(found.values(), key=lambda r: version_key(r["version"]), reverse=True)
    return [{**r, "builds": sorted(r["builds"])} for r in rows]


def _render_form(policy=None, data=None, errors=None, status=200):
    reached = scope.devices_reached(policy.id) if policy else set()
    data = data or (service.settings_of(policy).to_dict() if policy else {})
    context = {"policy": policy, "d": data, "errors": errors or {}, "labels": service.LABELS,
               "versions": catalog_versions(reached), "groups": DeviceGroup.query.order_by(DeviceGroup.name).all()}
    if policy is not None:
        context["summary"] = service.policy_summary(policy)
        context["results"] = service.results_for_policy(policy)
        context["preview"] = service.preview(policy)
        db.session.commit()          # results are stored facts
    return render_template("ui/enforcement/form.html", **context), status


def _errors(exc: PolicyError) -> dict:
    out: dict[str, list[str]] = {}
    for e in exc.errors:
        out.setdefault(e.field, []).append(e.message)
    return out


@bp.route("/patch-management/enforcement")
@requires(Role.ReadOnly)
def index():
    policies = [service.policy_summary(p) for p in service.list_policies()]
    return render_template("ui/enforcement/index.html", policies=policies)


@bp.route("/patch-management/enforcement/new")
@requires(Role.Manager)
def new():
    return _render_form()


@bp.route("/patch-management/enforcement", methods=["POST"])
@requires(Role.Manager)
def create():
    data = _form_data()
    try:
        policy = service.create_policy(data, actor=current_actor(), source=current_source())
    except PolicyError as exc:
        db.session.rollback()
        return _render_form(None, data, _errors(exc), 422)
    db.session.commit()
    flash(f"Enforcement policy {policy.name} created. Bind it to devices or device groups.")
    return redirect_after_change(url_for("enforcement.edit", policy_id=policy.id))


@bp.route("/patch-management/enforcement/<int:policy_id>")
@requires(Role.ReadOnly)
def edit(policy_id):
    return _render_form(_policy_or_404(policy_id))


@bp.route("/patch-management/enforcement/<int:policy_id>", methods=["POST"])
@requires(Role.Manager)
def update(policy_id):
    policy = _policy_or_404(policy_id)
    data = _form_data()
    try:
        service.update_policy(policy, data, actor=current_actor(), source=current_source())
    except PolicyError as exc:
        db.session.rollback()
        return _render_form(_policy_or_404(policy_id), data, _errors(exc), 422)
    db.session.commit()
    flash("Enforcement policy saved.")
    return redirect_after_change(url_for("enforcement.edit", policy_id=policy_id))


@bp.route("/patch-management/enforcement/<int:policy_id>/delete", methods=["POST"])
@requires(Role.Manager)
def delete(policy_id):
    policy = _policy_or_404(policy_id)
    name = policy.name
    service.delete_policy(policy, actor=current_actor(), source=current_source())
    db.session.commit()
    flash(f"Enforcement policy {name} deleted; its declaration leaves the devices on their next sync.")
    return redirect_after_change(url_for("enforcement.index"))


@bp.route("/patch-management/enforcement/<int:policy_id>/bindings", methods=["POST"])
@requires(Role.Manager)
def bind(policy_id):
    policy = _policy_or_404(policy_id)
    devices = [d.strip() for d in request.form.get("device", "").split(",") if d.strip()]
    groups = [g for g in request.form.getlist("group") if g]
    try:
        created = service.bind_policy(policy, devices=devices, groups=groups, actor=current_actor(),
                                      source=current_source())
    except PolicyError as exc:
        db.session.rollback()
        return _render_form(_policy_or_404(policy_id), None, _errors(exc), 422)
    db.session.commit()
    flash(f"{len(created)} binding(s) added.")
    return redirect_after_change(url_for("enforcement.edit", policy_id=policy_id))


@bp.route("/patch-management/enforcement/<int:policy_id>/bindings/<kind>/<int:target_id>/delete",
          methods=["POST"])
@requires(Role.Manager)
def unbind(policy_id, kind, target_id):
    policy = _policy_or_404(policy_id)
    if kind not in ("device", "group"):
        abort(404)
    args = {"devices": [target_id]} if kind == "device" else {"groups": [str(target_id)]}
    try:
        service.unbind_policy(policy, actor=current_actor(), source=current_source(), **args)
    except PolicyError as exc:
        db.session.rollback()
        return _render_form(_policy_or_404(policy_id), None, _errors(exc), 422)
    db.session.commit()
    flash("Binding removed.")
    return redirect_after_change(url_for("enforcement.edit", policy_id=policy_id))
