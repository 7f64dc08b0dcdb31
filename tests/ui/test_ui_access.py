"""Who may call what: every URL rule of the app for every role, the device-facing exemption, CSRF,
login (throttling, redirects, cookies), sessions ending, and the first-run administrator."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from apps import make_app
from mdm.accounts import AdminUser, Role
from mdm.extensions import db
from mdm.models import AuditEvent, DeviceGroup
from mdm.accounts.access import DEVICE_FACING_PREFIXES, is_device_facing
from ui_support import HTTPS, PASSWORD, Browser, add_devices, iphone, make_admin, make_token, signed_in

R, H, M, A, PUBLIC = Role.ReadOnly, Role.HelpDesk, Role.Manager, Role.Administrator, "public"

# The minimum role of every admin route, written out by hand so that a change to a route's
# declaration, or a new route nobody listed, fails here.
EXPECTED = {
    "static": PUBLIC, "ui_static.htmx_js": PUBLIC, "ui_static.own_static": PUBLIC, "ui_static.favicon": PUBLIC,
    "auth.login": PUBLIC,
    "api.openapi": PUBLIC,
    "auth.logout": R, "auth.account": R, "dashboard.index": R,
    "devices.index": R, "devices.detail": R, "devices.commands_fragment": R, "devices.results_fragment": R,
    "devices.queue_command": H, "devices.bulk": H,
    "groups.index": R, "groups.detail": R, "groups.create": M, "groups.rename": M, "groups.delete": M,
    "groups.candidates": M, "groups.add": M, "groups.remove": M,
    "policies.index": R, "policies.edit": R, "policies.preview": R, "policies.policy_groups": R,
    "policies.choose_platform": M, "policies.new": M, "policies.create": M, "policies.validate": M,
    "policies.update": M, "policies.delete": M, "policies.bind": M, "policies.unbind": M,
    "policies.load_defaults": M, "policies.bind_ring": M,
    "enrollment.index": R, "enrollment.create": M, "enrollment.revoke": M, "enrollment.qr": M,
    "settings.index": R, "settings.catalog_sync_status": R, "settings.push_csr": A, "settings.push_upload": A,
    "settings.catalog_releases": R,
    "settings.catalog_sync": A, "settings.push_vendor_request": A, "settings.push_submit": A,
    "settings.push_decrypt": A, "settings.push_request_download": A,
    "admins.index": A, "admins.invite": A, "admins.change": A, "admins.tokens": A, "admins.create_token": A,
    "admins.revoke_token": A,
    "audit_log.index": R,
    "api.list_devices": R, "api.get_device": R, "api.device_inventory": R, "api.device_commands": R,
    "api.get_command": R, "api.device_results": R, "api.queue_command": H,
    "api.list_groups": R, "api.get_group": R, "api.group_members": R, "api.create_group": M,
    "api.update_group": M, "api.delete_group": M, "api.add_group_members": M, "api.remove_group_member": M,
    "api.list_policies": R, "api.get_policy": R, "api.policy_results": R, "api.create_policy": M,
    "api.update_policy": M, "api.delete_policy": M, "api.bind_policy": M, "api.unbind_policy": M,
    "api.load_defaults": M,
    "enforcement.index": R, "enforcement.edit": R, "enforcement.new": M, "enforcement.create": M,
    "enforcement.update": M, "enforcement.delete": M, "enforcement.bind": M, "enforcement.unbind": M,
    "api.list_enforcement_policies": R, "api.get_enforcement_policy": R, "api.enforcement_policy_results": R,
    "api.enforcement_policy_preview": R, "api.create_enforcement_policy": M, "api.update_enforcement_policy": M,
    "api.delete_enforcement_policy": M, "api.bind_enforcement_policy": M, "api.unbind_enforcement_policy": M,
}
ROLES = [R, H, M, A]


# A feed URL that fails at once, so "Sync now" in the walk does not wait on the network.
pytestmark = pytest.mark.app_settings(CATALOG_URL="https://127.0.0.1:9/none")


def build_world(app) -> dict:
    """One object of each kind, so every URL rule has real values to point at."""
    from mdm.ddm import policies
    from mdm.ddm.rings import load_default_rings
    from mdm.enroll.tokens import create_token
    from mdm.protocol.queue import enqueue
    [device_id] = add_devices(app, [iphone("Walk iPhone", "WALK1")])
    victim = make_admin(app, "victim", Role.ReadOnly)
    with app.app_context():
        device = db.session.get(db.Model.registry._class_registry["Device"], device_id)
        group = DeviceGroup(name="Walk group")
        db.session.add(group)
        db.session.commit()
        load_default_rings()
        policy = policies.list_policies()[0]
        ring_id = policy.policy_group_id
        token = create_token("walk link")
        command = enqueue(device, "DeviceInformation", queued_by="test")
        db.session.commit()
        from mdm.accounts import ApiToken
        make_token(app, "walk token", Role.ReadOnly)
        api_token_id = ApiToken.query.filter_by(name="walk token").one().id
        return {"device_id": device_id, "group_id": group.id, "policy_id": policy.id, "ring_id": ring_id,
                "token_id": token.id, "user_id": victim, "target_id": group.id, "kind": "group",
                "platform": "iOS", "filename": "app.css", "command_uuid": command.uuid}


def url_for_rule(rule, world) -> str:
    path = rule.rule
    for arg in rule.arguments:
        path = path.replace(f"<{arg}>", str(world[arg]))
        for conv in ("int", "path", "string"):
            path = path.replace(f"<{conv}:{arg}>", str(world[arg]))
    return path


def admin_rules(app):
    """(rule, method) for every rule that is not device-facing; logout last (it ends the session)."""
    pairs = []
    for rule in app.url_map.iter_rules():
        if is_device_facing(rule.rule):
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            pairs.append((rule, method))
    return sorted(pairs, key=lambda p: (p[0].endpoint == "auth.logout", p[0].rule, p[1]))


def test_every_admin_route_is_listed_with_its_role(app):
    unlisted = sorted({r.endpoint for r, _ in admin_rules(app)} - set(EXPECTED))
    assert not unlisted, f"new routes need an entry in EXPECTED (and a role declaration): {unlisted}"


def test_every_ui_route_allows_and_denies_by_role(app):
    world = build_world(app)
    browsers = {role: signed_in(app, role) for role in ROLES}
    for role in ROLES:
        browser = browsers[role]
        for rule, method in admin_rules(app):
            if rule.endpoint.startswith("api.") or rule.endpoint == "static":
                continue
            need = EXPECTED[rule.endpoint]
            url = url_for_rule(rule, world)
            response = browser.get(url) if method == "GET" else browser.send(method, url, htmx=method == "DELETE")
            refused = response.status_code == 403
            sent_to_login = response.status_code in (302, 401) and "/login" in (
                response.headers.get("Location", "") + response.headers.get("HX-Redirect", ""))
            if rule.endpoint == "auth.logout":  # allowed to every role, and it does send you to the login
                assert sent_to_login and browser.get("/").status_code == 302
            elif need == PUBLIC or role >= need:
                assert not refused and not sent_to_login, (role.name, method, url, response.status_code)
                assert response.status_code < 500, (role.name, method, url, response.text[:300])
            else:
                assert refused, (role.name, method, url, response.status_code, "expected 403")


def test_every_api_route_allows_and_denies_by_token_role(app):
    world = build_world(app)
    tokens = {role: make_token(app, f"{role.name} token", role) for role in ROLES}
    client = app.test_client()
    for role in ROLES:
        for rule, method in admin_rules(app):
            if not rule.endpoint.startswith("api."):
                continue
            need = EXPECTED[rule.endpoint]
            response = client.open(url_for_rule(rule, world), method=method, json={},
                                   headers={"Authorization": f"Bearer {tokens[role]}"}, base_url=HTTPS)
            if need == PUBLIC or role >= need:
                assert response.status_code not in (401, 403), (role.name, method, rule.rule, response.json)
                assert response.status_code < 500, (role.name, method, rule.rule, response.text[:300])
            else:
                assert response.status_code == 403, (role.name, method, rule.rule, response.status_code)
                assert need.name in response.json["error"]


def test_signed_out_requests_go_to_login_and_api_wants_a_token(app):
    world = build_world(app)
    client = app.test_client()
    for rule, method in admin_rules(app):
        if EXPECTED[rule.endpoint] == PUBLIC:
            continue
        url = url_for_rule(rule, world)
        response = client.open(url, method=method, base_url=HTTPS, headers={"Referer": HTTPS + "/"})
        if rule.endpoint.startswith("api."):
            assert response.status_code == 401, (method, url)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        else:
            assert response.status_code == 302, (method, url, response.status_code)
            assert response.headers["Location"].startswith("/login?next="), (method, url)


def test_expired_session_on_an_htmx_request_redirects_the_whole_page(app):
    [device_id] = add_devices(app, [iphone("Phone", "S1")])
    client = app.test_client()
    response = client.get(f"/devices/{device_id}/commands", base_url=HTTPS,
                          headers={"HX-Request": "true", "HX-Current-URL": f"{HTTPS}/devices/{device_id}"})
    assert response.status_code == 401
    assert response.headers["HX-Redirect"] == f"/login?next=/devices/{device_id}"
    assert response.data == b""  # nothing to swap into the fragment


def test_device_facing_routes_are_exempt_from_admin_login_and_csrf(app):
    client = app.test_client()
    device_rules = [r for r in app.url_map.iter_rules() if is_device_facing(r.rule)]
    assert {r.rule.split("/")[1] for r in device_rules} >= {"mdm", "scep", "ca.pem", "enroll"}
    assert DEVICE_FACING_PREFIXES == ("/mdm", "/scep", "/enroll", "/ca.pem")
    for rule in device_rules:
        url = rule.rule.replace("<token>", "no-such-token")
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            response = client.open(url, method=method, data=b"not a plist", base_url=HTTPS)
            assert response.status_code != 401, (method, url)
            assert "/login" not in response.headers.get("Location", ""), (method, url)
            assert b"CSRF" not in response.data, (method, url)
    assert client.get("/ca.pem", base_url=HTTPS).status_code == 200


def test_state_changes_without_the_csrf_token_are_refused(app):
    browser = signed_in(app, Role.Administrator, "boss")
    before = DeviceGroupCount(app)
    assert browser.post("/groups", {"name": "No token"}, csrf=False).status_code == 400
    assert browser.post("/groups", {"name": "Wrong", "csrf_token": "forged"}, csrf=False).status_code == 400
    assert DeviceGroupCount(app) == before
    assert browser.post("/groups", {"name": "With token"}).status_code == 302
    assert DeviceGroupCount(app) == before + 1
    with app.app_context():
        group_id = DeviceGroup.query.filter_by(name="With token").one().id
    # HTMX DELETE: the token travels in the X-CSRFToken header (hx-headers on <body>).
    assert browser.send("DELETE", f"/groups/{group_id}", htmx=True, csrf=False).status_code == 400
    assert DeviceGroupCount(app) == before + 1
    response = browser.delete(f"/groups/{group_id}")
    assert response.status_code == 200 and response.headers["HX-Redirect"] == "/groups"
    assert DeviceGroupCount(app) == before


def DeviceGroupCount(app) -> int:
    with app.app_context():
        return DeviceGroup.query.count()


def test_pages_carry_the_csrf_token_for_htmx_in_a_body_header(app):
    browser = signed_in(app, Role.ReadOnly)
    html = browser.get("/devices").text
    assert '<body hx-headers=\'{"X-CSRFToken": "' in html


def test_session_cookie_is_secure_httponly_and_samesite(app):
    make_admin(app, "cookie", Role.ReadOnly)
    browser = Browser(app)
    browser.get("/login")
    response = browser.post("/login", {"username": "cookie", "password": PASSWORD})
    cookie = next(c for c in response.headers.getlist("Set-Cookie") if c.startswith("mdm_session="))
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_login_redirects_only_within_the_site(app):
    make_admin(app, "nav", Role.ReadOnly)
    for target, expected in (("/devices?q=a", "/devices?q=a"), ("https://evil.example/", "/"),
                             ("//evil.example/x", "/"), ("/\\evil.example", "/"), ("javascript:alert(1)", "/")):
        browser = Browser(app)
        browser.get("/login")
        response = browser.post("/login", {"username": "nav", "password": PASSWORD, "next": target})
        assert response.status_code == 302
        assert response.headers["Location"] == expected, target


def test_login_throttling_gives_one_generic_message(app):
    make_admin(app, "target", Role.Administrator)
    browser = Browser(app)
    browser.get("/login")
    wrong = browser.post("/login", {"username": "target", "password": "wrong password"})
    unknown = browser.post("/login", {"username": "nobody", "password": "wrong password"})
    assert wrong.status_code == unknown.status_code == 401
    message = "Sign-in failed. Check your username and password"
    assert message in wrong.text and message in unknown.text
    for _ in range(4):
        browser.post("/login", {"username": "target", "password": "wrong password"})
    # Locked now for this (account, address): even the right password is refused, with 429, a
    # Retry-After and a message that names no account (tests/ui/test_admin_sessions.py has the rest).
    locked = browser.post("/login", {"username": "target", "password": PASSWORD})
    assert locked.status_code == 429 and "Too many failed sign-ins" in locked.text
    assert int(locked.headers["Retry-After"]) > 0
    with app.app_context():
        assert AuditEvent.query.filter_by(action="admin.login_failed", actor="target").count() == 5
        assert AuditEvent.query.filter_by(action="admin.login_throttled", actor="target").count() == 1
        assert AuditEvent.query.filter_by(action="admin.login", actor="target").count() == 0


def test_disabling_an_account_ends_its_sessions_and_last_admin_is_kept(app):
    boss = signed_in(app, Role.Administrator, "boss")
    helper = signed_in(app, Role.HelpDesk, "helper")
    assert helper.get("/devices").status_code == 200
    with app.app_context():
        helper_id = AdminUser.query.filter_by(username="helper").one().id
        boss_id = AdminUser.query.filter_by(username="boss").one().id
        first_run_admin_id = AdminUser.query.filter_by(username="admin").one().id
    assert boss.post(f"/admins/{first_run_admin_id}", {"action": "disable"}).status_code == 303
    assert boss.post(f"/admins/{helper_id}", {"action": "disable"}).status_code == 303
    assert helper.get("/devices").status_code == 302  # back to the login page
    # The only active Administrator cannot demote themself, and nobody disables themself.
    demote = boss.post(f"/admins/{boss_id}", {"action": "role", "role": "Manager"})
    assert demote.status_code == 422 and "last active Administrator" in demote.text
    assert boss.post(f"/admins/{boss_id}", {"action": "disable"}).status_code == 422
    with app.app_context():
        events = AuditEvent.query.filter_by(action="admin.disable").all()
        assert [(e.actor, e.object_id, e.before["disabled"], e.after["disabled"]) for e in events] == \
            [("boss", str(first_run_admin_id), False, True), ("boss", str(helper_id), False, True)]


def test_role_change_applies_at_once(app):
    boss = signed_in(app, Role.Administrator, "boss")
    worker = signed_in(app, Role.Manager, "worker")
    assert worker.post("/groups", {"name": "Before"}).status_code == 302
    with app.app_context():
        worker_id = AdminUser.query.filter_by(username="worker").one().id
    boss.post(f"/admins/{worker_id}", {"action": "role", "role": "ReadOnly"})
    worker = Browser(app).login("worker")
    assert worker.post("/groups", {"name": "After"}).status_code == 403


def test_first_run_creates_one_administrator_and_prints_its_password(tmp_path, pki_template):
    from mdm.ops.bootstrap import initialise
    app = make_app(tmp_path, pki_template)  # make_app already ran initialise() once
    path = Path(app.instance_path) / "initial-admin-password"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    password = path.read_text().split("password: ")[1].strip()
    with app.app_context():
        assert [(u.username, u.role) for u in AdminUser.query.all()] == [("admin", "Administrator")]
    with app.app_context():
        lines = initialise()  # the second start prints the same credentials and creates nothing
    with app.app_context():
        assert AdminUser.query.count() == 1
    assert f"First administrator: username admin, password {password}" in lines
    browser = Browser(app).login("admin", password)
    browser.get("/account")
    changed = browser.post("/account", {"current_password": password, "new_password": "a new long password",
                                        "confirm_password": "a new long password"})
    assert changed.status_code == 302
    assert not path.exists()  # changed: no longer printed
    with app.app_context():
        assert not any("password" in line for line in initialise())
        db.session.remove()
        db.engine.dispose()
