"""Status that tells the truth (issue 9): a stale or unreachable release catalog is announced on every
admin page and counted on the dashboard; Settings tells a packaged snapshot from a sync with Apple; a
result whose DeclarativeManagement command still waits in the queue says so, and why.

Real components throughout: the packaged snapshot (it expired on 2026-11-20, so it is expired on any
day these tests run), the catalog sync against an unreachable address, the local HTTP/2 APNs stand-in
(tests/support/apns_server.py) and the device protocol endpoints with a test device identity.
"""
from __future__ import annotations

import datetime as dt
import html
import re
from pathlib import Path

import pytest

from mdm.push import apns as push
from mdm.accounts import Role
from mdm.ddm import catalog
from mdm.ddm.models import PolicyBinding
from mdm.ddm.plan import recompute
from mdm.ddm.results import results_for_device
from mdm.extensions import db
from mdm.models import Command, Device, utcnow
from apns_server import FakeAPNs
from apps import plain_key_file
from ui_support import iphone, signed_in

APPLE = "https://gdmf.apple.com/v2/pmv"
ADMIN_PAGES = ["/", "/devices", "/groups", "/patch-management", "/enrollment", "/settings", "/audit"]


def figures(page: str) -> dict[str, int]:
    return {label: int(n) for n, label in
            re.findall(r'<span class="n">(\d+)</span><span class="l">([^<]+)</span>', page)}


def banner(page: str) -> str | None:
    start = page.find('id="catalog-banner"')
    return None if start < 0 else " ".join(html.unescape(page[start:page.index("</div>", start)]).split())


def current_feed(days_since_newest: int = 20) -> dict:
    """The packaged snapshot with its dates moved so the newest release came out ``days_since_newest`` ago."""
    data = catalog.load_feed_file(catalog.SNAPSHOT_PATH)
    newest = max(dt.date.fromisoformat(e["PostingDate"][:10]) for e in data["PublicAssetSets"]["iOS"])
    return catalog.shift_feed(data, (utcnow().date() - newest).days - days_since_newest)


def bind_devices(app, *specs) -> dict[str, int]:
    """Enrolled devices bound to one enforcing policy, plans computed now. Returns {name: id}."""
    from mdm.ddm.policies import create_policy
    with app.app_context():
        policy = create_policy({"name": "Everyone", "enforce": True, "grace_days": 7, "local_time": "09:00"})
        ids = {}
        for spec in specs:
            device = Device(udid=f"U-{spec['device_name']}", enrollment_status="enrolled", **spec)
            db.session.add(device)
            db.session.flush()
            db.session.add(PolicyBinding(policy_id=policy.id, device_id=device.id))
            ids[spec["device_name"]] = device.id
        db.session.commit()
        recompute()
    return ids


# ---- the catalog ------------------------------------------------------------------------------------

def test_an_expired_packaged_snapshot_is_announced_on_every_page_and_counted(app):
    ids = bind_devices(app, iphone("Known model", "K1", "18.0"), iphone("Future model", "F1", "18.0",
                                                                          product_name="iPhone99,1",
                                                                          software_update_device_id="iPhone99,1"))
    with app.app_context():
        assert catalog.catalog_health().origin == "snapshot"      # recompute loaded the packaged snapshot
    browser = signed_in(app, Role.ReadOnly)
    for path in ADMIN_PAGES:
        text = banner(browser.get(path).text)
        assert text is not None, path
        assert "Every release in the catalog has expired (latest expiration 2026-11-20)" in text
        assert "1 device without a patch target because of it" in text
        assert "Catalog in use: packaged snapshot loaded at" in text and "no sync from Apple has succeeded" in text
    counts = figures(browser.get("/").text)
    assert counts["No target: catalog stale"] == 1 and counts["No target: model unknown"] == 1
    page = browser.get(f"/devices/{ids['Known model']}").text
    assert "every release for this model has expired (catalog stale)" in page
    # Signed out, nothing is said (the login page is not an admin page).
    assert 'id="catalog-banner"' not in app.test_client().get("/login", base_url="https://localhost").text


def test_settings_tell_a_packaged_snapshot_from_a_sync_with_apple(app):
    browser = signed_in(app, Role.Administrator)
    with app.app_context():
        catalog.ensure_catalog()
    page = browser.get("/settings").text
    origin = page.split('id="catalog-origin">')[1].split("</dd>")[0]
    assert origin.startswith("packaged snapshot loaded at") and "no sync from Apple has succeeded" in origin
    assert "never (packaged snapshot only)" in page
    synced_at = utcnow().replace(microsecond=0) - dt.timedelta(hours=2)
    with app.app_context():
        catalog.apply_feed(current_feed(), APPLE, now=synced_at)   # what a sync from Apple stores
    page = browser.get("/settings").text
    origin = page.split('id="catalog-origin">')[1].split("</dd>")[0]
    assert origin == f"synced from Apple at {synced_at:%Y-%m-%d %H:%M} UTC"
    assert "never (packaged snapshot only)" not in page
    assert banner(page) is None                                   # current and fresh: nothing to announce


