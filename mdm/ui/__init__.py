"""Admin web UI (HTMX): blueprints, session cookies, templating, error pages (styled 404/500 for admin
pages, JSON for the API, device-facing routes untouched: ``error_pages``), first-run account.

Login, CSRF and access rules are the accounts room's (mdm/accounts/: the app factory wires them); the
JSON API (mdm/api/) is a sibling registered by the app factory: neither imports the other."""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from flask import current_app

from ..accounts import AdminUser, Role, create_admin, generate_password
from ..extensions import db
from ..models import audit
from . import (admins, audit_log, auth, dashboard, devices, enforcement, enrollment, groups, policies, settings,
                   static_files)
from .error_pages import init_error_pages
from .templating import init_templating


def init_ui(app) -> None:
    # Flask ships its own defaults for these (insecure for us), so they are set, not defaulted.
    # Secure even when TLS is terminated by a proxy: the browser still talks HTTPS.
    app.config.update(SESSION_COOKIE_SECURE=True, SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
                      SESSION_COOKIE_NAME="mdm_session",
                      PERMANENT_SESSION_LIFETIME=timedelta(hours=float(app.config.get("SESSION_HOURS", 12))))
    app.config.setdefault("REMEMBER_COOKIE_SECURE", True)
    app.config.setdefault("REMEMBER_COOKIE_HTTPONLY", True)
    app.config.setdefault("REMEMBER_COOKIE_SAMESITE", "Lax")

    for module in (auth, static_files, dashboard, devices, groups, policies, enforcement, enrollment, settings,
                   admins, audit_log):
        app.register_blueprint(module.bp)

    init_templating(app)
    init_error_pages(app)
    app.extensions.setdefault("mdm_init_hooks", []).append(ensure_first_admin)


def ensure_first_admin() -> list[str]:
    """Init hook: on first run create an Administrator and print its credentials; afterwards, remind
    the operator where the first password is while that file still exists."""
    path = Path(current_app.instance_path) / "initial-admin-password"
    if AdminUser.query.count() == 0:
        password = generate_password()
        user = create_admin("admin", password, Role.Administrator, created_by="system")
        audit("admin.create", actor="system", object_type="admin", object_id=user.id, after=user.summary(),
              detail="first run")
        db.session.commit()
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"username: admin\npassword: {password}\n")
        os.replace(tmp, path)
        return [f"First administrator: username admin, password {password}",
                f"  (also written to {path}; change it after signing in)"]
    if path.exists():
        first = AdminUser.query.order_by(AdminUser.id).first()
        text = path.read_text()
        password = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                         if line.startswith("password:")), "")
        if first and first.check_password(password):
            return [f"First administrator: username {first.username}, password {password}",
                    f"  (from {path}; change the password to stop printing it)"]
    return []
