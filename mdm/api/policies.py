"""Patch policies: create, read, update, delete, bind, load defaults, results. Validation and error
messages are the DDM service's, exactly as in the form: each error is ``{"field": <setting id>,
"message": <a sentence in the form's words>}`` and ``error`` joins the messages."""
from __future__ import annotations

from flask import jsonify, request

from ..accounts import Role
from ..accounts.access import api_error, requires
from ..accounts.actor import current_actor, current_source
from ..ddm import policies as ddm_policies
from ..ddm.models import PatchPolicy
from ..ddm.results import results_for_policy
from ..ddm.rings import load_default_rings
from ..extensions import db
from .blueprint import bp


def _policy_error(exc, status: int = 400):
    errors = [{"field": e.field, "message": e.message} for e in exc.errors]
    if any("already exists" in e.message for e in exc.errors):
        status = 409
    return api_error(status, " ".join(_sentence(e.message) for e in exc.errors), errors=errors)


def _sentence(message: str) -> str:
    return message if message.endswith(".") else message + "."


def _find(policy_id: int):
    return db.session.get(PatchPolicy, policy_id)


def _body() -> dict | None:
    body = request.get_json(silent=True)
    return body if isinstance(body, dict) else None


@bp.get("/policies")
@requires(Role.ReadOnly)
def list_policies():
    p = ddm_policies
    return jsonify({"policies": [p.policy_summary(x) for x in p.list_policies()]})


@bp.post("/policies")
@requires(Role.Manager)
def create_policy():
    p, body = ddm_policies, _body()
    if body is None:
        return api_error(400, "send the policy fields as a JSON object")
    body = dict(body)
    platform = body.pop("platform", "iOS")
    if platform != "iOS":
        return api_error(400, f"Only iOS & iPadOS patch policies (platform \"iOS\") are available, got {platform!r}",
                         errors=[{"field": "platform", "message": "Only iOS & iPadOS patch policies are available"}])
    try:
        policy = p.create_policy(body, actor=current_actor(), source=current_source())
    except p.PolicyError as exc:
        db.session.rollback()
        return _policy_error(exc)
    return jsonify(p.policy_summary(policy)), 201


@bp.get("/policies/<int:policy_id>")
@requires(Role.ReadOnly)
def get_policy(policy_id):
    policy = _find(policy_id)
    if policy is None:
        return api_error(404, f"no patch policy {policy_id}")
    return jsonify(ddm_policies.policy_summary(policy))


@bp.patch("/policies/<int:policy_id>")
@requires(Role.Manager)
def update_policy(policy_id):
    p, body = ddm_policies, _body()
    policy = _find(policy_id)
    if policy is None:
        return api_error(404, f"no patch policy {policy_id}")
    if body is None:
        return api_error(400, "send the fields to change as a JSON object")
    try:
        p.update_policy(policy, body, actor=current_actor(), source=current_source())
    except p.PolicyError as exc:
        db.session.rollback()
        return _policy_error(exc)
    return jsonify(p.policy_summary(policy))


@bp.delete("/policies/<int:policy_id>")
@requires(Role.Manager)
def delete_policy(policy_id):
    policy = _find(policy_id)
    if policy is None:
        return api_error(404, f"no patch policy {policy_id}")
    ddm_policies.delete_policy(policy, actor=current_actor(), source=current_source())
    return "", 204


def _targets(body) -> tuple[list, list] | None:
    devices, groups = body.get("devices", []), body.get("groups", [])
    if not isinstance(devices, list) or not isinstance(groups, list):
        return None
    return devices, groups


@bp.post("/policies/<int:policy_id>/bindings")
@requires(Role.Manager)
def bind_policy(policy_id):
    """{"devices": [id | UDID | serial, ...], "groups": [id | name, ...]}"""
    return _change_bindings(policy_id, "bind_policy", lambda created: {"created": len(created)})


@bp.delete("/policies/<int:policy_id>/bindings")
@requires(Role.Manager)
def unbind_policy(policy_id):
    return _change_bindings(policy_id, "unbind_policy", lambda removed: {"removed": removed})


def _change_bindings(policy_id: int, service_name: str, summarise):
    """Bind or unbind (the policies service function ``service_name``) the devices and groups in the body."""
    p, body = ddm_policies, _body()
    policy = _find(policy_id)
    if policy is None:
        return api_error(404, f"no patch policy {policy_id}")
    targets = _targets(body) if body is not None else None
    if targets is None:
        return api_error(400, "send {\"devices\": [...], \"groups\": [...]}")
    try:
        outcome = getattr(p, service_name)(policy, devices=targets[0], groups=targets[1], actor=current_actor(),
                                           source=current_source())
    except p.PolicyError as exc:
        db.session.rollback()
        return _policy_error(exc)
    return jsonify({**summarise(outcome), **p.policy_summary(policy)})


@bp.post("/policies/load-defaults")
@requires(Role.Manager)
def load_defaults():
    results = load_default_rings(actor=current_actor(), source=current_source())
    return jsonify({"rings": [r.as_dict() for r in results],
                    "created": any(r.created_group or r.created_policy for r in results)})


@bp.get("/policies/<int:policy_id>/results")
@requires(Role.ReadOnly)
def policy_results(policy_id):
    if _find(policy_id) is None:
        return api_error(404, f"no patch policy {policy_id}")
    with_history = request.args.get("history") in ("1", "true", "yes")
    return jsonify({"policy_id": policy_id,
                    "results": [r.as_dict() for r in results_for_policy(policy_id, with_history=with_history)]})