def test_apple_unreachable_while_the_snapshot_is_in_use_is_announced_with_the_error(app):
    with app.app_context():
        catalog.apply_feed(current_feed(), "snapshot:gdmf-pmv.json")   # a snapshot that has not expired
        assert catalog.catalog_health().problem is None
        with pytest.raises(catalog.CatalogError):
            catalog.sync_catalog(url="https://127.0.0.1:9/v2/pmv")     # nothing listens there
    text = banner(signed_in(app, Role.ReadOnly).get("/devices").text)
    assert text is not None and "Apple's release catalog is unreachable" in text
    assert "Last sync error: https://127.0.0.1:9/v2/pmv: ConnectError" in text


def test_a_sync_that_stopped_succeeding_a_while_ago_is_announced(app):
    with app.app_context():
        catalog.apply_feed(current_feed(), APPLE, now=utcnow() - dt.timedelta(days=10))
        assert "has not been refreshed for 10 days" in catalog.catalog_health().problem
        catalog.apply_feed(current_feed(), APPLE)                       # a sync succeeds again
        assert catalog.catalog_health().problem is None


def test_an_empty_catalog_is_announced(app):
    with app.app_context():
        health = catalog.catalog_health()
    assert health.origin is None and health.origin_text == "no release catalog loaded yet"
    assert health.problem.startswith("The release catalog is empty")


# ---- a result whose DeclarativeManagement command is still queued -----------------------------------

@pytest.fixture
def apns(app, tmp_path):
    """A local APNs stand-in the server pushes to (so the placeholder identity is not the problem)."""
    certs = Path(app.config["CERTS_DIR"])
    server = FakeAPNs(str(certs / "tls.pem"), plain_key_file(app, "tls.key", tmp_path), str(certs / "ca.pem"))
    server.__enter__()
    app.config.update(APNS_GATEWAY=server.url, APNS_CA_FILE=str(certs / "ca.pem"), APNS_BACKOFF_SECONDS=600,
                      APNS_MAX_ATTEMPTS=1)
    yield server
    push.shutdown(app)
    server.__exit__(None, None, None)


def _bound_phone(app, client):
    """A real enrollment through the check-in endpoint, then a policy bound: a DeclarativeManagement
    command is queued for it."""
    from device_identity import DeviceIdentity, checkin_message
    from mdm.protocol.checkin import server_topic
    from mdm.ddm.policies import create_policy
    with app.app_context():
        catalog.apply_feed(current_feed(), APPLE)
        topic = server_topic()
    ident = DeviceIdentity(app)
    for message_type in ("Authenticate", "TokenUpdate"):
        message = checkin_message(ident.udid, message_type, Topic=topic)
        assert ident.put(client, "/mdm/checkin", message).status_code == 200
    with app.app_context():
        device = Device.query.filter_by(udid=ident.udid).one()
        device.os_version, device.is_supervised = "18.0", True
        policy = create_policy({"name": "Everyone", "enforce": True, "grace_days": 7, "local_time": "09:00"})
        db.session.add(PolicyBinding(policy_id=policy.id, device_id=device.id))
        db.session.commit()
        recompute([device.id])
        assert Command.query.filter_by(device_id=device.id, request_type="DeclarativeManagement",
                                       status="queued").count() == 1
        return ident, device.id, device.push_token


def detail_of(app, device_id) -> tuple[str, str]:
    with app.app_context():
        [result] = results_for_device(db.session.get(Device, device_id), with_history=False)
        return result.state, result.detail


def test_queued_with_no_usable_push_certificate_says_so(app, client):
    ident, device_id, _ = _bound_phone(app, client)
    state, detail = detail_of(app, device_id)
    assert state == "Pending"
    assert detail.startswith("queued — waiting for the device; pushes cannot work: no Apple push certificate")
    assert "sent" not in detail
    page = signed_in(app, Role.ReadOnly).get(f"/devices/{device_id}").text
    assert "queued — waiting for the device; pushes cannot work" in page


def test_queued_after_the_last_push_failed_says_why_then_sent_once_the_device_fetched_it(app, client, apns):
    ident, device_id, token = _bound_phone(app, client)
    apns.answer(token, (503, "ServiceUnavailable"))
    with app.app_context():
        [result] = push.send_now([device_id])
        assert result.status == "failed"
    state, detail = detail_of(app, device_id)
    assert (state, detail) == ("Pending", "queued — waiting for the device; the last push to it failed: "
                                          "ServiceUnavailable")

    apns.answer(token, 200)
    with app.app_context():
        [result] = push.send_now([device_id])
        assert result.status == "sent"
    state, detail = detail_of(app, device_id)
    assert re.fullmatch(r"queued — waiting for the device; last pushed at \d{4}-\d\d-\d\d \d\d:\d\d UTC", detail)

    # The device wakes and fetches its queue: the initial inventory commands first, then the sync command.
    response = ident.connect(client)
    import plistlib
    while response.data:
        command = plistlib.loads(response.data)
        if command["Command"]["RequestType"] == "DeclarativeManagement":
            break
        response = ident.connect(client, "Acknowledged", CommandUUID=command["CommandUUID"])
    else:
        pytest.fail("the DeclarativeManagement command was never delivered")
    state, detail = detail_of(app, device_id)
    assert (state, detail) == ("Pending", "sent; no status report yet")
