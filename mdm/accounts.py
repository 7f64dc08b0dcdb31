"""Administrator accounts, their roles, API tokens and login throttling.

Roles are ordered: each one may do everything the roles below it may do.
  ReadOnly       look at everything except administrator accounts and API tokens
  HelpDesk       + send device commands
  Manager        + patch policies, policy groups, device groups, bindings, enrollment links
  Administrator  + settings, push certificate, administrators, API tokens
Passwords are argon2id hashes; API tokens are random and stored as SHA-256 digests only.
"""
from __future__ import annotations

import enum
import hashlib
import secrets
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask_login import UserMixin

from .extensions import db
from .models import utcnow


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
    # Bumped on password change / disable so existing sessions stop working.
    session_generation = db.Column(db.Integer, nullable=False, default=0)
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

    def get_id(self) -> str:
        return f"{self.id}:{self.session_generation}"

    def set_password(self, password: str) -> None:
        check_password_strength(password)
        self.password_hash = _hasher.hash(password)
        self.session_generation = (self.session_generation or 0) + 1

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

    @property
    def role_enum(self) -> Role:
        return Role.parse(self.role)

    @property
    def actor(self) -> str:
        return f"api:{self.name}"

    def summary(self) -> dict:
        return {"name": self.name, "role": self.role, "prefix": self.prefix,
                "revoked": self.revoked_at is not None}


class LoginThrottle(db.Model):
    """Failed sign-ins per key ("user:<name>" or "ip:<address>") in the current window."""
    __tablename__ = "login_throttle"
    key = db.Column(db.String(300), primary_key=True)
    failures = db.Column(db.Integer, nullable=False, default=0)
    window_started_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    locked_until = db.Column(db.DateTime)


# Five wrong passwords for one account, or twenty from one address, lock that key for 15 minutes.
THROTTLE_WINDOW = timedelta(minutes=15)
THROTTLE_LOCK = timedelta(minutes=15)
MAX_FAILURES_PER_USER = 5
MAX_FAILURES_PER_ADDRESS = 20


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
    user = AdminUser(username=username, role=Role.parse(role).name, created_by=created_by, session_generation=0)
    user.set_password(password)
    db.session.add(user)
    db.session.flush()
    return user


def active_administrators() -> int:
    return AdminUser.query.filter_by(role=Role.Administrator.name, disabled=False).count()


def _throttle_row(key: str) -> LoginThrottle:
    row = db.session.get(LoginThrottle, key)
    if row is None:
        row = LoginThrottle(key=key, failures=0, window_started_at=utcnow())
        db.session.add(row)
    return row


def _throttle_keys(username: str, address: str | None) -> list[tuple[str, int]]:
    keys = [(f"user:{(username or '').strip().lower()}", MAX_FAILURES_PER_USER)]
    if address:
        keys.append((f"ip:{address}", MAX_FAILURES_PER_ADDRESS))
    return keys


def is_throttled(username: str, address: str | None) -> bool:
    now = utcnow()
    for key, _limit in _throttle_keys(username, address):
        row = db.session.get(LoginThrottle, key)
        if row and row.locked_until and row.locked_until > now:
            return True
    return False


def record_login_failure(username: str, address: str | None) -> None:
    now = utcnow()
    for key, limit in _throttle_keys(username, address):
        row = _throttle_row(key)
        if row.window_started_at is None or now - row.window_started_at > THROTTLE_WINDOW:
            row.failures, row.window_started_at = 0, now
        row.failures = (row.failures or 0) + 1
        if row.failures >= limit:
            row.locked_until = now + THROTTLE_LOCK


def clear_login_failures(username: str) -> None:
    row = db.session.get(LoginThrottle, f"user:{(username or '').strip().lower()}")
    if row:
        db.session.delete(row)


def authenticate(username: str, password: str, address: str | None) -> AdminUser | None:
    """The account when the credentials are right and nothing is throttled, else None (the caller shows
    one generic message whatever the reason). Records the failure; the caller commits."""
    if is_throttled(username, address):
        _hasher_verify_dummy(password)
        return None
    user = find_admin(username)
    if user is None:
        _hasher_verify_dummy(password)
        ok = False
    else:
        ok = user.check_password(password) and not user.disabled
    if not ok:
        record_login_failure(username, address)
        return None
    clear_login_failures(username)
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


def create_api_token(name: str, role, *, created_by: str = "system") -> tuple[ApiToken, str]:
    """A new token; the secret is returned once and never stored (the caller commits and audits)."""
    name = (name or "").strip()
    if not name or len(name) > 255:
        raise AccountError("name: required")
    if ApiToken.query.filter_by(name=name).first():
        raise AccountError(f"name: a token named {name!r} already exists")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(name=name, role=Role.parse(role).name, token_sha256=_digest(secret),
                     prefix=secret[:10], created_by=created_by)
    db.session.add(token)
    db.session.flush()
    return token, secret


def token_for_secret(secret: str) -> ApiToken | None:
    """The active token with this secret, or None."""
    if not secret or not secret.startswith(TOKEN_PREFIX):
        return None
    token = ApiToken.query.filter_by(token_sha256=_digest(secret)).first()
    if token is None or token.revoked_at is not None:
        return None
    return token
