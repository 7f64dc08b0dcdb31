"""Who may call which route: the declarations the one guard (mdm/accounts/guard.py) reads.

Three kinds of route:
- device-facing protocol routes (DEVICE_FACING_PREFIXES): no admin login and no CSRF check; they
  authenticate devices themselves (CMS signatures, SCEP challenges, enrollment tokens) and must never
  answer 401 (a 401 makes a device remove its management profile);
- the JSON API (/api/…): a bearer token with a role, no cookies, hence no CSRF;
- everything else: an administrator session, a CSRF token on every state-changing request, and the
  minimum role the view declares with ``@requires(Role.X)``. A view that declares nothing is
  Administrator-only, so a forgotten declaration fails closed.
"""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import current_app, jsonify, request

from .models import Role

# Device-facing protocol routes (MDM check-in and commands incl. DDM, SCEP, enrollment profile, CA).
DEVICE_FACING_PREFIXES = ("/mdm", "/scep", "/enroll", "/ca.pem")
API_PREFIX = "/api/"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def is_device_facing(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in DEVICE_FACING_PREFIXES)


def is_api(path: str) -> bool:
    return path.startswith(API_PREFIX)


def requires(role: Role):
    """Declare the minimum role of a view (checked by ``guard`` before the view runs)."""
    def mark(view):
        view.required_role = role
        return view
    return mark


def public(view):
    """A view anyone may call (login page, static files, the OpenAPI description)."""
    view.is_public = True
    return view


def required_role_for(endpoint: str | None) -> Role | str:
    """"device", "public", or the minimum Role for an endpoint; used by the guard and by the docs."""
    view = current_app.view_functions.get(endpoint) if endpoint else None
    if endpoint == "static" or getattr(view, "is_public", False):
        return "public"
    return getattr(view, "required_role", Role.Administrator)


def is_htmx() -> bool:
    return request.headers.get("HX-Request") == "true"


def safe_next(target: str | None, default: str = "/") -> str:
    """Only a same-site path may be a post-login redirect (no scheme, no host, no '//' or '\\' tricks)."""
    if not target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


def api_error(status: int, message: str, **extra):
    body = {"error": message}
    body.update(extra)
    return jsonify(body), status
