"""Sign in, sign out, change your own password.

Sessions end on the server (mdm/accounts/): sign-in starts a server-side session, sign-out ends it,
a password change ends every session of the account and starts a fresh one for this browser.
Sign-in is throttled per (account, address) and per address (mdm/accounts/throttle.py): a locked key answers
429 with Retry-After and one generic message, and the start of each lock is audited."""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, current_app, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_user, logout_user

from ..accounts import AccountError, Role, authenticate, end_session, start_session
from ..accounts.access import public, requires, safe_next
from ..accounts.actor import current_source
from ..extensions import db
from ..models import audit
from ..accounts.throttle import clear_login_failures, client_address, login_lock, record_login_failure

bp = Blueprint("auth", __name__)

# One message whatever went wrong (unknown user, wrong password, disabled, throttled): it tells an
# attacker nothing about which accounts exist or are locked.
GENERIC_LOGIN_ERROR = "Sign-in failed. Check your username and password, or wait a few minutes and try again."
# Said the same way for every account name, existing or not.
THROTTLED_LOGIN_ERROR = "Too many failed sign-ins from your address. Try again in {minutes} minute(s)."


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
    address = client_address(request, current_app.config)
    lock = login_lock(username, address)
    if lock is not None:
        return _throttled(username, lock, next_url)
    user = authenticate(username, password)
    if user is None:
        _record_failure(username, address)
        return render_template("ui/login.html", next_url=next_url, error=GENERIC_LOGIN_ERROR,
                               username=username), 401
    clear_login_failures(username, address)
    session.clear()  # no session fixation: a fresh session (and CSRF token) after sign-in
    session.permanent = True
    start_session(user, address, current_app.permanent_session_lifetime)
    login_user(user)
    audit("admin.login", actor=user.username, source=address, object_type="admin", object_id=user.id)
    db.session.commit()
    return redirect(next_url)


def _record_failure(username: str, address: str) -> None:
    actor = username[:255] or "anonymous"
    audit("admin.login_failed", actor=actor, source=address, object_type="admin")
    for lock in record_login_failure(username, address):
        audit("admin.login_throttled", actor=actor, source=address, object_type="admin",
              after={"scope": lock.scope, "address": address, "retry_after_s": lock.retry_after_s},
              detail=f"too many failed sign-ins for this {lock.scope}: locked for {lock.retry_after_s} s")
    db.session.commit()
    current_app.logger.info("failed sign-in for %r from %s", username[:64], address)


def _throttled(username: str, lock, next_url: str):
    current_app.logger.info("sign-in for %r from %s refused: %s locked for %d s", username[:64], lock.address,
                            lock.scope, lock.retry_after_s)
    message = THROTTLED_LOGIN_ERROR.format(minutes=-(-lock.retry_after_s // 60))
    body = render_template("ui/login.html", next_url=next_url, error=message, username=username)
    return body, 429, {"Retry-After": str(lock.retry_after_s)}


@bp.route("/logout", methods=["POST"])
@requires(Role.ReadOnly)
def logout():
    """Ends this session on the server: a copy of its cookie is refused from now on."""
    end_session(current_user)
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
        user = current_user._get_current_object()
        if not user.check_password(request.form.get("current_password", "")):
            error = "Current password: not correct."
        elif request.form.get("new_password") != request.form.get("confirm_password"):
            error = "New password: the two entries differ."
        else:
            try:
                ended = user.set_password(request.form.get("new_password", ""))
            except AccountError as exc:
                error = f"New {exc}."
        if error is None:
            # Every session of the account ended (a stolen cookie too); this browser gets a fresh one.
            start_session(user, current_source(), current_app.permanent_session_lifetime)
            audit("admin.password_change", actor=user.username, source=current_source(),
                  object_type="admin", object_id=user.id,
                  detail=f"ended {ended} session(s); signed in again on a new session")
            db.session.commit()
            _forget_initial_password(user)
            login_user(user)  # the cookie now names the new session
            flash("Password changed. Your other sessions have been signed out.")
            return redirect(url_for("auth.account"))
        db.session.rollback()
    return render_template("ui/account.html", error=error), (422 if error else 200)


def _forget_initial_password(user) -> None:
    path = Path(current_app.instance_path) / "initial-admin-password"
    if path.exists() and f"username: {user.username}\n" in path.read_text():
        path.unlink()
