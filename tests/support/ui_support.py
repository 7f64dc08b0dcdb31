"""Helpers for the UI and API tests (no tests here): accounts per role, a signed-in client that sends
CSRF tokens the way the pages do, an API client with a token, a valid policy form, and a small world of
objects to point URLs at."""
from __future__ import annotations

import re

from mdm.accounts import Role, create_admin, create_api_token
from mdm.extensions import db
from mdm.models import Device, utcnow

PASSWORD = "correct horse battery"
HTTPS = "https://localhost"
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')
CSRF_HEADER = re.compile(r'"X-CSRFToken": "([^"]+)"')
# the Patch Management form, filled in validly (the UI tests post it, changed field by field)
VALID_POLICY_FORM = {
    "name": "Pilot iPhones", "deferral_days": "5", "enforce": ["false", "true"], "grace_days": "7",
    "local_time": "18:30", "details_url": "https://intranet.example.com/ios", "notifications_all": "true",
    "cadence": "All", "auto_download": "AlwaysOn", "auto_install_os": "AlwaysOn",
    "auto_install_security": "Allowed", "rsr_offer": ["false", "true"], "rsr_rollback": ["false"],
    "beta_enrollment": "AlwaysOff", "beta_rows": "1", "stay_on_major": "false"}


def make_admin(app, username: str, role: Role, password: str = PASSWORD):
    with app.app_context():
        user = create_admin(username, password, role, created_by="test")
        db.session.commit()
        return user.id


def make_token(app, name: str, role: Role) -> str:
    with app.app_context():
        _token, secret = create_api_token(name, role, created_by="test")
        db.session.commit()
        return secret


class Browser:
    """A test client that behaves like the pages: HTTPS, Referer on posts (Flask-WTF checks it on
    HTTPS), the CSRF token from the page in forms and in the X-CSRFToken header for HTMX."""

    def __init__(self, app):
        self.app = app
        self.client = app.test_client()
        self.csrf = None

    def get(self, path, htmx: bool = False, **kw):
        headers = kw.pop("headers", {})
        if htmx:
            headers = {"HX-Request": "true", "HX-Current-URL": HTTPS + "/devices", **headers}
        response = self.client.get(path, base_url=HTTPS, headers=headers, **kw)
        self._remember_csrf(response)
        return response

    def _remember_csrf(self, response):
        if response.mimetype == "text/html":
            match = CSRF_HEADER.search(response.text) or CSRF_INPUT.search(response.text)
            if match:
                self.csrf = match.group(1)

    def send(self, method: str, path: str, data=None, htmx: bool = False, csrf: bool = True, **kw):
        headers = {"Referer": HTTPS + "/", **kw.pop("headers", {})}
        if htmx:
            headers.update({"HX-Request": "true", "HX-Current-URL": HTTPS + "/"})
        if csrf:
            if self.csrf is None:
                self.get("/login")
            if htmx or method in ("DELETE", "PATCH", "PUT"):
                headers["X-CSRFToken"] = self.csrf
            else:
                data = {"csrf_token": self.csrf, **(data or {})}
        response = self.client.open(path, method=method, base_url=HTTPS, data=data, headers=headers, **kw)
        self._remember_csrf(response)
        return response

    def post(self, path, data=None, **kw):
        return self.send("POST", path, data, **kw)

    def delete(self, path, **kw):
        return self.send("DELETE", path, htmx=True, **kw)

    def login(self, username: str, password: str = PASSWORD):
        self.get("/login")
        response = self.post("/login", {"username": username, "password": password})
        assert response.status_code == 302, response.text[:500]
        self.get("/")
        return self


def signed_in(app, role: Role, username: str | None = None) -> Browser:
    username = username or f"{role.name.lower()}-user"
    make_admin(app, username, role)
    return Browser(app).login(username)


def add_devices(app, specs) -> list[int]:
    """specs: dicts of Device columns; udid defaults to a unique value."""
    with app.app_context():
        ids = []
        for i, spec in enumerate(specs):
            values = {"udid": f"UDID-{i:05d}-{spec.get('serial_number', '')}", "enrollment_status": "enrolled",
                      "last_seen_at": utcnow(), **spec}
            device = Device(**values)
            db.session.add(device)
            db.session.flush()
            ids.append(device.id)
        db.session.commit()
        return ids


def iphone(name: str, serial: str, os_version: str = "17.5", **extra) -> dict:
    return {"device_name": name, "serial_number": serial, "product_name": "iPhone15,2", "model_name": "iPhone",
            "software_update_device_id": "iPhone15,2", "os_version": os_version, "is_supervised": True, **extra}


def load_current_catalog(app, newest_posted_days_ago: int = 20) -> None:
    """The packaged release snapshot with its dates moved so its newest release was posted
    ``newest_posted_days_ago`` days ago (the snapshot's own dates expire; feeds/README.md)."""
    import datetime as dt
    from mdm.ddm.catalog import SNAPSHOT_PATH, apply_feed, load_feed_file, shift_feed
    data = load_feed_file(SNAPSHOT_PATH)
    newest = max(dt.date.fromisoformat(e["PostingDate"][:10]) for e in data["PublicAssetSets"]["iOS"])
    days = (utcnow().date() - newest).days - newest_posted_days_ago
    with app.app_context():
        apply_feed(shift_feed(data, days), "test: shifted snapshot")
        db.session.commit()


class Api:
    """The JSON API with a bearer token: ``api("GET", "/devices")``."""

    def __init__(self, app, secret: str):
        self.client, self.headers = app.test_client(), {"Authorization": f"Bearer {secret}"}

    def __call__(self, method: str, path: str, json=None):
        return self.client.open("/api/v1" + path, method=method, json=json, headers=self.headers, base_url=HTTPS)
