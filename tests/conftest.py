"""Shared fixtures: an app with its own database and PKI, a real HTTPS server, simple helpers."""
from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from mdm import create_app
from mdm.extensions import db

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURES = SHARED / "fixtures" / "real-devices"
FEEDS = SHARED / "feeds"


@pytest.fixture(scope="session")
def pki_template(tmp_path_factory):
    """Generate the CA, TLS and signing keys once per session; each app gets a copy."""
    from mdm.enroll.pki import ensure_pki
    certs = tmp_path_factory.mktemp("certs-template")
    ensure_pki(certs, ["localhost", "127.0.0.1"], "Test Org")
    return certs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_app(tmp_path: Path, pki_template: Path, **overrides):
    certs = tmp_path / "certs"
    if not certs.exists():
        shutil.copytree(pki_template, certs)
    config = {
        "TESTING": True,
        "SERVER_URL": overrides.pop("SERVER_URL", "https://localhost:8443"),
        "CERTS_DIR": str(certs),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'mdm.db'}",
        "SCHEDULER_ENABLED": False,
        "ORGANIZATION": "Test Org",
    }
    config.update(overrides)
    (tmp_path / "instance").mkdir(exist_ok=True)
    app = create_app(config, instance_path=str(tmp_path / "instance"))
    with app.app_context():
        from mdm.bootstrap import initialise
        initialise()
    return app


@pytest.fixture
def app(tmp_path, pki_template):
    app = make_app(tmp_path, pki_template)
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def live_server(tmp_path, pki_template):
    """The real production server (cheroot, TLS with our CA) on a free port, in a thread."""
    from mdm.serve import BackgroundServer
    port = free_port()
    app = make_app(tmp_path, pki_template, SERVER_URL=f"https://localhost:{port}")
    with BackgroundServer(app, port=port) as server:
        server.app = app
        server.url = f"https://localhost:{port}"
        server.ca_file = str(Path(app.config["CERTS_DIR"]) / "ca.pem")
        yield server
    with app.app_context():
        db.session.remove()
        db.engine.dispose()
