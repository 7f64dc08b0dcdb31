"""Steps the browser tests share (no tests here): signing in on the login page and taking a
screenshot (``UPDATE_SCREENSHOTS=1`` also copies it to docs/screenshots/ for the README)."""
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
