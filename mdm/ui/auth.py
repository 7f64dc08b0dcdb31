"""Sign in, sign out, change your own password."""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, current_app, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_user, logout_user

from ..accounts import AccountError, Role, authenticate
from ..extensions import db
from ..models import audit
from . import current_source
from .access import public, requires, safe_next

bp = Blueprint("auth", __name__)

# One message whatever went wrong (unknown user, wrong password, disabled, throttled): it tells an
# attacker nothing about which accounts exist or are locked.
GENERIC_LOGIN_ERROR = "Sign-in failed. Check your username and password, or wait a few minutes and try again."


@bp.route("/login", methods=["GET", "POST"])
@public
def login():
    next_url = safe_next(request.values.get("next"), url_for("dashboard.index"))
    if request.method == "GET":
        if current_user.is_authenticated:
            return redirect(next_url)
        return render_template("ui/login.html", next_url=next_url)
    username = request.form.get("username", "").strip()
    password = request.form.get("password", "")
    user = authenticate(username, password, request.remote_addr)
    if user is None:
        audit("admin.login_failed", actor=username[:255] or "anonymous", source=current_source(),
              object_type="admin")
        db.session.commit()
        current_app.logger.info("failed sign-in for %r from %s", username[:64], request.remote_addr)
        return render_template("ui/login.html", next_url=next_url, error=GENERIC_LOGIN_ERROR,
                               username=username), 401
    session.clear()  # no session fixation: a fresh session (and CSRF token) after sign-in
    session.permanent = True
    login_user(user)
    audit("admin.login", actor=user.username, source=current_source(), object_type="admin", object_id=user.id)
    db.session.commit()
    return redirect(next_url)


@bp.route("/logout", methods=["POST"])
@requires(Role.ReadOnly)
def logout():
    audit("admin.logout", actor=current_user.username, source=current_source(), object_type="admin",
          object_id=current_user.id)
    db.session.commit()
    logout_user()
    session.clear()
    return redirect(url_for("auth.login"))


@bp.route("/account", methods=["GET", "POST"])
@requires(Role.ReadOnly)
def account():
    error = None
    if request.method == "POST":
        if not current_user.check_password(request.form.get("current_password", "")):
            error = "Current password: not correct."
        elif request.form.get("new_password") != request.form.get("confirm_password"):
            error = "New password: the two entries differ."
        else:
            try:
                current_user.set_password(request.form.get("new_password", ""))
            except AccountError as exc:
                error = f"New {exc}."
        if error is None:
            audit("admin.password_change", actor=current_user.username, source=current_source(),
                  object_type="admin", object_id=current_user.id)
            db.session.commit()
            _forget_initial_password(current_user)
            login_user(current_user)  # the session id changed with the password generation
            flash("Password changed.")
            return redirect(url_for("auth.account"))
        db.session.rollback()
    return render_template("ui/account.html", error=error), (422 if error else 200)


def _forget_initial_password(user) -> None:
    path = Path(current_app.instance_path) / "initial-admin-password"
    if path.exists() and f"username: {user.username}\n" in path.read_text():
        path.unlink()
