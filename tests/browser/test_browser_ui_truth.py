"""Status that tells the truth, seen in real Chromium (Debian's package, driven by Playwright) against the
real TLS server: no console error or 404 on page loads (the favicon), the styled 404 page inside the app
frame, "iOS & iPadOS" with the macOS-only action marked, errors in the form's words, beta programs as
rows added and removed, device search anywhere / sortable headers / removable filter chips, and an
audit entry that shows only what changed.
"""
from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import expect

from ui_support import add_devices, iphone, load_current_catalog


class Problems:
    """Console errors and 4xx/5xx responses the browser saw (what the developer console would show)."""

    def __init__(self, page):
        self.items: list[str] = []
        page.on("console", lambda m: self.items.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.items.append(f"page error: {e}"))
        page.on("response", lambda r: self.items.append(f"{r.status} {r.url}") if r.status >= 400 else None)

    def take(self) -> list[str]:
        items, self.items = self.items, []
        return items


def sign_in_first_admin(page, server) -> None:
    password = (Path(server.app.instance_path) / "initial-admin-password").read_text().split("password: ")[1].strip()
    page.goto(server.url + "/login")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", password)
    page.click("button:has-text('Sign in')")
    expect(page.locator(".topbar")).to_be_visible()


def test_page_loads_log_no_console_error_and_no_404(live_server, browser):
    context = browser.new_context(ignore_https_errors=True)
    page = context.new_page()
    problems = Problems(page)
    page.goto(live_server.url + "/login")
    page.wait_for_load_state("networkidle")
    assert problems.take() == []
    sign_in_first_admin(page, live_server)
    for path in ("/", "/devices", "/patch-management", "/patch-management/new/iOS", "/audit"):
        page.goto(live_server.url + path)
        page.wait_for_load_state("networkidle")
        assert problems.take() == [], path
    icon = page.request.get(live_server.url + "/favicon.ico")
    assert icon.status == 200 and icon.headers["content-type"] == "image/vnd.microsoft.icon"
    # The icon the page declares loads as an image in the browser.
    loaded = page.evaluate("""async () => {
        const link = document.querySelector('link[rel=icon]');
        const img = new Image(); img.src = link.href; await img.decode(); return img.naturalWidth > 0; }""")
    assert loaded
    context.close()


def test_missing_page_is_styled_inside_the_app_frame(live_server, browser):
    context = browser.new_context(ignore_https_errors=True)
    page = context.new_page()
    sign_in_first_admin(page, live_server)
    response = page.goto(live_server.url + "/patch-management/424242")
    assert response.status == 404
    expect(page.locator("#error-page h1")).to_have_text("Page not found")
    expect(page.locator("nav.sidenav")).to_be_visible()
    page.click("#error-page a:has-text('Go to the dashboard')")
    expect(page).to_have_url(live_server.url + "/")
    context.close()


