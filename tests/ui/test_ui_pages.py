"""The admin pages do what they show: device list at 10,000 devices, escaping of what devices report,
groups, audit log filters, enrollment links, commands, dashboard figures, static files."""
from __future__ import annotations

import importlib.util
from datetime import timedelta
from html import unescape
from pathlib import Path

import pytest
from markupsafe import escape
from sqlalchemy import event

from mdm.accounts import Role
from mdm.extensions import db
from mdm.models import AuditEvent, Command, Device, DeviceGroup, audit, utcnow
from ui_support import Browser, add_devices, iphone, signed_in

HOSTILE = ['<script>alert("name")</script>', '"><img src=x onerror=alert(1)>', "{{ 7*7 }}</td><b>bold"]


def test_htmx_is_served_from_the_installed_package(app):
    browser = Browser(app)
    response = browser.get("/static/vendor/htmx.min.js")
    assert response.status_code == 200 and response.mimetype == "text/javascript"
    spec = importlib.util.find_spec("js_lib_htmx")
    installed = Path(list(spec.submodule_search_locations)[0]) / "static" / "htmx" / "htmx.min.js"
    assert response.data == installed.read_bytes()
    page = browser.get("/login").text
    assert '<script src="/static/vendor/htmx.min.js"' in page and "://" not in page.split("htmx.min.js")[0][-80:]
    assert browser.get("/static/ui/app.css").status_code == 200
    assert browser.get("/static/ui/../../accounts.py").status_code == 404


def test_device_list_pages_in_sql_with_10000_devices(app):
    with app.app_context():
        rows = [{"udid": f"U{i:05d}", "serial_number": f"SN{i:05d}", "device_name": f"Phone {i:05d}",
                 "product_name": "iPhone15,2" if i % 2 else "iPad13,1", "os_version": "17.5" if i % 3 else "18.1",
                 "is_supervised": i % 4 == 0, "enrollment_status": "enrolled",
                 "last_seen_at": utcnow() - timedelta(days=i % 40)} for i in range(10_000)]
        db.session.execute(Device.__table__.insert(), rows)
        db.session.commit()
        engine = db.engine
    browser = signed_in(app, Role.ReadOnly)
    statements = []
    listener = lambda conn, cursor, statement, *a: statements.append(statement)  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        page = browser.get("/devices?page=150")
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert page.status_code == 200
    assert "10000 device(s)" in page.text and "page 150 of 200" in page.text
    assert "Phone 07450" in page.text and "Phone 07499" in page.text and "Phone 07500" not in page.text
    device_queries = [s for s in statements if "FROM devices" in s]
    # One COUNT and one LIMIT/OFFSET page (plus the filter menus): never one query per device.
    assert len(device_queries) <= 6, device_queries
    assert any("LIMIT" in s and "OFFSET" in s for s in device_queries)

    assert "10 device(s)" in browser.get("/devices?q=Phone%200012").text  # prefix: Phone 00120-00129
    assert "1 device(s)" in browser.get("/devices?q=SN04242").text
    assert "1 device(s)" in browser.get("/devices?q=U09999").text
    supervised_ipads = browser.get("/devices?platform=iPadOS&supervised=yes&os=17").text
    expected = sum(1 for i in range(10_000) if i % 2 == 0 and i % 4 == 0 and i % 3)
    assert f"{expected} device(s)" in supervised_ipads
    unseen = sum(1 for i in range(10_000) if i % 40 >= 30)
    assert f"{unseen} device(s)" in browser.get("/devices?seen=30").text
    fragment = browser.get("/devices?page=2", htmx=True, headers={"HX-Target": "device-table"})
    assert fragment.status_code == 200 and "<html" not in fragment.text and "Phone 00050" in fragment.text
    assert "page: a number" in browser.get("/devices?page=x").text


@pytest.mark.parametrize("hostile", HOSTILE)
def test_device_reported_text_is_escaped_everywhere(app, hostile):
    [device_id] = add_devices(app, [iphone(hostile, "EVIL1", os_version=hostile,
                                           inventory={"DeviceName": hostile, hostile: {"k": hostile}})])
    with app.app_context():
        group = DeviceGroup(name="Plain group")
        db.session.add(group)
        db.session.flush()
        db.session.execute(db.text("INSERT INTO device_group_members VALUES (:g, :d)"), {"g": group.id, "d": device_id})
        audit("device.auth_failed", actor="device", source="10.0.0.9", object_type="device", object_id=device_id,
              detail=f"signature by {hostile}")
        db.session.commit()
        group_id = group.id
    browser = signed_in(app, Role.Administrator, "boss")
    for path in ("/devices", f"/devices/{device_id}", f"/groups/{group_id}", "/audit", f"/devices?q=EVIL"):
        page = browser.get(path).text
        assert hostile not in page, path
        assert str(escape(hostile)) in page, path


