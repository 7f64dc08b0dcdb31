"""Software Update Enforcement policies under /api/v1/enforcement-policies: one specific iOS/iPadOS
version by a set date and device-local time. Same service, validation and messages as the CLI and the
form (``mdm/ddm/enforcement.py``); errors are ``{"error": ..., "errors": [{"field", "message"}]}``.
Roles as for patch policies: ReadOnly reads, Manager changes. This module is an edge: it commits."""
from __future__ import annotations

from flask import jsonify

from ..accounts import Role
from ..accounts.access import api_error, requires
from ..accounts.actor import current_actor, current_source
from ..ddm import enforcement as service
from ..ddm.enforcement_models import EnforcementPolicy
from ..ddm.policies import PolicyError
from ..extensions import db
from .blueprint import bp
from .policies import _body, _policy_error, _targets


def _find(policy_id: int):
    return db.session.get(EnforcementPolicy, policy_id)


def _missing(policy_id: int):
    return api_error(404, f"no enforcement policy {policy_id}")


@bp.get("/enforcement-policies")
@requires(Role.ReadOnly)
def list_enforcement_policies():
    """List Software Update Enforcement policies."""
    return jsonify({"policies": [service.policy_summary(p) for p in service.list_policies()]})


@bp.post("/enforcement-policies")
@requires(Role.Manager)
def create_enforcement_policy():
    """Create an enforcement policy: name, target_version, [target_build], enforce_at, [details_url]."""
    body = _body()
    if body is None:
        return api_error(400, "send the policy fields as a JSON object")
    try:
        policy = service.create_policy(body, actor=current_actor(), source=current_source())
    except PolicyError as exc:
        db.session.rollback()
        return _policy_error(exc)
    db.session.commit()
    return jsonify(service.policy_summary(policy)), 201


@bp.get("/enforcement-policies/<int:policy_id>")
@requires(Role.ReadOnly)
def get_enforcement_policy(policy_id):
    """One enforcement policy with its bindings and per-model catalog warnings."""
    policy = _find(policy_id)
    return _missing(policy_id) if policy is None else jsonify(service.policy_summary(policy))


@bp.patch("/enforcement-policies/<int:policy_id>")
@requires(Role.Manager)
def update_enforcement_policy(policy_id):
    """Change some fields of an enforcement policy."""
    policy, body = _find(policy_id), _body()
    if policy is None:
        return _missing(policy_id)
    if body is None:
        return api_error(400, "send the fields to change as a JSON object")
    try:
        service.update_policy(policy, body, actor=current_actor(), source=current_source())
    except PolicyError as exc:
        db.session.rollback()
        return _policy_error(exc)
    db.session.commit()
    return jsonify(service.policy_summary(policy))


@bp.delete("/enforcement-policies/<int:policy_id>")
@requires(Role.Manager)
def delete_enforcement_policy(policy_id):
    """Delete an enforcement policy; its declaration leaves every device on their next sync."""
    policy = _find(policy_id)
    if policy is None:
        return _missing(policy_id)
    service.delete_policy(policy, actor=current_actor(), source=current_source())
    db.session.commit()
    return "", 204


@bp.post("/enforcement-policies/<int:policy_id>/bindings")
@requires(Role.Manager)
def bind_enforcement_policy(policy_id):
    """Bind to {"devices": [id | UDID | serial], "groups": [id | name]}."""
    return _change_bindings(policy_id, service.bind_policy, lambda created: {"created": len(created)})


@bp.delete("/enforcement-policies/<int:policy_id>/bindings")
@requires(Role.Manager)
def unbind_enforcement_policy(policy_id):
    """Remove bindings {"devices": [...], "groups": [...]}."""
    return _change_bindings(policy_id, service.unbind_policy, lambda removed: {"removed": removed})


def _change_bindings(policy_id: int, change, summarise):
    policy, body = _find(policy_id), _body()
    if policy is None:
        return _missing(policy_id)
    targets = _targets(body) if body is not None else None
    if targets is None:
        return api_error(400, "send {\"devices\": [...], \"groups\": [...]}")
    try:
        outcome = change(policy, devices=targets[0], groups=targets[1], actor=current_actor(),
                         source=current_source())
    except PolicyError as exc:
        db.session.rollback()
        return _policy_error(exc)
    db.session.commit()
    return jsonify({**summarise(outcome), **service.policy_summary(policy)})


@bp.get("/enforcement-policies/<int:policy_id>/results")
@requires(Role.ReadOnly)
def enforcement_policy_results(policy_id):
    """Per-device results, with which enforcement each device acts on first when it holds several."""
    policy = _find(policy_id)
    if policy is None:
        return _missing(policy_id)
    rows = service.results_for_policy(policy)
    db.session.commit()
    return jsonify({"policy_id": policy_id, "results": [r.as_dict() for r in rows]})


@bp.get("/enforcement-policies/<int:policy_id>/preview")
@requires(Role.ReadOnly)
def enforcement_policy_preview(policy_id):
    """What the policy sends to each device it reaches, and which enforcement acts first."""
    policy = _find(policy_id)
    return _missing(policy_id) if policy is None else jsonify(service.preview(policy))
