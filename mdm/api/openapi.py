"""The OpenAPI 3.1 description of /api/v1, generated from the registered routes (so it cannot drift
from them) plus the request bodies below. Served at /api/v1/openapi.json without a token."""
from __future__ import annotations

import re

from flask import current_app, jsonify

from ..accounts import ROLE_NAMES
from ..accounts.access import public, required_role_for
from .blueprint import bp

POLICY_FIELDS = {
    "name": {"type": "string"}, "deferral_days": {"type": "integer", "minimum": 0, "maximum": 90},
    "enforce": {"type": "boolean"}, "grace_days": {"type": "integer", "minimum": 0, "maximum": 365},
    "local_time": {"type": ["string", "null"], "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"},
    "details_url": {"type": ["string", "null"], "pattern": "^https?://"},
    "notifications_all": {"type": "boolean"}, "cadence": {"enum": ["All", "Oldest", "Newest"]},
    "auto_download": {"enum": ["Allowed", "AlwaysOn", "AlwaysOff"]},
    "auto_install_os": {"enum": ["Allowed", "AlwaysOn", "AlwaysOff"]},
    "auto_install_security": {"enum": ["Allowed", "AlwaysOn", "AlwaysOff"]},
    "rsr_offer": {"type": "boolean"}, "rsr_rollback": {"type": "boolean"},
    "beta_enrollment": {"enum": ["Allowed", "AlwaysOn", "AlwaysOff"]},
    "beta_programs": {"type": "array", "items": {"type": "array", "items": {"type": "string"},
                                                 "minItems": 2, "maxItems": 2}},
    "stay_on_major": {"type": "boolean"},
    "deadline_anchor": {"enum": ["first_missed", "newest"],
                        "description": "first_missed (default for new policies): the deadline counts from the "
                                       "first release a device missed; newest: it restarts with each release"},
    "exploited_grace_days": {"type": ["integer", "null"], "minimum": 0, "maximum": 365,
                             "description": "Grace period (at most grace_days) when a missed release fixes an "
                                            "actively exploited vulnerability (SOFA feed); null = off"},
}
ENFORCEMENT_FIELDS = {
    "name": {"type": "string"},
    "target_version": {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+){0,2}$",
                       "description": "listed in Apple's catalog for at least one model in scope"},
    "target_build": {"type": ["string", "null"]},
    "enforce_at": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}$",
                   "description": "device-local date and time, in the future"},
    "details_url": {"type": ["string", "null"], "pattern": "^https?://"},
}
TARGETS = {"type": "object", "properties": {
    "devices": {"type": "array", "items": {"type": ["integer", "string"]}, "description": "id, UDID or serial"},
    "groups": {"type": "array", "items": {"type": ["integer", "string"]}, "description": "id or name"}}}
BODIES = {
    "api.create_policy": {"type": "object", "properties": POLICY_FIELDS,
                          "description": "Omitted fields take Apple's defaults; invalid automatic-action "
                                         "combinations are refused with the reason."},
    "api.update_policy": {"type": "object", "properties": POLICY_FIELDS},
    "api.bind_policy": TARGETS, "api.unbind_policy": TARGETS,
    "api.create_enforcement_policy": {"type": "object", "properties": ENFORCEMENT_FIELDS,
                                      "required": ["name", "target_version", "enforce_at"]},
    "api.update_enforcement_policy": {"type": "object", "properties": ENFORCEMENT_FIELDS},
    "api.bind_enforcement_policy": TARGETS, "api.unbind_enforcement_policy": TARGETS,
    "api.create_group": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"},
                                                                          "description": {"type": "string"}}},
    "api.update_group": {"type": "object", "properties": {"name": {"type": "string"}, "description": {"type": "string"}}},
    "api.add_group_members": {"type": "object", "required": ["device_ids"],
                "properties": {"device_ids": {"type": "array", "items": {"type": "integer"}}}},
    "api.queue_command": {"type": "object", "required": ["request_type"],
                          "properties": {"request_type": {"type": "string"}}},
}
DEVICE_FILTERS = ("q", "os", "model", "platform", "supervised", "group", "patch", "policy", "seen", "status",
                  "deadline", "sort", "page", "per_page")


def build_spec() -> dict:
    paths: dict = {}
    for rule in current_app.url_map.iter_rules():
        if not rule.endpoint.startswith("api.") or rule.endpoint == "api.openapi":
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        view = current_app.view_functions[rule.endpoint]
        role = required_role_for(rule.endpoint)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            doc = (view.__doc__ or "").strip()
            op = {"operationId": rule.endpoint.split(".", 1)[1] + ("" if method == "GET" else f"_{method.lower()}"),
                  "summary": doc.splitlines()[0] if doc else view.__name__.replace("_", " "),
                  "x-required-role": role.name,
                  "description": f"Needs a token with the {role.name} role or higher.",
                  "parameters": [{"name": arg, "in": "path", "required": True,
                                  "schema": {"type": "integer" if rule._converters[arg].__class__.__name__ ==
                                             "IntegerConverter" else "string"}} for arg in rule.arguments],
                  "responses": {"200": {"description": "OK"}, "401": {"description": "no or unknown token"},
                                "403": {"description": "the token's role is too low"},
                                "404": {"description": "not found"}}}
            if rule.endpoint == "api.list_devices":
                op["parameters"] += [{"name": n, "in": "query", "schema": {"type": "string"}} for n in DEVICE_FILTERS]
            if method in ("POST", "PATCH", "DELETE") and rule.endpoint in BODIES:
                op["requestBody"] = {"required": True,
                                     "content": {"application/json": {"schema": BODIES[rule.endpoint]}}}
                op["responses"]["400"] = {"description": "invalid input: {error, errors: [{field, message}]}"}
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "MDM admin API", "version": "1",
                 "description": "Token roles: " + ", ".join(ROLE_NAMES) + " (each may do what the ones before "
                                "it may). Create tokens under Administration › API Tokens or with "
                                "`flask mdm api-token create --role ROLE`."},
        "servers": [{"url": current_app.config["SERVER_URL"] + "/api/v1"}],
        "components": {"securitySchemes": {"token": {"type": "http", "scheme": "bearer"}}},
        "security": [{"token": []}],
        "paths": {p[len("/api/v1"):] or "/": v for p, v in sorted(paths.items())},
    }


@bp.get("/openapi.json")
@public
def openapi():
    return jsonify(build_spec())
