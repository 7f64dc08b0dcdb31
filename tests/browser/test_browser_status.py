"""Status that tells the truth, in real Chromium (Debian's package, driven by Playwright) against the real
TLS server: the stale-catalog banner on every page and the dashboard's count of devices left without a
target; after a sync the banner is gone and Settings says "synced from Apple"; a device page gives the
deadline in the device's own zone or says "device time zone unknown", and a result whose sync command
still waits says "queued — waiting for the device" and why.
"""
from __future__ import annotations

import uuid
from pathlib import Path

from playwright.sync_api import expect


def phones_under_a_policy(app, zones: dict) -> dict[str, int]:
    """iPhones on 18.0 bound to one enforcing policy, plans computed (this loads the packaged snapshot)."""
    from mdm.ddm.models import PolicyBinding
    from mdm.ddm.plan import recompute
    from mdm.ddm.policies import create_policy
    from mdm.extensions import db
    from mdm.models import Device
    with app.app_context():
        policy = create_policy({"name": "Everyone", "enforce": True, "grace_days": 7, "local_time": "09:00"})
        ids = {}
        for name, zone in zones.items():
            device = Device(udid=f"U-{name}", device_name=name, product_name="iPhone15,2", model_name="iPhone",
                            software_update_device_id="iPhone15,2", os_version="18.0", is_supervised=True,
                            enrollment_status="enrolled", time_zone=zone, push_token="ab" * 32,
                            push_magic=str(uuid.uuid4()).upper())
            db.session.add(device)
            db.session.flush()
            db.session.add(PolicyBinding(policy_id=policy.id, device_id=device.id))
            ids[name] = device.id
        db.session.commit()
        recompute()
    return ids


def sync_from_apple(app) -> None:
    """What a successful sync from Apple stores: the feed (dates moved to today) under Apple's URL."""
    import datetime as dt
    from mdm.ddm import catalog
    from mdm.ddm.plan import recompute
    from mdm.models import utcnow
    data = catalog.load_feed_file(catalog.SNAPSHOT_PATH)
    newest = max(dt.date.fromisoformat(e["PostingDate"][:10]) for e in data["PublicAssetSets"]["iOS"])
    with app.app_context():
        catalog.apply_feed(catalog.shift_feed(data, (utcnow().date() - newest).days - 20), catalog.DEFAULT_URL)
        recompute()


def test_catalog_banner_device_zones_and_queued_results_in_chromium(live_server, browser):
    base, app = live_server.url, live_server.app
    ids = phones_under_a_policy(app, {"Tokyo iPhone": "Asia/Tokyo", "Zoneless iPhone": None})
    password = (Path(app.instance_path) / "initial-admin-password").read_text().split("password: ")[1].strip()

    page = browser.new_context(ignore_https_errors=True, viewport={"width": 1360, "height": 900}).new_page()
    page.goto(base + "/login")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", password)
    page.click("button:has-text('Sign in')")

    # The packaged snapshot expired (2026-11-20) and nothing was synced: every page says so.
    banner = page.locator("#catalog-banner")
    expect(banner).to_contain_text("Every release in the catalog has expired")
    expect(banner).to_contain_text("2 devices without a patch target because of it")
    expect(page.locator("#no-target-catalog .n")).to_have_text("2")
    for path in ("/devices", "/patch-management", "/settings"):
        page.goto(base + path)
        expect(page.locator("#catalog-banner")).to_contain_text("packaged snapshot loaded at")
    expect(page.locator("#catalog-origin")).to_contain_text("packaged snapshot loaded at")

    # A sync from Apple: the banner goes, Settings says where the catalog came from.
    sync_from_apple(app)
    page.goto(base + "/settings")
    expect(page.locator("#catalog-origin")).to_contain_text("synced from Apple at")
    expect(page.locator("#catalog-banner")).to_have_count(0)
    page.goto(base + "/")
    expect(page.locator("#no-target-catalog .n")).to_have_text("0")

    # Deadlines in the device's zone, or an honest "unknown"; the sync command is still queued (no usable
    # push certificate), and the result says so instead of "sent".
    page.goto(f"{base}/devices/{ids['Tokyo iPhone']}")
    expect(page.locator("#device-time-zone")).to_have_text("Asia/Tokyo")
    results = page.locator("#policy-results")
    expect(results.locator(".deadline-zone")).to_contain_text("Asia/Tokyo")
    expect(results).to_contain_text("queued — waiting for the device; pushes cannot work")
    page.goto(f"{base}/devices/{ids['Zoneless iPhone']}")
    expect(page.locator("#device-time-zone")).to_contain_text("device time zone unknown")
    expect(page.locator("#policy-results td.countdown")).to_have_text("device time zone unknown")
