"""Account tables and services: see the package docstring (mdm/accounts/__init__.py)."""
from __future__ import annotations

import enum
import hashlib
import secrets
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask_login import UserMixin

from ..extensions import db
from ..models import utcnow


class Role(enum.IntEnum):
    ReadOnly = 1
    HelpDesk = 2
    Manager = 3
    Administrator = 4

    @property
    def label(self) -> str:
        return {"ReadOnly": "Read Only", "HelpDesk": "Help Desk"}.get(self.name, self.name)

    @classmethod
    def parse(cls, value) -> "Role":
        """Accept "Manager", "manager", "Read Only", "read-only", 3 or a Role."""
        if isinstance(value, Role):
            return value
        if isinstance(value, int):
            return cls(value)
        key = str(value or "").replace(" ", "").replace("-", "").replace("_", "").lower()
        for role in cls:
            if role.name.lower() == key:
                return role
        raise ValueError(f"unknown role {value!r}: use one of {', '.join(r.name for r in cls)}")


ROLE_NAMES = [r.name for r in Role]

_hasher = PasswordHasher()
# Verifying against this keeps the timing of "no such user" equal to "wrong password".
_DUMMY_HASH = _hasher.hash("not a real password")

MIN_PASSWORD_LENGTH = 10


class AccountError(ValueError):
    """A request about accounts that cannot be done; the message says why."""


class AdminUser(UserMixin, db.Model):
    __tablename__ = "admin_users"
    id = db.Column(db.Integer, primary_key=True)
    username = db.Column(db.String(255), unique=True, nullable=False)
    password_hash = db.Column(db.String(255), nullable=False)
    role = db.Column(db.String(32), nullable=False, default=Role.ReadOnly.name)
    disabled = db.Column(db.Boolean, nullable=False, default=False)
    created_by = db.Column(db.String(255))
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    last_login_at = db.Column(db.DateTime)

    @property
    def role_enum(self) -> Role:
        return Role.parse(self.role)

    def has_role(self, minimum: Role) -> bool:
        return not self.disabled and self.role_enum >= minimum

    @property
    def is_active(self) -> bool:  # Flask-Login refuses inactive users
        return not self.disabled

    # The secret of the session this object was loaded for (or just started); not a column.
    session_secret = None  # type: str | None

    def get_id(self) -> str:
        """Flask-Login's user id, kept in the signed cookie: names the server-side session."""
        if not self.session_secret:
            raise RuntimeError("start_session() before login_user(): sessions live on the server")
        return f"{self.id}:{self.session_secret}"

    def set_password(self, password: str) -> int:
        """Set a new password and end every session of the account; returns how many ended."""
        check_password_strength(password)
        self.password_hash = _hasher.hash(password)
        return end_sessions(self)

    def check_password(self, password: str) -> bool:
        try:
            return _hasher.verify(self.password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def summary(self) -> dict:
        """What the audit log records about an account (never the hash)."""
        return {"username": self.username, "role": self.role, "disabled": bool(self.disabled)}


class ApiToken(db.Model):
    __tablename__ = "api_tokens"
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(255), unique=True, nullable=False)
    token_sha256 = db.Column(db.String(64), unique=True, nullable=False)
    prefix = db.Column(db.String(16), nullable=False)  # first characters, to recognise a token in lists
    role = db.Column(db.String(32), nullable=False)
    created_by = db.Column(db.String(255))
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    last_used_at = db.Column(db.DateTime)
    revoked_at = db.Column(db.DateTime)
    # The Administrator who made it in the UI; while that account is disabled the token is refused.
    owner_id = db.Column(db.Integer, db.ForeignKey("admin_users.id", ondelete="SET NULL"))
    owner = db.relationship(AdminUser)

    @property
    def role_enum(self) -> Role:
        return Role.parse(self.role)

    @property
    def owner_disabled(self) -> bool:
        return self.owner is not None and bool(self.owner.disabled)

    @property
    def actor(self) -> str:
        return f"api:{self.name}"

    def summary(self) -> dict:
        return {"name": self.name, "role": self.role, "prefix": self.prefix,
                "revoked": self.revoked_at is not None}


class AdminSession(db.Model):
    """One signed-in browser. The cookie holds the secret; only its SHA-256 is stored."""
    __tablename__ = "admin_sessions"
    id = db.Column(db.Integer, primary_key=True)
    admin_user_id = db.Column(db.Integer, db.ForeignKey("admin_users.id", ondelete="CASCADE"), nullable=False,
                              index=True)
    secret_sha256 = db.Column(db.String(64), unique=True, nullable=False)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    source = db.Column(db.String(64))  # the address it signed in from


def start_session(user: AdminUser, source: str | None, lifetime: timedelta) -> str:
    """A new server-side session for ``user`` (sets ``user.session_secret`` for login_user); also
    forgets sessions older than ``lifetime``. Returns the secret. The caller commits."""
    AdminSession.query.filter(AdminSession.created_at < utcnow() - lifetime).delete(synchronize_session=False)
    secret = secrets.token_urlsafe(32)
    db.session.add(AdminSession(admin_user_id=user.id, secret_sha256=_digest(secret),
                                source=(source or "")[:64] or None))
    user.session_secret = secret
    return secret


