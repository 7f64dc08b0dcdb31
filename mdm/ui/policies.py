"""Device Management › Policy Management › Patch Management: patch policies, their form, bindings,
results, and the policy groups (deployment rings). All changes go through the DDM room's services."""
from __future__ import annotations

from types import SimpleNamespace

from flask import Blueprint, abort, flash, render_template, request, url_for
from flask_login import current_user

from ..accounts import Role
from ..accounts.access import requires
from ..accounts.actor import current_actor, current_source
from ..ddm import policies as ddm_policies
from ..ddm.models import PatchPolicy
from ..ddm.results import results_for_policy
from ..ddm.rings import get_ring, list_rings, load_default_rings
from ..devices.query import DeviceFilters, device_page
from ..extensions import db
from ..models import Device, DeviceGroup
from .policy_form import (ACTION_CHOICES, ANCHOR_CHOICES, BETA_CHOICES, CADENCE_CHOICES, FIELD_LABELS,
                          MACOS_ONLY_SETTINGS, errors_by_field, form_to_data, platform_label)
from .policy_preview import preview_for
from .policy_stats import compliance_by_policy, scope_by_policy
from .responses import redirect_after_change

bp = Blueprint("policies", __name__)

# (key in URLs and the database, what the UI calls it, available). iPhone and iPad are one platform:
# Apple's declarations treat iPadOS as iOS, so one policy covers both.
PLATFORMS = (("iOS", "iOS & iPadOS", True), ("macOS", "macOS", False), ("tvOS", "tvOS", False),
             ("watchOS", "watchOS", False), ("visionOS", "visionOS", False))


def _policy_or_404(policy_id: int):
    policy = db.session.get(PatchPolicy, policy_id)
    if policy is None:
        abort(404)
    return policy


def _form_context(policy=None, settings=None, errors=None, **extra) -> dict:
    return {"policy": policy, "s": settings, "errors": errors or {}, "labels": FIELD_LABELS,
            "action_choices": ACTION_CHOICES, "beta_choices": BETA_CHOICES, "cadence_choices": CADENCE_CHOICES,
            "anchor_choices": ANCHOR_CHOICES,
            "programs": [tuple(p) for p in (settings.beta_programs if settings else ())],
            "platform_label": platform_label(policy.platform if policy else "iOS"),
            "macos_only": MACOS_ONLY_SETTINGS,
            "editable": current_user.has_role(Role.Manager), **extra}


@bp.route("/patch-management")
@requires(Role.ReadOnly)
def index():
    platform = request.args.get("platform", "iOS")
    platform = "iOS" if platform == "iPadOS" else platform   # one platform in the UI
    policies = ddm_policies.list_policies()
    return render_template("ui/policies/index.html", platform=platform, platforms=PLATFORMS,
                           platform_label=platform_label(platform),
                           policies=[p for p in policies if p.platform == platform],
                           any_policy=bool(policies), any_group=bool(list_rings()),
                           scope=scope_by_policy(), compliance=compliance_by_policy())


@bp.route("/patch-management/new")
@requires(Role.Manager)
def choose_platform():
    return render_template("ui/policies/choose.html", platforms=PLATFORMS)


@bp.route("/patch-management/new/<platform>")
@requires(Role.Manager)
def new(platform):
    if platform != "iOS":
        return render_template("ui/policies/choose.html", platforms=PLATFORMS,
                               error=f"{platform_label(platform)} patch policies are not available yet."), 404
    settings = ddm_policies.PolicySettings(name=ddm_policies.default_policy_name())
    return render_template("ui/policies/form.html", **_form_context(None, settings, tab="settings",
                                                                     preview_devices=_preview_candidates(None)))


@bp.route("/patch-management", methods=["POST"])
@requires(Role.Manager)
def create():
    data = form_to_data(request.form)
    try:
        policy = ddm_policies.create_policy(data, actor=current_actor(), source=current_source())
    except ddm_policies.PolicyError as exc:
        db.session.rollback()
        return _invalid_form(None, data, exc.errors)
    flash(f"Policy {policy.name} saved. Bind devices or device groups to apply it.")
    return redirect_after_change(url_for("policies.edit", policy_id=policy.id, tab="groups"))


