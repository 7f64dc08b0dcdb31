"""Admin sessions end on the server, and sign-in throttling cannot lock an administrator out.

- A copy of the session cookie taken before logout, a password change, a role change or a disable is
  refused afterwards (the sign-in redirect; for HTMX the whole-page HX-Redirect).
- Logout ends only that session; a password change keeps the admin who made it signed in (on a fresh
  session) and ends every other session of the account.
- API tokens are unaffected by all of that except a disabled account: the tokens it created stop working.
- Sign-in failures are counted per (account, address) and per address: 429 with Retry-After and one
  generic message; the right password from another address still works (tested on the real TLS
  server with a second loopback source address).
"""
from __future__ import annotations

import ssl

import httpx
import pytest

from mdm.accounts import AdminUser, ApiToken, Role
from mdm.extensions import db
from mdm.models import AuditEvent
from ui_support import HTTPS, PASSWORD, Browser, make_admin, signed_in

COOKIE = "mdm_session"
NEW_PASSWORD = "a brand new long password"


def cookie_of(browser: Browser) -> str:
    return browser.client.get_cookie(COOKIE).value


def replay(app, cookie: str, path: str = "/devices", htmx: bool = False):
    """A fresh client that sends only the copied session cookie (what a thief would do)."""
    client = app.test_client()
    client.set_cookie(COOKIE, cookie, domain="localhost")
    headers = {"HX-Request": "true", "HX-Current-URL": HTTPS + path} if htmx else {}
    return client.get(path, base_url=HTTPS, headers=headers)


def assert_sent_to_login(response, htmx: bool = False):
    if htmx:
        assert response.status_code == 401 and response.headers["HX-Redirect"].startswith("/login?next=")
    else:
        assert response.status_code == 302 and response.headers["Location"].startswith("/login?next=")


def user_id(app, username: str) -> int:
    with app.app_context():
        return AdminUser.query.filter_by(username=username).one().id


def audit_actions(app, action: str) -> list[AuditEvent]:
    with app.app_context():
        return AuditEvent.query.filter_by(action=action).order_by(AuditEvent.id).all()


# --- sessions end on the server --------------------------------------------------------------------

def test_a_cookie_copied_before_logout_is_refused_after_it(app):
    browser = signed_in(app, Role.ReadOnly, "reader")
    other = Browser(app).login("reader")          # the same account in a second browser
    copied = cookie_of(browser)
    assert replay(app, copied).status_code == 200  # the copy works while the session lives
    assert browser.post("/logout").status_code == 302
    assert_sent_to_login(replay(app, copied))
    assert_sent_to_login(replay(app, copied, "/devices", htmx=True), htmx=True)
    assert other.get("/devices").status_code == 200  # logout ended that session only
    [event] = audit_actions(app, "admin.logout")
    assert event.actor == "reader"


def test_password_change_keeps_the_changer_signed_in_and_ends_other_sessions(app):
    me = signed_in(app, Role.Manager, "mgr")
    elsewhere = Browser(app).login("mgr")
    copied = cookie_of(me)
    me.get("/account")
    changed = me.post("/account", {"current_password": PASSWORD, "new_password": NEW_PASSWORD,
                                   "confirm_password": NEW_PASSWORD})
    assert changed.status_code == 302
    assert me.get("/devices").status_code == 200           # still signed in, on a fresh session
    assert cookie_of(me) != copied
    assert_sent_to_login(elsewhere.get("/devices"))
    assert_sent_to_login(replay(app, copied))              # a cookie stolen before the change is dead too
    [event] = audit_actions(app, "admin.password_change")
    assert event.actor == "mgr" and "ended 2 session(s)" in event.detail


def test_role_change_and_disable_end_the_account_sessions(app):
    boss = signed_in(app, Role.Administrator, "boss")
    worker = signed_in(app, Role.Manager, "worker")
    copied = cookie_of(worker)
    assert boss.post(f"/admins/{user_id(app, 'worker')}", {"action": "role", "role": "HelpDesk"}).status_code == 303
    assert_sent_to_login(replay(app, copied))
    assert_sent_to_login(worker.get("/devices"))
    worker = Browser(app).login("worker")                  # signs in again, with the new role
    copied = cookie_of(worker)
    assert boss.post(f"/admins/{user_id(app, 'worker')}", {"action": "disable"}).status_code == 303
    assert_sent_to_login(replay(app, copied, "/devices", htmx=True), htmx=True)
    # Enabling the account again does not bring the old session back.
    assert boss.post(f"/admins/{user_id(app, 'worker')}", {"action": "enable"}).status_code == 303
    assert_sent_to_login(replay(app, copied))
    role_event, = audit_actions(app, "admin.role")
    disable_event, = audit_actions(app, "admin.disable")
    assert role_event.before["role"] == "Manager" and role_event.after["role"] == "HelpDesk"
    assert "ended 1 session(s)" in role_event.detail and "ended 1 session(s)" in disable_event.detail


def test_a_session_older_than_its_lifetime_is_refused_on_the_server(app):
    from datetime import timedelta

    from mdm.accounts import AdminSession
    browser = signed_in(app, Role.ReadOnly, "old")
    copied = cookie_of(browser)
    with app.app_context():
        row = AdminSession.query.filter_by(admin_user_id=user_id(app, "old")).one()
        row.created_at -= app.permanent_session_lifetime + timedelta(minutes=1)
        db.session.commit()
    assert_sent_to_login(replay(app, copied))


def api_get(app, secret: str):
    return app.test_client().get("/api/v1/devices", base_url=HTTPS, headers={"Authorization": f"Bearer {secret}"})