def user_for_session(session_id: str, lifetime: timedelta) -> AdminUser | None:
    """The account for Flask-Login's stored user id, while its session lives on the server."""
    user_id, _, secret = (session_id or "").partition(":")
    if not user_id.isdigit() or not secret:
        return None
    row = AdminSession.query.filter_by(secret_sha256=_digest(secret)).first()
    if row is None or row.admin_user_id != int(user_id) or row.created_at < utcnow() - lifetime:
        return None
    user = db.session.get(AdminUser, row.admin_user_id)
    if user is None or user.disabled:
        return None
    user.session_secret = secret
    return user


def end_session(user: AdminUser) -> None:
    """End the session ``user`` was loaded for (logout). The caller commits."""
    if user.session_secret:
        AdminSession.query.filter_by(secret_sha256=_digest(user.session_secret)).delete(synchronize_session=False)
        user.session_secret = None


def end_sessions(user: AdminUser) -> int:
    """End every session of the account; returns how many there were. The caller commits."""
    if user.id is None:
        return 0
    return AdminSession.query.filter_by(admin_user_id=user.id).delete(synchronize_session=False)


class LoginThrottle(db.Model):
    """Failed sign-ins per key in the current window (keys and limits: mdm/accounts/throttle.py)."""
    __tablename__ = "login_throttle"
    key = db.Column(db.String(300), primary_key=True)
    failures = db.Column(db.Integer, nullable=False, default=0)
    window_started_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    locked_until = db.Column(db.DateTime)


def check_password_strength(password: str) -> None:
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise AccountError(f"password: at least {MIN_PASSWORD_LENGTH} characters")


def generate_password() -> str:
    return secrets.token_urlsafe(15)


def find_admin(username: str) -> AdminUser | None:
    return AdminUser.query.filter(db.func.lower(AdminUser.username) == (username or "").strip().lower()).first()


def create_admin(username: str, password: str, role=Role.Administrator, *, created_by: str = "system") -> AdminUser:
    """Add an account (the caller commits and audits)."""
    username = (username or "").strip()
    if not username or len(username) > 255 or any(c.isspace() for c in username):
        raise AccountError("username: required, no spaces")
    if find_admin(username):
        raise AccountError(f"username: {username!r} already exists")
    user = AdminUser(username=username, role=Role.parse(role).name, created_by=created_by)
    user.set_password(password)
    db.session.add(user)
    db.session.flush()
    return user


def active_administrators() -> int:
    return AdminUser.query.filter_by(role=Role.Administrator.name, disabled=False).count()


def authenticate(username: str, password: str) -> AdminUser | None:
    """The account when the credentials are right and it is enabled, else None (the caller shows one
    generic message whatever the reason; throttling is the caller's, mdm/accounts/throttle.py). The caller commits."""
    user = find_admin(username)
    if user is None:
        _hasher_verify_dummy(password)  # "no such user" takes as long as "wrong password"
        return None
    if not user.check_password(password) or user.disabled:
        return None
    user.last_login_at = utcnow()
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    return user


def _hasher_verify_dummy(password: str) -> None:
    try:
        _hasher.verify(_DUMMY_HASH, password or "")
    except VerificationError:
        pass


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


TOKEN_PREFIX = "mdm_"


def create_api_token(name: str, role, *, created_by: str = "system",
                     owner: AdminUser | None = None) -> tuple[ApiToken, str]:
    """A new token; the secret is returned once and never stored (the caller commits and audits).
    ``owner``: the account it belongs to (refused while that account is disabled)."""
    name = (name or "").strip()
    if not name or len(name) > 255:
        raise AccountError("name: required")
    if ApiToken.query.filter_by(name=name).first():
        raise AccountError(f"name: a token named {name!r} already exists")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(name=name, role=Role.parse(role).name, token_sha256=_digest(secret),
                     prefix=secret[:10], created_by=created_by, owner_id=owner.id if owner else None)
    db.session.add(token)
    db.session.flush()
    return token, secret


def token_for_secret(secret: str) -> tuple[ApiToken | None, str | None]:
    """(the usable token with this secret, None) or (None, why it is refused)."""
    if not secret or not secret.startswith(TOKEN_PREFIX):
        return None, "unknown or revoked API token"
    token = ApiToken.query.filter_by(token_sha256=_digest(secret)).first()
    if token is None or token.revoked_at is not None:
        return None, "unknown or revoked API token"
    if token.owner_disabled:
        return None, "this API token's account is disabled"
    return token, None


def tokens_owned_by(user: AdminUser) -> int:
    """How many unrevoked API tokens the account owns (they stop working while it is disabled)."""
    return ApiToken.query.filter_by(owner_id=user.id, revoked_at=None).count()