def _invalid_form(policy, data, errors):
    """Re-show the form with what the admin typed and the errors next to their fields."""
    base = ddm_policies.settings_of(policy) if policy else ddm_policies.PolicySettings(name=data.get("name") or "")
    shown = _settings_as_typed(base, data)
    return render_template("ui/policies/form.html",
                           **_form_context(policy, shown, errors_by_field(errors), tab="settings",
                                           preview_devices=_preview_candidates(policy))), 422


def _settings_as_typed(base, data):
    """The form values as typed (strings included), for redisplay only: a simple namespace."""
    values = {k: getattr(base, k) for k in FIELD_LABELS}
    for key, value in data.items():
        if key == "beta_programs":
            values[key] = tuple(tuple(p) if isinstance(p, list) else (p, "") for p in value)
        elif key in ("enforce", "rsr_offer", "rsr_rollback", "notifications_all", "stay_on_major"):
            values[key] = str(value).lower() in ("true", "1", "on", "yes")
        else:
            values[key] = value
    return SimpleNamespace(**values)


@bp.route("/patch-management/validate", methods=["POST"])
@requires(Role.Manager)
def validate():
    """Inline validation as the admin types: out-of-band swaps of every field's error slot."""
    policy_id = request.form.get("policy_id", type=int)
    base = None
    if policy_id:
        base = ddm_policies.settings_of(_policy_or_404(policy_id))
    data = form_to_data(request.form)
    _settings, errors = ddm_policies.validate_settings(data, base=base, exclude_policy_id=policy_id, platform="iOS")
    return render_template("ui/policies/_errors_oob.html", errors=errors_by_field(errors), labels=FIELD_LABELS)


@bp.route("/patch-management/<int:policy_id>")
@requires(Role.ReadOnly)
def edit(policy_id):
    policy = _policy_or_404(policy_id)
    tab = request.args.get("tab", "settings")
    context = _form_context(policy, ddm_policies.settings_of(policy), tab=tab)
    if tab == "devices":
        filters = DeviceFilters.from_args(request.args)
        filters.platform = filters.platform or ""
        context["page"] = device_page(filters) if filters.q else None
        context["filters"] = filters
    if tab == "groups":
        context["groups"] = DeviceGroup.query.order_by(DeviceGroup.name).all()
    if tab == "results":
        context["results"] = results_for_policy(policy.id, with_history=False)
    context["preview_devices"] = _preview_candidates(policy)
    return render_template("ui/policies/form.html", **context)


def _preview_candidates(policy, limit: int = 200):
    """Devices to preview with: those the policy reaches first, then other iOS devices."""
    reached = sorted(ddm_policies.devices_reached(policy.id))[:limit] if policy else []
    devices = Device.query.filter(Device.id.in_(reached)).order_by(Device.device_name).all() if reached else []
    if len(devices) < limit:
        more = (Device.query.filter(Device.product_name.like("iP%"), Device.id.notin_(reached or [0]))
                .order_by(Device.device_name).limit(limit - len(devices)).all())
        devices += more
    return devices


@bp.route("/patch-management/<int:policy_id>", methods=["POST"])
@requires(Role.Manager)
def update(policy_id):
    policy = _policy_or_404(policy_id)
    data = form_to_data(request.form)
    try:
        ddm_policies.update_policy(policy, data, actor=current_actor(), source=current_source())
    except ddm_policies.PolicyError as exc:
        db.session.rollback()
        return _invalid_form(policy, data, exc.errors)
    flash(f"Policy {policy.name} saved.")
    return redirect_after_change(url_for("policies.edit", policy_id=policy.id))


@bp.route("/patch-management/<int:policy_id>", methods=["DELETE"])
@requires(Role.Manager)
def delete(policy_id):
    policy = _policy_or_404(policy_id)
    name = policy.name
    ddm_policies.delete_policy(policy, actor=current_actor(), source=current_source())
    flash(f"Policy {name} deleted; its declarations leave the devices on their next sync.")
    return redirect_after_change(url_for("policies.index"))


