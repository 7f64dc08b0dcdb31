"""Administrators and API tokens (Administrator only): invite, change role, disable; create and revoke
tokens. The last active Administrator can be neither demoted nor disabled, and nobody disables
themselves.

A role change, a disable and a password reset end every session of that account on the server
(mdm/accounts/); the audit event says how many. A disabled account's API tokens are refused until
it is enabled again; its sessions never come back. Tokens made here are owned by their maker."""
from __future__ import annotations

from flask import Blueprint, abort, flash, render_template, request, url_for
from flask_login import current_user

from ..accounts import (AccountError, AdminUser, ApiToken, Role, active_administrators, create_admin,
                        create_api_token, end_sessions, generate_password, tokens_owned_by)
from ..accounts.access import requires
from ..accounts.actor import current_actor, current_source
from ..extensions import db
from ..models import audit, utcnow
from .responses import redirect_after_change

bp = Blueprint("admins", __name__)


def _admin_or_404(user_id: int) -> AdminUser:
    user = db.session.get(AdminUser, user_id)
    if user is None:
        abort(404)
    return user


def _page(status: int = 200, **extra):
    users = AdminUser.query.order_by(AdminUser.username).all()
    return render_template("ui/admins.html", users=users, roles=list(Role), **extra), status


@bp.route("/admins")
@requires(Role.Administrator)
def index():
    return _page()


@bp.route("/admins", methods=["POST"])
@requires(Role.Administrator)
def invite():
    """A new account with a generated one-time password, shown once to hand over."""
    password = generate_password()
    try:
        user = create_admin(request.form.get("username", ""), password, request.form.get("role", "ReadOnly"),
                            created_by=current_actor())
    except (AccountError, ValueError) as exc:
        db.session.rollback()
        return _page(422, error=str(exc), form=request.form)
    audit("admin.create", actor=current_actor(), source=current_source(), object_type="admin", object_id=user.id,
          after=user.summary())
    db.session.commit()
    return _page(invited=(user.username, password))


def _would_lose_last_admin(user: AdminUser, new_role: Role | None = None, disable: bool = False) -> bool:
    if user.role != Role.Administrator.name or user.disabled:
        return False
    losing = disable or (new_role is not None and new_role != Role.Administrator)
    return losing and active_administrators() <= 1


@bp.route("/admins/<int:user_id>", methods=["POST"])
@requires(Role.Administrator)
def change(user_id):
    user = _admin_or_404(user_id)
    before = user.summary()
    action = request.form.get("action", "")
    detail = None
    try:
        if action == "role":
            role = Role.parse(request.form.get("role"))
            if _would_lose_last_admin(user, new_role=role):
                raise AccountError("role: the last active Administrator keeps that role")
            user.role = role.name
            detail = f"ended {end_sessions(user)} session(s); the new role applies at the next sign-in"
        elif action in ("disable", "enable"):
            if user.id == current_user.id:
                raise AccountError("you cannot disable or enable your own account")
            if action == "disable" and _would_lose_last_admin(user, disable=True):
                raise AccountError("the last active Administrator cannot be disabled")
            user.disabled = action == "disable"
            tokens = tokens_owned_by(user)
            detail = (f"ended {end_sessions(user)} session(s); {tokens} API token(s) stop working while disabled"
                      if user.disabled else f"{tokens} API token(s) work again")
        elif action == "reset_password":
            password = generate_password()
            ended = user.set_password(password)
            audit("admin.password_reset", actor=current_actor(), source=current_source(), object_type="admin",
                  object_id=user.id, detail=f"ended {ended} session(s)")
            db.session.commit()
            return _page(invited=(user.username, password))
        else:
            raise AccountError("choose an action")
    except (AccountError, ValueError) as exc:
        db.session.rollback()
        return _page(422, error=str(exc))
    audit(f"admin.{action}", actor=current_actor(), source=current_source(), object_type="admin", object_id=user.id,
          before=before, after=user.summary(), detail=detail)
    db.session.commit()
    flash(f"{user.username}: saved.")
    return redirect_after_change(url_for("admins.index"))


def _tokens_page(status: int = 200, **extra):
    tokens = ApiToken.query.order_by(ApiToken.id.desc()).all()
    return render_template("ui/tokens.html", tokens=tokens, roles=list(Role), **extra), status


@bp.route("/api-tokens")
@requires(Role.Administrator)
def tokens():
    return _tokens_page()


@bp.route("/api-tokens", methods=["POST"])
@requires(Role.Administrator)
def create_token():
    try:
        token, secret = create_api_token(request.form.get("name", ""), request.form.get("role", "ReadOnly"),
                                         created_by=current_actor(), owner=current_user._get_current_object())
    except (AccountError, ValueError) as exc:
        db.session.rollback()
        return _tokens_page(422, error=str(exc), form=request.form)
    audit("api_token.create", actor=current_actor(), source=current_source(), object_type="api_token",
          object_id=token.id, after=token.summary())
    db.session.commit()
    return _tokens_page(new_secret=(token.name, secret))


@bp.route("/api-tokens/<int:token_id>/revoke", methods=["POST"])
@requires(Role.Administrator)
def revoke_token(token_id):
    token = db.session.get(ApiToken, token_id)
    if token is None:
        abort(404)
    if token.revoked_at is None:
        before = token.summary()
        token.revoked_at = utcnow()
        audit("api_token.revoke", actor=current_actor(), source=current_source(), object_type="api_token",
              object_id=token.id, before=before, after=token.summary())
        db.session.commit()
    flash(f"Token {token.name} revoked.")
    return redirect_after_change(url_for("admins.tokens"))

