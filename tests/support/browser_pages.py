"""Steps the browser tests share (no tests here): simulated iPhones enrolled through the real server,
signing in on the login page, and a screenshot (``UPDATE_SCREENSHOTS=1`` also copies it to
docs/screenshots/ for the README)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def shot(page, name: str, tmp_path: Path, full_page: bool = False) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SCREENSHOTS / f"{name}.png")


def sign_in(page, base: str | None, username: str, password: str) -> None:
    if base:
        page.goto(base + "/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button:has-text('Sign in')")


def enroll_simulated_iphones(server, names) -> None:
    from mdm.enroll.tokens import create_token, enrollment_url
    from mdm.simulator import DeviceProfile, SimulatedDevice
    with server.app.app_context():
        url = enrollment_url(create_token(description="browser test", expires_in_days=1, created_by="test"))
    for name in names:
        device = SimulatedDevice(server.url, server.ca_file, profile=DeviceProfile(device_name=name))
        device.enroll(url)
        device.connect()
        device.close()