@bp.route("/patch-management/<int:policy_id>/bindings", methods=["POST"])
@requires(Role.Manager)
def bind(policy_id):
    policy = _policy_or_404(policy_id)
    device_ids = [int(i) for i in request.form.getlist("device_id") if i.isdigit()]
    group_ids = [int(i) for i in request.form.getlist("group_id") if i.isdigit()]
    tab = "devices" if device_ids else "groups"
    try:
        created = ddm_policies.bind_policy(policy, devices=device_ids, groups=group_ids, actor=current_actor(),
                                       source=current_source())
    except ddm_policies.PolicyError as exc:
        db.session.rollback()
        flash(f"Not bound: {exc}")
    else:
        flash(f"Bound {len(created)} new target(s).")
    return redirect_after_change(url_for("policies.edit", policy_id=policy.id, tab=tab))


@bp.route("/patch-management/<int:policy_id>/bindings/<kind>/<int:target_id>", methods=["DELETE"])
@requires(Role.Manager)
def unbind(policy_id, kind, target_id):
    policy = _policy_or_404(policy_id)
    if kind not in ("device", "group"):
        abort(404)
    try:
        ddm_policies.unbind_policy(policy, devices=[target_id] if kind == "device" else [],
                               groups=[target_id] if kind == "group" else [], actor=current_actor(),
                               source=current_source())
    except ddm_policies.PolicyError as exc:
        db.session.rollback()
        flash(f"Not unbound: {exc}")
    return redirect_after_change(url_for("policies.edit", policy_id=policy.id, tab="devices" if kind == "device" else "groups"))


@bp.route("/patch-management/preview", methods=["POST"])
@requires(Role.ReadOnly)
def preview():
    """What a chosen device would receive under the settings in the form (saved or not)."""
    device = db.session.get(Device, request.form.get("preview_device_id", type=int) or 0)
    if device is None:
        return render_template("ui/policies/_preview.html", error="Choose a device to preview."), 422
    policy_id = request.form.get("policy_id", type=int)
    policy = _policy_or_404(policy_id) if policy_id else None
    base = ddm_policies.settings_of(policy) if policy else None
    settings, errors = ddm_policies.validate_settings(form_to_data(request.form), base=base,
                                                  exclude_policy_id=policy_id, platform="iOS")
    if errors:
        return render_template("ui/policies/_preview.html", device=device,
                               error="Fix the highlighted fields first: " + " ".join(_sentence(e.message)
                                                                                     for e in errors)), 422
    result = preview_for(device, settings, policy)
    if not current_user.has_role(Role.Manager):
        _redact_beta_tokens(result.declarations)
    return render_template("ui/policies/_preview.html", device=device, preview=result)


def _sentence(message: str) -> str:
    return message if message.endswith(".") else message + "."


def _redact_beta_tokens(declarations) -> None:
    """Seeding-service tokens are for the people who may edit the policy."""
    for d in declarations:
        for program in (d.get("Payload", {}).get("Beta", {}).get("OfferPrograms") or []):
            program["Token"] = "***"


@bp.route("/patch-management/load-defaults", methods=["POST"])
@requires(Role.Manager)
def load_defaults():
    outcome = load_default_rings(actor=current_actor(), source=current_source())
    flash(_describe_load(outcome))
    return redirect_after_change(url_for("policies.index"))


def _describe_load(results) -> str:
    groups = sum(1 for r in results if r.created_group)
    policies = sum(1 for r in results if r.created_policy)
    if groups or policies:
        return f"Loaded the default rings: {groups} policy group(s) and {policies} policy(ies) created."
    return "The default policies and policy groups already exist; nothing was created."


@bp.route("/policy-groups")
@requires(Role.ReadOnly)
def policy_groups():
    rings = list_rings()
    return render_template("ui/policies/groups.html", rings=rings, compliance=compliance_by_policy(),
                           scope=scope_by_policy(), device_groups=DeviceGroup.query.order_by(DeviceGroup.name).all())


@bp.route("/policy-groups/<int:ring_id>/bindings", methods=["POST"])
@requires(Role.Manager)
def bind_ring(ring_id):
    """Bind a device group to every policy of a policy group (ring)."""
    ring = get_ring(ring_id)
    if ring is None:
        abort(404)
    group_id = request.form.get("group_id", type=int)
    try:
        for policy in list(ring.policies):
            ddm_policies.bind_policy(policy, groups=[group_id] if group_id else [], actor=current_actor(),
                                 source=current_source())
    except ddm_policies.PolicyError as exc:
        db.session.rollback()
        flash(f"Not bound: {exc}")
    else:
        flash(f"Bound to the policies of {ring.name}.")
    return redirect_after_change(url_for("policies.policy_groups"))