def test_policy_form_speaks_the_platform_and_its_own_words(live_server, browser):
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1360, "height": 900})
    page = context.new_page()
    sign_in_first_admin(page, live_server)
    page.goto(live_server.url + "/patch-management/new")
    expect(page.locator(".chooser a")).to_have_text(re.compile(r"iOS & iPadOS"))
    expect(page.locator(".chooser")).not_to_contain_text("iPadOS Not available")
    page.click(".chooser a:has-text('iOS & iPadOS')")
    expect(page.locator("h1")).to_have_text("New iOS & iPadOS patch policy")
    security = page.locator("label.macos-only")
    expect(security).to_contain_text("macOS only")
    expect(page.locator("#f-auto_install_security")).to_be_disabled()

    page.fill("#f-name", "Truthful policy")
    page.select_option("#f-auto_download", "Allowed")
    page.select_option("#f-auto_install_os", "AlwaysOn")
    expect(page.locator("#err-auto_install_os")).to_contain_text(
        "Install OS updates can't be Always On while Download is User Controlled")
    expect(page.locator("#err-auto_install_os")).not_to_contain_text("auto_download")
    page.select_option("#f-auto_download", "AlwaysOn")
    expect(page.locator("#err-auto_install_os")).to_be_empty()

    # Beta programs: rows added and removed in place; a half-filled row is named in words.
    page.click("#add-beta-program")
    page.fill("#beta-rows tr:nth-child(1) input[name=beta_description]", "AppleSeed for IT")
    page.click("#add-beta-program")
    page.fill("#beta-rows tr:nth-child(2) input[name=beta_description]", "Pilot")
    expect(page.locator("#err-beta_programs")).to_contain_text("Beta program 1 (AppleSeed for IT) needs a "
                                                               "seeding-service token")
    page.fill("#beta-rows tr:nth-child(1) input[name=beta_token]", "tok-1")
    page.click("#beta-rows tr:nth-child(2) .remove-row")
    expect(page.locator("#beta-rows tr")).to_have_count(1)
    expect(page.locator("#err-beta_programs")).to_be_empty()
    page.click("#save-policy")
    expect(page.locator(".flash")).to_contain_text("Policy Truthful policy saved")
    page.goto(page.url.split("?")[0])
    expect(page.locator("#beta-rows input[name=beta_description]")).to_have_value("AppleSeed for IT")
    expect(page.locator("#beta-rows input[name=beta_token]")).to_have_value("tok-1")

    # The edit is audited as the one field that changed, with the policy's name.
    page.fill("#f-deferral_days", "4")
    page.click("#save-policy")
    expect(page.locator(".flash")).to_contain_text("saved")
    page.goto(live_server.url + "/audit?action=patch_policy.update")
    row = page.locator("table.audit tbody tr").first
    expect(row.locator(".object-name")).to_have_text("Truthful policy")
    expect(row.locator("ul.changes li")).to_have_count(1)
    expect(row.locator("ul.changes li")).to_have_text("Defer OS updates: 0 → 4")
    context.close()


def test_device_list_search_sort_columns_and_chips(live_server, browser):
    load_current_catalog(live_server.app)
    add_devices(live_server.app, [iphone("Alpha front desk", "C0AAA111"), iphone("Bravo warehouse", "C0BBB222"),
                                  iphone("Charlie lobby", "C0CCC333"),
                                  {"device_name": "Delta tablet", "serial_number": "C0DDD444",
                                   "product_name": "iPad13,4", "os_version": "17.5"}])
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1500, "height": 900})
    page = context.new_page()
    sign_in_first_admin(page, live_server)
    page.goto(live_server.url + "/devices")
    headers = page.locator("table.devices thead th")
    for column in ("Patch status", "Target", "Deadline"):
        expect(headers.filter(has_text=column)).to_have_count(1)

    names = page.locator("table.devices tbody td:nth-child(2) a")
    page.fill("#device-filters input[name=q]", "house")            # the middle of a name
    expect(names).to_have_text(["Bravo warehouse"])
    page.fill("#device-filters input[name=q]", "ccc3")             # the middle of a serial, any case
    expect(names).to_have_text(["Charlie lobby"])
    page.fill("#device-filters input[name=q]", "")
    expect(names).to_have_count(4)

    page.click("th a.sort[data-sort=name]")                         # already ascending: flips
    expect(page).to_have_url(re.compile(r"sort=-name"))
    expect(names).to_have_text(["Delta tablet", "Charlie lobby", "Bravo warehouse", "Alpha front desk"])
    expect(page.locator("th[aria-sort=descending]")).to_contain_text("Name")

    # One platform for iPhone and iPad; the active filter is a chip with ×, and × removes it.
    page.select_option("#device-filters select[name=platform]", label="iOS & iPadOS")
    page.fill("#device-filters input[name=q]", "a")
    expect(page.locator("#active-filters .chip")).to_have_count(2)
    page.goto(page.url)                                            # as a bookmarked, filtered list
    chip = page.locator(".chip[data-filter=q]")
    expect(chip).to_contain_text("Search: “a”")
    chip.locator("a.remove").click()
    expect(page.locator(".chip[data-filter=q]")).to_have_count(0)
    expect(page.locator(".chip[data-filter=platform]")).to_contain_text("Platform: iOS & iPadOS")
    expect(page.locator("#device-filters input[name=q]")).to_have_value("")
    expect(page).to_have_url(re.compile(r"sort=-name"))             # the sort survives
    expect(names).to_have_count(4)
    context.close()