def test_groups_create_rename_members_delete_audited(app):
    ids = add_devices(app, [iphone("Alpha", "A1"), {"device_name": "Mac", "serial_number": "M1",
                                                     "product_name": "Mac14,2"}])
    browser = signed_in(app, Role.Manager, "mgr")
    created = browser.post("/groups", {"name": "Sales", "description": "the sales team"})
    assert created.status_code == 302
    group_id = int(created.headers["Location"].rsplit("/", 1)[1])
    assert browser.post("/groups", {"name": "sales"}).status_code == 422  # names are unique, any case
    assert "already exists" in browser.post("/groups", {"name": "SALES"}).text
    candidates = browser.get(f"/groups/{group_id}/candidates?q=M", htmx=True).text
    assert "Mac" in candidates and "Alpha" not in candidates
    assert browser.post(f"/groups/{group_id}/members", {"device_id": [str(i) for i in ids]}).status_code == 303
    page = browser.get(f"/groups/{group_id}").text
    assert "Members (2)" in page and "macOS" in page and "iOS" in page
    assert browser.post(f"/groups/{group_id}", {"name": "Sales EU", "description": "EU"}).status_code == 302
    assert browser.delete(f"/groups/{group_id}/members/{ids[1]}").status_code == 200
    assert "Members (1)" in browser.get(f"/groups/{group_id}").text
    assert browser.delete(f"/groups/{group_id}").headers["HX-Redirect"] == "/groups"
    with app.app_context():
        assert DeviceGroup.query.count() == 0
        actions = [(e.action, e.actor) for e in AuditEvent.query.filter(AuditEvent.object_type == "device_group")
                   .order_by(AuditEvent.id)]
        assert [a for a, _ in actions] == ["device_group.create", "device_group.add", "device_group.rename",
                                           "device_group.update", "device_group.remove", "device_group.delete"]
        assert {actor for _, actor in actions} == {"mgr"}
        rename = AuditEvent.query.filter_by(action="device_group.rename").one()
        assert (rename.before, rename.after, rename.source) == ({"name": "Sales"}, {"name": "Sales EU"}, "127.0.0.1")


def test_bulk_add_to_group_needs_manager_and_bulk_commands_need_help_desk(app):
    ids = add_devices(app, [iphone(f"P{i}", f"B{i}") for i in range(3)])
    with app.app_context():
        db.session.add(DeviceGroup(name="Bulk"))
        db.session.commit()
        group_id = DeviceGroup.query.one().id
    helper = signed_in(app, Role.HelpDesk, "helper")
    refused = helper.post("/devices/bulk", {"action": "add_to_group", "group_id": group_id,
                                            "device_id": [str(i) for i in ids]}, htmx=True)
    assert refused.status_code == 403
    sent = helper.post("/devices/bulk", {"action": "command:DeviceInformation", "device_id": [str(i) for i in ids]},
                       htmx=True)
    assert sent.status_code == 200 and "Queued DeviceInformation for 3 device(s)" in sent.text
    manager = signed_in(app, Role.Manager, "mgr")
    added = manager.post("/devices/bulk", {"action": "add_to_group", "group_id": group_id,
                                           "device_id": [str(i) for i in ids[:2]]}, htmx=True)
    assert "Added 2 device(s) to Bulk" in added.text
    with app.app_context():
        assert Command.query.filter_by(request_type="DeviceInformation", queued_by="helper").count() == 3
        assert db.session.get(DeviceGroup, group_id).devices.count() == 2


def bulk_post(browser, action: str, ids, confirm: str | None = None, htmx: bool = True):
    data = {"action": action, "device_id": [str(i) for i in ids]}
    if confirm is not None:
        data["confirm"] = confirm
    return browser.post("/devices/bulk", data, htmx=htmx)


def queued(app, request_type: str) -> int:
    with app.app_context():
        return Command.query.filter_by(request_type=request_type).count()


