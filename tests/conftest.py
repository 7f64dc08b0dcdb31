"""Shared fixtures: an app with its own database and PKI, a real HTTPS server, simple helpers."""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pytest

from mdm import create_app
from mdm.extensions import db
from server_process import ServerProcess, free_port  # noqa: F401  (free_port: imported by test modules)

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


def plain_key_file(app, name: str, dest: Path) -> str:
    """Private keys in CERTS_DIR are sealed; test servers that need one as a file get an opened copy."""
    import os
    from mdm.enroll.pki import read_private_key_pem
    from mdm.secrets import get_box
    path = Path(dest) / f"{name}.plain"
    path.write_bytes(read_private_key_pem(Path(app.config["CERTS_DIR"]) / name, get_box(app)))
    os.chmod(path, 0o600)
    return str(path)




# ---------------------------------------------------------------- the database under test
# SQLite (a file in tmp_path) unless MDM_TEST_POSTGRES_URL names a PostgreSQL server's maintenance
# database (``postgresql+psycopg://user@/postgres?host=/socket/dir``, as test.sh's second run sets it):
# then every app gets a fresh database, copied from a template that the migrations built once per
# session, and dropped after its test.
POSTGRES_URL = os.environ.get("MDM_TEST_POSTGRES_URL", "")
_postgres = {"template": None, "created": []}


def _postgres_admin():
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool
    return create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)


def _postgres_url(database: str) -> str:
    from sqlalchemy.engine import make_url
    return make_url(POSTGRES_URL).set(database=database).render_as_string(hide_password=False)


def _postgres_template(pki_template: Path) -> str:
    """A database the migrations ran on, created once per session: CREATE DATABASE ... TEMPLATE copies
    it in a few milliseconds instead of running every migration for every test."""
    if _postgres["template"]:
        return _postgres["template"]
    name = f"mdm_template_{os.getpid()}"
    engine = _postgres_admin()
    with engine.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine.dispose()
    import tempfile
    with tempfile.TemporaryDirectory() as scratch:
        shutil.copytree(pki_template, Path(scratch) / "certs")
        app = create_app({"TESTING": True, "DATABASE_URL": _postgres_url(name), "CERTS_DIR": f"{scratch}/certs",
                          "SCHEDULER_ENABLED": False, "SERVER_URL": "https://localhost:8443"},
                         instance_path=scratch)
        with app.app_context():
            from mdm.ops.dbsetup import init_db
            init_db()
            db.session.remove()
            db.engine.dispose()
    _postgres["template"] = name
    return name


def database_url(tmp_path: Path, pki_template: Path) -> str:
    """The database of the app built in ``tmp_path``; the same one when ``make_app`` runs again there
    (a second process on the same deployment)."""
    if not POSTGRES_URL:
        return f"sqlite:///{tmp_path / 'mdm.db'}"
    marker = tmp_path / "postgres-database"
    if marker.exists():
        return _postgres_url(marker.read_text())
    template = _postgres_template(pki_template)
    name = f"mdm_test_{uuid.uuid4().hex[:16]}"
    engine = _postgres_admin()
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    engine.dispose()
    _postgres["created"].append(name)
    marker.write_text(name)
    return _postgres_url(name)


@pytest.fixture(autouse=True)
def _drop_postgres_databases():
    """Drop the databases a test created, after its app fixtures have closed their engines (FORCE ends
    what a test left connected: a subprocess, a server thread)."""
    yield
    if not POSTGRES_URL:
        return
    created, _postgres["created"] = _postgres["created"], []
    if created:
        engine = _postgres_admin()
        with engine.connect() as conn:
            for name in created:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        engine.dispose()


@pytest.fixture(scope="session", autouse=True)
def _drop_postgres_template():
    yield
    if POSTGRES_URL and _postgres["template"]:
        engine = _postgres_admin()
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{_postgres["template"]}" WITH (FORCE)')
        engine.dispose()


def make_app(tmp_path: Path, pki_template: Path, **overrides):
    certs = tmp_path / "certs"
    if not certs.exists():
        shutil.copytree(pki_template, certs)
    config = {
        "TESTING": True,
        "SERVER_URL": overrides.pop("SERVER_URL", "https://localhost:8443"),
        "CERTS_DIR": str(certs),
        "DATABASE_URL": database_url(tmp_path, pki_template),
        "SCHEDULER_ENABLED": False,
        "ORGANIZATION": "Test Org",
    }
    config.update(overrides)
    (tmp_path / "instance").mkdir(exist_ok=True)
    app = create_app(config, instance_path=str(tmp_path / "instance"))
    with app.app_context():
        from mdm.ops.bootstrap import initialise
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
def live_server_factory(tmp_path, pki_template):
    """Start the real production server (``python -m mdm.run``: granian, TLS with our CA) in a child
    process on a free port, sharing the test app's instance, certificates and database. Keyword
    arguments are settings given to both the server and its ``.app`` (the test's side); ``serve``
    names one of ``tests/support/serving_apps.py``'s apps instead of the production app."""
    started = []

    def start(*, serve: str | None = None, **config):
        port = free_port()
        app = make_app(tmp_path, pki_template, SERVER_URL=f"https://localhost:{port}", **config)
        settings = {"INSTANCE_PATH": app.instance_path, "CERTS_DIR": app.config["CERTS_DIR"],
                    "DATABASE_URL": app.config["DATABASE_URL"], "ORGANIZATION": app.config["ORGANIZATION"],
                    **{k: json.dumps(v) if not isinstance(v, str) else v for k, v in config.items()}}
        server = ServerProcess(tmp_path, settings, port=port, **(
            {"module": "serving_apps", "args": (serve,)} if serve else {}))
        started.append(server)
        server.start()
        server.app = app
        return server

    yield start
    for server in started:
        server.stop()
        with server.app.app_context():
            db.session.remove()
            db.engine.dispose()


@pytest.fixture
def live_server(live_server_factory):
    """The real production server with default settings (see ``live_server_factory``)."""
    return live_server_factory()


# ---------------------------------------------------------------- the browser (tests/browser)
# Debian's Chromium driven by Playwright (``executable_path``), headless and without the background
# networking this machine's closed network refuses.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (./test.sh installs it)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