def test_api_tokens_survive_logout_and_password_change_but_not_a_disabled_account(app):
    boss = signed_in(app, Role.Administrator, "boss")
    ops = signed_in(app, Role.Administrator, "ops")
    ops.get("/api-tokens")
    page = ops.post("/api-tokens", {"name": "inventory sync", "role": "ReadOnly"})
    secret = page.text.split('id="new-token">')[1].split("<")[0]
    ops_id = user_id(app, "ops")
    with app.app_context():
        from mdm.accounts import create_api_token
        token = ApiToken.query.filter_by(name="inventory sync").one()
        assert token.owner_id == ops_id
        _cli_token, cli_secret = create_api_token("from the shell", Role.ReadOnly, created_by="cli")
        db.session.commit()
    assert api_get(app, secret).status_code == 200
    ops.get("/account")
    ops.post("/account", {"current_password": PASSWORD, "new_password": NEW_PASSWORD,
                          "confirm_password": NEW_PASSWORD})
    ops.post("/logout")
    assert api_get(app, secret).status_code == 200          # sessions ended, the token did not
    boss.post(f"/admins/{ops_id}", {"action": "disable"})
    refused = api_get(app, secret)
    assert refused.status_code == 401 and "disabled" in refused.json["error"]
    assert api_get(app, cli_secret).status_code == 200      # a token no account owns is not affected
    assert "account disabled" in boss.get("/api-tokens").text
    boss.post(f"/admins/{ops_id}", {"action": "enable"})
    assert api_get(app, secret).status_code == 200
    [event] = audit_actions(app, "admin.disable")
    assert "1 API token(s) stop working" in event.detail


# --- sign-in throttling ----------------------------------------------------------------------------

def attempt(browser: Browser, username: str, password: str, address: str):
    return browser.post("/login", {"username": username, "password": password},
                        environ_base={"REMOTE_ADDR": address})


def test_failures_lock_the_account_from_that_address_only(app):
    make_admin(app, "target", Role.Administrator)
    attacker, owner = Browser(app), Browser(app)
    for _ in range(5):
        assert attempt(attacker, "target", "wrong password", "203.0.113.9").status_code == 401
    locked = attempt(attacker, "target", PASSWORD, "203.0.113.9")
    assert locked.status_code == 429
    assert 1 <= int(locked.headers["Retry-After"]) <= 15 * 60
    assert "Too many failed sign-ins" in locked.text
    # The administrator, from their own address, signs in with the right password.
    assert attempt(owner, "target", PASSWORD, "198.51.100.7").status_code == 302
    [event] = audit_actions(app, "admin.login_throttled")
    assert (event.actor, event.source) == ("target", "203.0.113.9")
    assert event.after["scope"] == "account and address" and event.after["retry_after_s"] > 0


def test_throttling_says_the_same_for_accounts_that_do_not_exist(app):
    make_admin(app, "real", Role.ReadOnly)
    browser = Browser(app)
    for name in ("real", "ghost"):
        for _ in range(5):
            attempt(browser, name, "wrong password", "203.0.113.10")
    real = attempt(browser, "real", "wrong password", "203.0.113.10")
    ghost = attempt(browser, "ghost", "wrong password", "203.0.113.10")
    assert real.status_code == ghost.status_code == 429
    assert real.text.replace("real", "NAME") == ghost.text.replace("ghost", "NAME")


def test_one_address_trying_many_accounts_is_locked_per_address(app):
    make_admin(app, "victim", Role.Administrator)
    browser = Browser(app)
    for n in range(20):
        assert attempt(browser, f"guess{n}", "wrong password", "203.0.113.11").status_code == 401
    assert attempt(browser, "victim", PASSWORD, "203.0.113.11").status_code == 429
    assert attempt(Browser(app), "victim", PASSWORD, "198.51.100.8").status_code == 302
    [event] = audit_actions(app, "admin.login_throttled")
    assert event.after["scope"] == "address" and event.source == "203.0.113.11"


@pytest.fixture
def other_address():
    """127.0.0.2 must be usable as a source address (Linux routes all of 127/8 to loopback)."""
    import socket
    probe = socket.socket()
    try:
        probe.bind(("127.0.0.2", 0))
    except OSError:
        pytest.skip("127.0.0.2 is not a usable loopback address here")
    finally:
        probe.close()
    return "127.0.0.2"


def https_client(server, local_address: str) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=local_address, verify=ssl.create_default_context(cafile=server.ca_file))
    return httpx.Client(transport=transport, base_url=server.url, follow_redirects=False, timeout=30)


def sign_in_over_tls(client: httpx.Client, username: str, password: str) -> httpx.Response:
    page = client.get("/login")
    token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    return client.post("/login", data={"username": username, "password": password, "csrf_token": token},
                       headers={"Referer": str(client.base_url.join("/login"))})


def test_a_locked_out_address_cannot_lock_the_account_out_from_another_address(live_server, other_address):
    make_admin(live_server.app, "admin2", Role.Administrator)
    with https_client(live_server, "127.0.0.1") as attacker:
        for _ in range(5):
            assert sign_in_over_tls(attacker, "admin2", "wrong password").status_code == 401
        locked = sign_in_over_tls(attacker, "admin2", PASSWORD)
        assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0
        assert "Too many failed sign-ins" in locked.text
    with https_client(live_server, other_address) as owner:
        signed = sign_in_over_tls(owner, "admin2", PASSWORD)
        assert signed.status_code == 302, signed.text[:300]
        assert owner.get("/devices").status_code == 200
    with live_server.app.app_context():
        [event] = AuditEvent.query.filter_by(action="admin.login_throttled").all()
        assert event.source == "127.0.0.1" and event.actor == "admin2"
        [login] = AuditEvent.query.filter_by(action="admin.login", actor="admin2").all()
        assert login.source == other_address
