"""Enrollment links: create, revoke, QR code, download counts, supervision instructions.
Token rules (expiry, uses, revocation) are the enrollment room's (mdm/enroll/tokens.py)."""
from __future__ import annotations

import io

import segno
from flask import Blueprint, Response, abort, current_app, flash, render_template, request, url_for

from ..accounts import Role
from ..accounts.access import requires
from ..accounts.actor import current_actor, current_source
from ..enroll import tokens
from ..extensions import db
from .responses import redirect_after_change

bp = Blueprint("enrollment", __name__, url_prefix="/enrollment")


@bp.route("")
@requires(Role.ReadOnly)
def index():
    rows = [(t, tokens.token_state(t), tokens.enrollment_url(t)) for t in tokens.list_tokens()]
    return render_template("ui/enrollment.html", rows=rows, default_days=_default_days())


def _default_days() -> int:
    return int(current_app.config.get("ENROLLMENT_DEFAULT_DAYS", 30))


@bp.route("", methods=["POST"])
@requires(Role.Manager)
def create():
    errors = []
    expires = _optional_int(request.form.get("expires_in_days"), "expires in (days)", errors, minimum=0)
    max_uses = _optional_int(request.form.get("max_uses"), "uses", errors, minimum=1)
    if not errors:
        try:
            token = tokens.create_token(request.form.get("description", "").strip(), expires_in_days=expires,
                                        max_uses=max_uses, created_by=current_actor(), source=current_source())
        except ValueError as exc:
            db.session.rollback()
            errors.append(str(exc))
    if errors:
        rows = [(t, tokens.token_state(t), tokens.enrollment_url(t)) for t in tokens.list_tokens()]
        return render_template("ui/enrollment.html", rows=rows, default_days=_default_days(),
                               error="; ".join(errors), form=request.form), 422
    flash(f"Enrollment link created: {token.description or 'link #' + str(token.id)}.")
    return redirect_after_change(url_for("enrollment.index", show=token.id))


def _optional_int(raw, label, errors, *, minimum):
    if raw in (None, ""):
        return None
    try:
        value = int(raw)
    except ValueError:
        errors.append(f"{label}: a whole number")
        return None
    if value < minimum:
        errors.append(f"{label}: {minimum} or more")
    return value


@bp.route("/<int:token_id>/revoke", methods=["POST"])
@requires(Role.Manager)
def revoke(token_id):
    try:
        tokens.revoke_token(token_id, revoked_by=current_actor(), source=current_source())
    except tokens.TokenNotFound:
        abort(404)
    flash("Enrollment link revoked.")
    return redirect_after_change(url_for("enrollment.index"))


@bp.route("/<int:token_id>/qr.svg")
@requires(Role.Manager)
def qr(token_id):
    """The enrollment URL as a QR code, for the iPhone's camera."""
    try:
        token = tokens.find_token(token_id)
    except tokens.TokenNotFound:
        abort(404)
    out = io.BytesIO()
    segno.make(tokens.enrollment_url(token), error="m").save(out, kind="svg", scale=4, border=2,
                                                              xmldecl=False, svgns=True)
    return Response(out.getvalue(), mimetype="image/svg+xml", headers={"Cache-Control": "no-store"})
