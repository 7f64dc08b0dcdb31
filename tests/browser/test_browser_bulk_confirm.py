"""The bulk confirmation in real Chromium against the real TLS server: choosing EraseDevice for several
devices asks the admin to type the action and the count; a wrong phrase is refused in place and
nothing is queued; the right one queues the command on each device."""
from __future__ import annotations

from pathlib import Path

from playwright.sync_api import expect

from mdm.models import Command
from ui_support import add_devices, iphone


def erase_commands(app) -> int:
    with app.app_context():
        return Command.query.filter_by(request_type="EraseDevice").count()


def test_bulk_erase_asks_for_the_typed_action_and_count_in_chromium(live_server, browser):
    base = live_server.url
    add_devices(live_server.app, [iphone(f"Shop iPhone {n}", f"SHOP{n}") for n in range(3)])
    password = (Path(live_server.app.instance_path) / "initial-admin-password").read_text().split("password: ")[1].strip()
    page = browser.new_context(ignore_https_errors=True).new_page()
    questions = []
    page.on("dialog", lambda dialog: (questions.append(dialog.message), dialog.accept()))

    page.goto(base + "/login?next=/devices")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", password)
    page.click("button:has-text('Sign in')")
    expect(page.locator("table.devices tbody tr")).to_have_count(3)

    page.check("input[aria-label='Select all']")
    page.select_option("#bulk select[name=action]", "command:EraseDevice")
    page.click("#bulk button:has-text('Apply')")
    panel = page.locator("#bulk-result [role=alertdialog]")
    expect(panel).to_contain_text("Send EraseDevice to 3 devices?")
    expect(panel).to_contain_text("Type erase 3 devices to confirm")
    assert erase_commands(live_server.app) == 0                  # the OK in the browser dialog was not enough

    panel.locator("input[name=confirm]").fill("erase all devices")
    panel.locator("button:has-text('Erase 3 devices')").click()
    expect(panel.locator("[role=alert]")).to_contain_text('The confirmation does not match: type "erase 3 devices"')
    assert erase_commands(live_server.app) == 0

    panel.locator("input[name=confirm]").fill("erase 3 devices")
    panel.locator("button:has-text('Erase 3 devices')").click()
    expect(page.locator("#bulk-result")).to_contain_text("Queued EraseDevice for 3 device(s)")
    assert erase_commands(live_server.app) == 3
    assert questions == ["Apply this action to the selected devices?"]   # asked once; the typed phrase confirms