def test_bulk_erase_needs_an_administrator_and_the_typed_action_and_count(app):
    ids = add_devices(app, [iphone(f"E{i}", f"ER{i}") for i in range(12)])
    helper = signed_in(app, Role.HelpDesk, "helper")
    refused = bulk_post(helper, "command:EraseDevice", ids, confirm="erase 12 devices")
    assert refused.status_code == 403 and "Erasing more than one device needs the Administrator role" in refused.text
    boss = signed_in(app, Role.Administrator, "boss")
    asked = bulk_post(boss, "command:EraseDevice", ids)             # one click is not enough any more
    assert asked.status_code == 422
    assert "erase 12 devices" in asked.text and 'name="confirm"' in asked.text and "EraseDevice" in asked.text
    wrong = bulk_post(boss, "command:EraseDevice", ids, confirm="erase 11 devices")
    assert wrong.status_code == 422 and 'does not match: type "erase 12 devices"' in unescape(wrong.text)
    assert bulk_post(boss, "command:EraseDevice", ids, confirm="yes").status_code == 422
    assert queued(app, "EraseDevice") == 0
    # Without HTMX (no script): refused the same way, with the message flashed on the device list.
    plain = bulk_post(boss, "command:EraseDevice", ids, htmx=False)
    assert plain.status_code == 302 and queued(app, "EraseDevice") == 0
    assert 'type "erase 12 devices" to confirm' in unescape(boss.get("/devices").text)
    done = bulk_post(boss, "command:EraseDevice", ids, confirm="  Erase 12  devices ")
    assert done.status_code == 200 and "Queued EraseDevice for 12 device(s)" in done.text
    assert queued(app, "EraseDevice") == 12
    with app.app_context():
        event_ = AuditEvent.query.filter_by(action="command.bulk_queue").one()
        assert event_.actor == "boss"
        assert event_.after == {"request_type": "EraseDevice", "devices": 12, "confirmed": "erase 12 devices"}


@pytest.mark.parametrize("request_type, phrase", [("DeviceLock", "lock 3 devices"),
                                                  ("RestartDevice", "restart 3 devices")])
def test_bulk_lock_and_restart_need_the_typed_confirmation_help_desk_may_send_them(app, request_type, phrase):
    ids = add_devices(app, [iphone(f"L{i}", f"LK{i}") for i in range(3)])
    helper = signed_in(app, Role.HelpDesk, "helper")
    asked = bulk_post(helper, f"command:{request_type}", ids)
    assert asked.status_code == 422 and phrase in asked.text and queued(app, request_type) == 0
    done = bulk_post(helper, f"command:{request_type}", ids, confirm=phrase)
    assert done.status_code == 200 and queued(app, request_type) == 3


def test_one_device_or_a_harmless_command_needs_no_typed_confirmation(app):
    ids = add_devices(app, [iphone(f"O{i}", f"ON{i}") for i in range(2)])
    helper = signed_in(app, Role.HelpDesk, "helper")
    assert bulk_post(helper, "command:EraseDevice", ids[:1]).status_code == 200    # as from the device page
    assert bulk_post(helper, "command:SecurityInfo", ids).status_code == 200
    assert queued(app, "EraseDevice") == 1 and queued(app, "SecurityInfo") == 2
    # Duplicated ids count once: the phrase names the devices that will really receive it.
    asked = bulk_post(helper, "command:RestartDevice", ids + ids)
    assert "restart 2 devices" in asked.text


def test_queue_a_command_from_the_device_page(app):
    [device_id] = add_devices(app, [iphone("Phone", "C1")])
    reader = signed_in(app, Role.ReadOnly, "reader")
    assert 'name="request_type"' not in reader.get(f"/devices/{device_id}").text
    helper = signed_in(app, Role.HelpDesk, "helper")
    assert 'name="request_type"' in helper.get(f"/devices/{device_id}").text
    fragment = helper.post(f"/devices/{device_id}/commands", {"request_type": "SecurityInfo"}, htmx=True)
    assert fragment.status_code == 200 and "SecurityInfo" in fragment.text and "queued" in fragment.text
    bad = helper.post(f"/devices/{device_id}/commands", {"request_type": "Shutdown"}, htmx=True)
    assert bad.status_code == 422 and "is not one of" in bad.text
    with app.app_context():
        command = Command.query.filter_by(device_id=device_id).one()
        assert (command.request_type, command.queued_by, command.status) == ("SecurityInfo", "helper", "queued")
        event_ = AuditEvent.query.filter_by(action="command.queue").one()
        assert event_.after["command_uuid"] == command.uuid and event_.actor == "helper"


def test_audit_log_filters_including_device_auth_failures(app):
    with app.app_context():
        audit("device.auth_failed", actor="device", source="192.0.2.7", object_type="device", object_id="UDID-X",
              detail="certificate not issued by our CA")
        audit("device_group.create", actor="alice", source="198.51.100.1", object_type="device_group", object_id=1,
              after={"name": "G"})
        db.session.commit()
    browser = signed_in(app, Role.ReadOnly)
    failures = browser.get("/audit?action=device.auth_failed").text
    assert "certificate not issued by our CA" in failures and "device_group.create" not in failures.split("<tbody>")[1]
    by_actor = browser.get("/audit?actor=alice").text
    assert "198.51.100.1" in by_actor and "192.0.2.7" not in by_actor
    admin_prefix = browser.get("/audit?action=admin.").text.split("<tbody>")[1]
    assert "admin.login" in admin_prefix and "device.auth_failed" not in admin_prefix
    assert "since: a date" in browser.get("/audit?since=yesterday").text
    tomorrow = (utcnow() + timedelta(days=1)).strftime("%Y-%m-%d")
    assert "0 event(s)" in browser.get(f"/audit?since={tomorrow}").text


