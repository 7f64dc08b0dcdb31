"""Enrollment tokens: the secret part of an enrollment URL (``SERVER_URL/enroll/<token>``).

A token may expire, be revoked, and have a maximum number of uses; each profile download counts one use.
Admin changes are audited. Refusals are values (TokenNotFound -> 404, TokenRefused -> 403) that the
HTTP layer maps to status codes.
"""
from __future__ import annotations

import secrets
from datetime import timedelta

from flask import current_app
from sqlalchemy import or_, select, update

from ..extensions import db
from ..models import EnrollmentToken, audit, utcnow

TOKEN_BYTES = 24   # 32 URL-safe characters, 192 bits: not guessable


class TokenError(Exception):
    """Base class: ``reason`` is safe to show and log (it never contains the token itself)."""

    status_code = 400

    def __init__(self, reason: str, token_id: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.token_id = token_id


class TokenNotFound(TokenError):
    status_code = 404


class TokenRefused(TokenError):
    """The token exists but is expired, revoked or used up."""
    status_code = 403


def _snapshot(token: EnrollmentToken) -> dict:
    return {"description": token.description, "expires_at": token.expires_at.isoformat() if token.expires_at else None,
            "max_uses": token.max_uses, "uses": token.uses,
            "revoked_at": token.revoked_at.isoformat() if token.revoked_at else None}


def create_token(description: str = "", expires_in_days: int | None = None, max_uses: int | None = None,
                 created_by: str = "system", *, source: str | None = None) -> EnrollmentToken:
    """Create and commit a token. ``expires_in_days`` None means ENROLLMENT_DEFAULT_DAYS; 0 means never expires.
    ``max_uses`` None means unlimited."""
    if expires_in_days is None:
        expires_in_days = int(current_app.config["ENROLLMENT_DEFAULT_DAYS"])
    if expires_in_days < 0:
        raise ValueError("expires_in_days must be 0 (never) or more")
    if max_uses is not None and max_uses < 1:
        raise ValueError("max_uses must be at least 1 (or None for unlimited)")
    token = EnrollmentToken(
        token=secrets.token_urlsafe(TOKEN_BYTES),
        description=(description or "")[:255],
        expires_at=utcnow() + timedelta(days=expires_in_days) if expires_in_days else None,
        max_uses=max_uses,
        uses=0,
        created_by=created_by,
    )
    db.session.add(token)
    db.session.flush()
    audit("enrollment_token.create", actor=created_by, source=source, object_type="enrollment_token",
          object_id=token.id, after=_snapshot(token))
    db.session.commit()
    return token


def find_token(token_or_id: str | int) -> EnrollmentToken:
    """By token string or numeric id. Raises TokenNotFound."""
    token = None
    if isinstance(token_or_id, int) or str(token_or_id).isdigit():
        token = db.session.get(EnrollmentToken, int(token_or_id))
    if token is None:
        token = db.session.scalar(select(EnrollmentToken).where(EnrollmentToken.token == str(token_or_id)))
    if token is None:
        raise TokenNotFound("unknown enrollment token")
    return token


def revoke_token(token_or_id: str | int, revoked_by: str = "system", *, source: str | None = None) -> EnrollmentToken:
    """Revoke and commit (idempotent: revoking twice keeps the first revocation time)."""
    token = find_token(token_or_id)
    if token.revoked_at is None:
        before = _snapshot(token)
        token.revoked_at = utcnow()
        audit("enrollment_token.revoke", actor=revoked_by, source=source, object_type="enrollment_token",
              object_id=token.id, before=before, after=_snapshot(token))
        db.session.commit()
    return token


def list_tokens(include_inactive: bool = True) -> list[EnrollmentToken]:
    """Newest first. ``include_inactive=False`` leaves out expired, revoked and used-up tokens."""
    tokens = db.session.scalars(select(EnrollmentToken).order_by(EnrollmentToken.id.desc())).all()
    if include_inactive:
        return list(tokens)
    return [t for t in tokens if token_state(t) == "active"]


def token_state(token: EnrollmentToken) -> str:
    """"active", "revoked", "expired" or "used up" (revocation wins, then expiry)."""
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= utcnow():
        return "expired"
    if token.max_uses is not None and token.uses >= token.max_uses:
        return "used up"
    return "active"


def enrollment_url(token: EnrollmentToken | str) -> str:
    value = token.token if isinstance(token, EnrollmentToken) else token
    return f"{current_app.config['SERVER_URL']}/enroll/{value}"


def redeem_token(value: str) -> EnrollmentToken:
    """Count one use of an active token, atomically, in the caller's transaction (the caller commits).
    Raises TokenNotFound or TokenRefused; nothing is changed then."""
    if not value or len(value) > 64:
        raise TokenNotFound("unknown enrollment token")
    now = utcnow()
    # One conditional UPDATE, so two concurrent downloads cannot both take the last use.
    result = db.session.execute(
        update(EnrollmentToken)
        .where(EnrollmentToken.token == value,
               EnrollmentToken.revoked_at.is_(None),
               or_(EnrollmentToken.expires_at.is_(None), EnrollmentToken.expires_at > now),
               or_(EnrollmentToken.max_uses.is_(None), EnrollmentToken.uses < EnrollmentToken.max_uses))
        .values(uses=EnrollmentToken.uses + 1)
        .execution_options(synchronize_session=False)
    )
    token = db.session.scalar(select(EnrollmentToken).where(EnrollmentToken.token == value)
                              .execution_options(populate_existing=True))
    if token is None:
        raise TokenNotFound("unknown enrollment token")
    if result.rowcount != 1:
        raise TokenRefused(f"enrollment token {token.id} is {token_state(token)}", token_id=token.id)
    return token
