"""Software Update Enforcement in real Chromium against the real TLS server: the form with a version
picked from the catalog, an error placed at the field it names, binding a mixed device group, and the
results and preview of simulated iPhones (which enforcement acts first next to a patch policy)."""
from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from playwright.sync_api import expect

from browser_pages import enroll_simulated_iphones, sign_in
from ui_support import load_current_catalog


def test_enforcement_policy_in_chromium(live_server, browser):
    base = live_server.url
    app = live_server.app
    load_current_catalog(app)
    enroll_simulated_iphones(live_server, ["Front desk iPhone", "Warehouse iPhone"])
    with app.app_context():
        from mdm.ddm.groups import add_devices, create_group
        from mdm.ddm.policies import bind_policy, create_policy
        from mdm.extensions import db
        from mdm.models import Device
        group = create_group("Shop floor", actor="test")
        add_devices(group.id, [d.udid for d in Device.query], actor="test")
        patch = create_policy({"name": "Monthly patch", "enforce": True, "grace_days": 30, "local_time": "09:00"})
        bind_policy(patch, groups=[group.id])
        db.session.commit()
    password = (Path(app.instance_path) / "initial-admin-password").read_text().split("password: ")[1].strip()

    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1360, "height": 900})
    page = context.new_page()
    sign_in(page, base, "admin", password)
    page.click("nav a:has-text('Update Enforcement')")
    expect(page.locator("#enforcement-policies")).to_contain_text("No enforcement policies")
    page.click("#new-enforcement")

    # The version picker offers what the catalog lists; a date in the past is refused at its field.
    options = page.locator("#catalog-versions option")
    expect(options.first).to_have_attribute("value", re.compile(r"^\d+\.\d+"))
    versions = [options.nth(i).get_attribute("value") for i in range(options.count())]
    assert "26.6.1" in versions
    page.fill("input[name=name]", "26.6.1 before the audit")
    page.fill("input[name=target_version]", "26.6.1")
    page.fill("input[name=enforce_at]", "2020-01-10T18:00")
    page.click("#save-enforcement")
    expect(page.locator("#error-enforce_at")).to_contain_text("must be in the future")
    expect(page.locator("input[name=name]")).to_have_value("26.6.1 before the audit")   # nothing typed is lost
    soon = (dt.date.today() + dt.timedelta(days=2)).isoformat() + "T18:00"
    page.fill("input[name=enforce_at]", soon)
    page.fill("input[name=details_url]", "https://intranet.example/ios")
    page.click("#save-enforcement")
    expect(page.locator(".flash")).to_contain_text("Enforcement policy 26.6.1 before the audit created")

    # Bind the group: both iPhones get the declaration; the earlier date acts before the patch policy's.
    page.select_option("select[name=group]", label="Shop floor")
    page.click("#bind")
    expect(page.locator("#bindings")).to_contain_text("Shop floor")
    rows = page.locator("#enforcement-results tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.first.locator(".state")).to_have_text(re.compile("Pending|Scheduled"))
    expect(rows.first.locator(".effective")).to_contain_text("acts first on enforcement policy '26.6.1 before the audit'")
    expect(rows.first.locator(".effective")).to_contain_text("then patch policy 'Monthly patch'")
    preview = page.locator("#enforcement-preview")
    expect(preview).to_contain_text(f"sent: 26.6.1 by {soon}:00")
    expect(preview).to_contain_text("1. enforcement policy '26.6.1 before the audit'")

    # Back on the list: the policy with its target and scope.
    page.goto(base + "/patch-management/enforcement")
    expect(page.locator("#enforcement-policies")).to_contain_text("26.6.1 before the audit")
    expect(page.locator("#enforcement-policies")).to_contain_text(soon.replace("T", " "))
    context.close()
