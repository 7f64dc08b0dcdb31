"""Who may call which route: the one place that decides, for every request the app serves.

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

from flask import current_app, g, jsonify, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf.csrf import CSRFProtect

from ..accounts import Role

# Device-facing protocol routes (MDM check-in and commands incl. DDM, SCEP, enrollment profile, CA).
DEVICE_FACING_PREFIXES = ("/mdm", "/scep", "/enroll", "/ca.pem")
API_PREFIX = "/api/"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

csrf = CSRFProtect()


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


def _login_redirect():
    if is_htmx():
        # An HTMX fragment must not swap a login form into the page: send the whole page there.
        current = urlsplit(request.headers.get("HX-Current-URL", ""))
        back = safe_next(current.path + (f"?{current.query}" if current.query else ""), "/")
        response = current_app.response_class("", status=401)
        response.headers["HX-Redirect"] = url_for("auth.login", next=back)
        return response
    back = request.full_path if request.query_string else request.path
    return redirect(url_for("auth.login", next=safe_next(back)))


def _forbidden(role: Role):
    message = f"This needs the {role.label} role or higher."
    if is_htmx():
        return render_template("ui/_forbidden.html", message=message), 403
    return render_template("ui/forbidden.html", message=message), 403


def guard():
    """before_request for the whole app."""
    path = request.path
    if is_device_facing(path):
        return None
    if is_api(path):
        from ..api.auth import authenticate_api_request
        return authenticate_api_request()
    if request.endpoint is None:
        return None  # 404 / 405 as Flask answers them
    need = required_role_for(request.endpoint)
    if need != "public" and not current_user.is_authenticated:
        return _login_redirect()
    if request.method not in SAFE_METHODS:
        csrf.protect()
    if need == "public":
        return None
    g.actor = current_user.username
    if not current_user.has_role(need):
        current_app.logger.info("denied %s %s to %s (%s)", request.method, path, current_user.username,
                                current_user.role)
        return _forbidden(need)
    return None


def api_error(status: int, message: str, **extra):
    body = {"error": message}
    body.update(extra)
    return jsonify(body), status


def init_access(app) -> None:
    # CSRF is checked by ``guard`` (after the login check), never by CSRFProtect's own hook, so
    # device-facing and token-authenticated API routes are exempt in exactly one place.
    app.config.setdefault("WTF_CSRF_CHECK_DEFAULT", False)
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)  # the token lives as long as the session
    csrf.init_app(app)
    app.before_request(guard)


def redirect_after_change(url: str):
    """After a change: a 303 for plain forms; for HTMX a whole-page HX-Redirect (an XHR would follow a
    303 silently and swap the next page into a fragment)."""
    if is_htmx():
        response = current_app.response_class("", status=200)
        response.headers["HX-Redirect"] = url
        return response
    return redirect(url, code=303)