def test_enrollment_links_create_qr_revoke(app):
    reader = signed_in(app, Role.ReadOnly, "reader")
    manager = signed_in(app, Role.Manager, "mgr")
    response = manager.post("/enrollment", {"description": "Sales", "expires_in_days": "7", "max_uses": "5"})
    assert response.status_code == 303
    with app.app_context():
        from mdm.enroll.tokens import list_tokens
        [token] = list_tokens()
        assert (token.description, token.max_uses, token.created_by) == ("Sales", 5, "mgr")
        token_id, secret = token.id, token.token
    page = manager.get("/enrollment").text
    assert f"https://localhost:8443/enroll/{secret}" in page and "0 of 5" in page
    assert secret not in reader.get("/enrollment").text  # the link is a credential: Managers only
    qr = manager.get(f"/enrollment/{token_id}/qr.svg")
    assert qr.mimetype == "image/svg+xml" and qr.data.startswith(b"<svg")
    assert manager.post("/enrollment", {"max_uses": "0"}).status_code == 422
    assert manager.post(f"/enrollment/{token_id}/revoke").status_code == 303
    assert "revoked" in manager.get("/enrollment").text
    assert app.test_client().get(f"/enroll/{secret}", base_url="https://localhost").status_code in (403, 404)


def test_dashboard_figures_link_to_filtered_lists(app):
    now = utcnow()
    add_devices(app, [iphone("Fresh", "D1", last_seen_at=now),
                      iphone("Week", "D2", last_seen_at=now - timedelta(days=8), is_supervised=False),
                      iphone("Month", "D3", last_seen_at=now - timedelta(days=31)),
                      iphone("Gone", "D4", enrollment_status="unenrolled")])
    browser = signed_in(app, Role.ReadOnly)
    page = browser.get("/").text
    figures = {label: int(n) for n, label in
               __import__("re").findall(r'<span class="n">(\d+)</span><span class="l">([^<]+)</span>', page)}
    assert figures["Enrolled devices"] == 3 and figures["Supervised"] == 2
    assert figures["Not seen for 7 days"] == 2 and figures["Not seen for 30 days"] == 1
    assert 'href="/devices?seen=30"' in page
    assert "Month" in browser.get("/devices?seen=30").text and "Week" not in browser.get("/devices?seen=30").text


def test_settings_show_the_catalog_and_sync_now_reports_failure(app):
    import time
    from ui_support import load_current_catalog
    load_current_catalog(app)
    admin = signed_in(app, Role.Administrator, "boss")
    page = admin.get("/settings").text
    assert "test: shifted snapshot" in page and "never" not in page.split("Last successful sync")[1][:80]
    app.config["CATALOG_URL"] = "https://127.0.0.1:9/unreachable"  # refused at once
    started = admin.post("/settings/catalog/sync", htmx=True)
    assert started.status_code == 200 and 'id="sync-status"' in started.text
    for _ in range(100):
        fragment = admin.get("/settings/catalog/sync", htmx=True).text
        if "Syncing" not in fragment:
            break
        time.sleep(0.1)
    assert "Sync failed" in fragment and "the cached catalog stays in use" in fragment
    assert "test: shifted snapshot" in admin.get("/settings").text  # the cache was kept
    reader = signed_in(app, Role.ReadOnly, "reader")
    assert "Sync now" not in reader.get("/settings").text
    assert reader.post("/settings/catalog/sync", htmx=True).status_code == 403


def test_push_certificate_csr_and_upload_errors(app):
    from cryptography import x509
    admin = signed_in(app, Role.Administrator, "boss")
    admin.get("/settings")
    csr = admin.post("/settings/push/csr")
    assert csr.status_code == 200 and "attachment" in csr.headers["Content-Disposition"]
    assert x509.load_pem_x509_csr(csr.data).is_signature_valid
    from io import BytesIO
    bad = admin.post("/settings/push/certificate", {"certificate": (BytesIO(b"not a certificate"), "push.pem")},
                     content_type="multipart/form-data")
    assert bad.status_code == 422 and 'role="alert"' in bad.text
    assert "Choose the certificate file" in admin.post("/settings/push/certificate", {}).text
    with app.app_context():
        assert AuditEvent.query.filter_by(action="push_certificate.csr", actor="boss").count() == 1
