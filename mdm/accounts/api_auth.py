"""Bearer-token authentication for /api/v1 (called by the one access guard in mdm/accounts/guard.py).

Tokens carry a role like administrators do. No cookies are read here, so the API needs no CSRF token.
A token is refused (401) when unknown, revoked, or owned by an account that is disabled
(mdm/accounts/models.py); admin sessions ending (logout, password or role change) does not affect tokens."""
from __future__ import annotations

from datetime import timedelta

from flask import current_app, g, request

from ..extensions import db
from ..models import utcnow
from .access import api_error, required_role_for
from .models import token_for_secret

# last_used_at is written at most this often per token, so reads stay reads.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def authenticate_api_request():
    if request.endpoint is None:
        return api_error(404, f"no API route {request.method} {request.path}")
    need = required_role_for(request.endpoint)
    if need == "public":
        return None
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        response, status = api_error(401, "send an API token: Authorization: Bearer <token>")
        response.headers["WWW-Authenticate"] = 'Bearer realm="mdm"'
        return response, status
    token, refused = token_for_secret(header[len("Bearer "):].strip())
    if token is None:
        current_app.logger.info("API request refused from %s: %s", request.remote_addr, refused)
        response, status = api_error(401, refused)
        response.headers["WWW-Authenticate"] = 'Bearer realm="mdm", error="invalid_token"'
        return response, status
    g.api_token = token
    g.actor = token.actor
    if token.role_enum < need:
        return api_error(403, f"this needs the {need.name} role or higher; the token has {token.role}",
                         required_role=need.name)
    now = utcnow()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        token.last_used_at = now
        db.session.commit()
    return None
