"""Who acts, for the audit log: the signed-in administrator, or the API token (set on ``g.actor`` by
the guard, mdm/accounts/guard.py), and the address the request came from. The UI, the API and any
service that audits a request's change ask here."""
from __future__ import annotations

from flask import g, request
from flask_login import current_user


def current_actor() -> str:
    """Who is acting, for the audit log: the admin's username or "api:<token name>"."""
    if getattr(g, "actor", None):
        return g.actor
    if current_user and current_user.is_authenticated:
        return current_user.username
    return "anonymous"


def current_source() -> str | None:
    return request.remote_addr
