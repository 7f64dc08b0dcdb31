"""The fixtures, all of them (tests/support/ holds the plain helpers they use): an app with its own
database and PKI (``app``, or ``app_factory`` for several), its test client, the real HTTPS server
(``live_server``), Chromium (``browser``), scheduler child processes and Apple's push CA chain.

A test module that needs other settings for its ``app`` says so with a marker instead of redefining the
fixture: ``pytestmark = pytest.mark.app_settings(ENROLL_FAILURES_PER_MINUTE=5)``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import apps
import device_identity
from db_recorder import Recorder
from ddm_kit import load_snapshot_as_of_today
from pushcert_kit import make_apple_chain
from server_process import ServerProcess, free_port


@pytest.fixture(scope="session")
def pki_template(tmp_path_factory):
    """Generate the CA, TLS and signing keys once per session; each app gets a copy."""
    from mdm.pki import ensure_pki
    certs = tmp_path_factory.mktemp("certs-template")
    ensure_pki(certs, ["localhost", "127.0.0.1"], "Test Org")
    return certs


@pytest.fixture(autouse=True)
def _drop_postgres_databases():
    """Drop the databases a test created, after its app fixtures have closed their engines."""
    yield
    apps.drop_created_databases()


@pytest.fixture(scope="session", autouse=True)
def _drop_postgres_template():
    yield
    apps.drop_template()


@pytest.fixture
def app_factory(tmp_path, pki_template):
    """``app_factory(**settings)``: an initialised app in this test's folder (tests/support/apps.py); a
    second call is a second process of the same deployment. Every app made is closed after the test."""
    made = []

    def make(**settings):
        app = apps.make_app(tmp_path, pki_template, **settings)
        made.append(app)
        return app

    yield make
    for app in made:
        apps.dispose(app)


@pytest.fixture
def app(request, app_factory):
    """The app under test (settings from the module's or test's ``app_settings`` marker); check-in
    messages (``device_identity.checkin_message``) carry its push topic."""
    marker = request.node.get_closest_marker("app_settings")
    app = app_factory(**(marker.kwargs if marker else {}))
    device_identity.use_topic_of(app)
    return app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def ctx(app):
    """The default app with its application context pushed, for tests that call services directly."""
    with app.app_context():
        yield app


@pytest.fixture
def ca(app):
    """Our CA certificate (the issuer every device identity must chain to)."""
    from mdm.pki import get_pki
    with app.app_context():
        return get_pki().ca_cert


@pytest.fixture
def recorder(app):
    """What the request under test does to the database: statements, commits, the writer lock
    (tests/support/db_recorder.py)."""
    rec = Recorder(app)
    yield rec
    rec.close()


@pytest.fixture
def snapshot_as_of_today(request):
    """For a module's ``pytestmark = pytest.mark.usefixtures("snapshot_as_of_today")``: a test's ``app``
    (when it has one) holds Apple's packaged feed snapshot as if fetched today (ddm_kit.py)."""
    if "app" in request.fixturenames:
        with request.getfixturevalue("app").app_context():
            load_snapshot_as_of_today()


@pytest.fixture
def live_server_factory(tmp_path, app_factory):
    """Start the real production server (``python -m mdm.run``: granian, TLS with our CA) in a child
    process on a free port, sharing the test app's instance, certificates and database. Keyword
    arguments are settings given to both the server and its ``.app`` (the test's side); ``serve``
    names one of ``tests/support/serving_apps.py``'s apps instead of the production app."""
    started = []

    def start(*, serve: str | None = None, **config):
        port = free_port()
        app = app_factory(SERVER_URL=f"https://localhost:{port}", **config)
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


# ---------------------------------------------------------------- scheduler processes, Apple's push CA

@pytest.fixture
def children():
    """Scheduler child processes (``scheduler_kit.Child``) a test starts; killed after it."""
    started = []
    yield started
    for child in started:
        if child.process.poll() is None:
            child.kill()


@pytest.fixture(scope="session")
def apple_chain():
    """A stand-in for Apple's root and WWDR intermediate (tests/support/pushcert_kit.py)."""
    return make_apple_chain()
