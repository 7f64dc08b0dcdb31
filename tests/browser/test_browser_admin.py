"""The admin UI in real Chromium (Debian's package, driven by Playwright) against the real TLS server:
first sign-in, default rings, a policy form with its in-place validation, binding a device group,
a simulated iPhone's Policy Results, and a Read Only account refused policy edits.

Screenshots for the README: ``UPDATE_SCREENSHOTS=1 pytest tests/browser`` writes docs/screenshots/*.png.
"""
from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import expect

from browser_pages import enroll_simulated_iphones, shot, sign_in
from ui_support import load_current_catalog


def test_admin_journey_in_chromium(live_server, browser, tmp_path):
    base = live_server.url
    load_current_catalog(live_server.app)
    enroll_simulated_iphones(live_server, ["Front desk iPhone", "Warehouse iPhone", "<b>Guest</b> iPhone"])
    password_file = Path(live_server.app.instance_path) / "initial-admin-password"
    password = password_file.read_text().split("password: ")[1].strip()

    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1360, "height": 900})
    page = context.new_page()

    # First sign-in with the credentials the first run printed; the dashboard counts the devices.
    page.goto(base + "/devices")
    expect(page).to_have_url(re.compile(r"/login\?next=/devices$"))
    sign_in(page, None, "admin", password)       # on the login page we were sent to
    expect(page).to_have_url(base + "/devices")  # and back where we wanted to go
    expect(page.locator("table.devices")).to_contain_text("Front desk iPhone")
    expect(page.locator("table.devices")).to_contain_text("<b>Guest</b> iPhone")  # shown as text, not markup
    page.fill("#device-filters input[name=q]", "Ware")                             # live search (HTMX)
    expect(page.locator("table.devices tbody tr")).to_have_count(1)
    expect(page.locator("table.devices")).to_contain_text("Warehouse iPhone")
    expect(page).to_have_url(re.compile(r"/devices\?q=Ware"))

    # A device group with the simulated iPhones, made in the UI.
    page.goto(base + "/groups")
    page.fill("input[name=name]", "Pilot phones")
    page.click("button:has-text('Create group')")
    page.fill("input[aria-label='Find devices to add']", "Front")
    page.check("#candidates input[type=checkbox]")
    page.click("#candidates button:has-text('Add selected')")
    expect(page.locator("h2:has-text('Members')")).to_have_text("Members (1)")

    # Patch Management: no policies yet, so the defaults button is offered; it loads the four rings.
    page.goto(base + "/patch-management")
    page.click("#load-defaults")
    expect(page.locator("table.policies")).to_contain_text("Vanguard (iOS)")
    expect(page.locator("table.policies")).to_contain_text("Late Adoption (iOS)")

    # "+" opens the platform chooser: iOS now, the others not yet.
    page.click("a[aria-label='New patch policy']")
    expect(page.locator(".chooser")).to_contain_text("Not available yet")
    page.click(".chooser a:has-text('iOS')")
    page.fill("#f-name", "Pilot iPhones")
    page.fill("#f-deferral_days", "3")
    expect(page.locator("#f-grace_days")).to_be_hidden()       # dependent fields wait for enforcement
    page.check("#f-enforce")
    expect(page.locator("#f-grace_days")).to_be_visible()
    page.fill("#f-grace_days", "5")
    # The exploited-vulnerability grace may not exceed the grace period: said in place, then fixed.
    expect(page.locator("input[name=deadline_anchor][value=first_missed]")).to_be_checked()
    page.fill("#f-exploited_grace_days", "9")
    expect(page.locator("#err-exploited_grace_days")).to_contain_text("between 0 and the Grace period (5 days)")
    page.fill("#f-exploited_grace_days", "2")
    expect(page.locator("#err-exploited_grace_days")).to_be_empty()
    page.fill("#f-local_time", "18:30")
    page.fill("#f-details_url", "https://intranet.example.com/ios")
    page.select_option("#f-auto_download", "Allowed")
    page.select_option("#f-auto_install_os", "AlwaysOn")
    # The invalid combination is explained in place, as the admin chooses, before any save.
    expect(page.locator("#err-auto_install_os")).to_contain_text("Invalid global settings declaration")
    page.locator("#f-enforce").scroll_into_view_if_needed()
    shot(page, "policy-form", tmp_path, full_page=True)
    page.select_option("#f-auto_download", "AlwaysOn")
    expect(page.locator("#err-auto_install_os")).to_be_empty()
    page.click("#save-policy")
    expect(page.locator(".flash")).to_contain_text("Policy Pilot iPhones saved")
    policy_url = page.url.split("?")[0]

    # Device Groups tab: bind the group.
    page.select_option("#bind-group", label="Pilot phones")
    page.click("#bind-group-button")
    expect(page.locator("table").first).to_contain_text("Pilot phones")

    page.goto(policy_url)
    front_desk = page.locator("#preview-device option", has_text="Front desk iPhone").get_attribute("value")
    page.select_option("#preview-device", front_desk)
    page.click("button:has-text('Preview')")
    expect(page.locator("#preview")).to_contain_text("Target")
    expect(page.locator("#preview")).to_contain_text("TargetLocalDateTime")

    # The simulated device's Policy Results.
    page.goto(base + "/devices?q=Front")
    page.click("table.devices a:has-text('Front desk iPhone')")
    results = page.locator("#policy-results")
    expect(results).to_contain_text("Pilot iPhones")
    expect(results.locator(".badge").first).to_have_text(re.compile(
        "Pending|Unknown|Scheduled|Compliant|Not applicable"))
    page.locator("#policy-results-card").scroll_into_view_if_needed()
    shot(page, "device-results", tmp_path)

    page.goto(base + "/")
    expect(page.locator(".figure").first).to_contain_text("3")
    shot(page, "dashboard", tmp_path)
    page.click(".figure:has-text('Deadlines in the next 7 days')")
    expect(page.locator("table.devices")).to_contain_text("Front desk iPhone")
    expect(page.locator("table.devices")).not_to_contain_text("Warehouse iPhone")

    # A Read Only account, invited in the UI, sees the policy but cannot change it.
    page.goto(base + "/admins")
    page.fill("form.card input[name=username]", "auditor")
    page.select_option("form.card select[name=role]", "ReadOnly")
    page.click("button:has-text('Invite administrator')")
    one_time = page.locator("#one-time-password").inner_text()
    page.click("button:has-text('Sign out')")
    sign_in(page, base, "auditor", one_time)
    page.goto(policy_url)
    expect(page.locator("#f-name")).to_be_disabled()
    expect(page.locator("#save-policy")).to_have_count(0)
    status = page.evaluate("""async (url) => {
        const token = JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRFToken'];
        const body = new URLSearchParams({csrf_token: token, name: 'Hijacked'});
        const r = await fetch(url, {method: 'POST', body});
        return r.status; }""", policy_url)
    assert status == 403
    page.goto(base + "/patch-management/new/iOS")
    expect(page.locator("h1")).to_have_text("Not allowed")
    with live_server.app.app_context():
        from mdm.ddm.models import PatchPolicy
        assert PatchPolicy.query.filter_by(name="Pilot iPhones").count() == 1
    context.close()
