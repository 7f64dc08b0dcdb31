"""The accounts room: administrator accounts, their roles, their sessions, API tokens, and who may
call which route.

Roles are ordered: each one may do everything the roles below it may do.
  ReadOnly       look at everything except administrator accounts and API tokens
  HelpDesk       + send device commands
  Manager        + patch policies, policy groups, device groups, bindings, enrollment links
  Administrator  + settings, push certificate, administrators, API tokens
Passwords are argon2id hashes; API tokens are random and stored as SHA-256 digests only.

Sessions live on the server. Each sign-in makes an ``AdminSession`` row keyed by the SHA-256 of a
random secret; the signed session cookie carries ``"<account id>:<secret>"`` (Flask-Login's user id)
and ``user_for_session`` accepts it only while that row exists, is younger than the session lifetime
and the account is enabled. So a session ends on the server when its row goes, and a copy of the
cookie stops working with it:
  logout            ends that one session (the account's other sessions go on);
  password change   ends every session of the account (``set_password``); the UI then starts a
                    fresh one for the admin who changed their own password, so they stay signed in;
  role change       ends every session of the account (the new role applies at the next sign-in);
  disable           ends every session of the account, and the API tokens it owns are refused
                    until it is enabled again (old sessions never come back).
API tokens are independent of sessions otherwise. A token made in the UI is owned by the
Administrator who made it (``owner_id``); a token made with the CLI belongs to no account.
Sign-in throttling is in ``mdm/accounts/throttle.py`` (it keeps its counters in ``LoginThrottle`` here).

Modules (none imports mdm.ui or mdm.api; both of those import this room):
  models.py    the tables and account services (re-exported here: ``from mdm.accounts import Role``);
  access.py    route kinds, role declarations (``@requires``, ``@public``), ``api_error``;
  api_auth.py  bearer-token authentication for /api/v1;
  guard.py     the one before_request guard (login, CSRF, roles) for every request the app serves;
  actor.py     who acts, for the audit log (``current_actor``/``current_source``);
  login.py     Flask-Login wiring (the user loader reads the server-side sessions).
"""
from __future__ import annotations

from .models import (ROLE_NAMES, MIN_PASSWORD_LENGTH, TOKEN_PREFIX, AccountError, AdminSession,  # noqa: F401
                     AdminUser, ApiToken, LoginThrottle, Role, active_administrators, authenticate,
                     check_password_strength, create_admin, create_api_token, end_session, end_sessions,
                     find_admin, generate_password, start_session, token_for_secret, tokens_owned_by,
                     user_for_session)
