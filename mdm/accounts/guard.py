"""The one access guard: a before_request hook for every request the app serves (rules in
mdm/accounts/access.py). Device-facing routes pass untouched; /api/ goes to bearer-token
authentication (mdm/accounts/api_auth.py); everything else needs an administrator session, a CSRF
token on state-changing requests, and the role the view declares. The admin UI's login page and
forbidden templates are named by endpoint and template path only: this room imports no UI module."""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import current_app, g, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf.csrf import CSRFProtect

from .access import SAFE_METHODS, is_api, is_device_facing, is_htmx, required_role_for, safe_next
from .api_auth import authenticate_api_request
from .models import Role

csrf = CSRFProtect()


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


def init_access(app) -> None:
    # CSRF is checked by ``guard`` (after the login check), never by CSRFProtect's own hook, so
    # device-facing and token-authenticated API routes are exempt in exactly one place.
    app.config.setdefault("WTF_CSRF_CHECK_DEFAULT", False)
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)  # the token lives as long as the session
    csrf.init_app(app)
    app.before_request(guard)
