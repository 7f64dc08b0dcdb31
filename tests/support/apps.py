"""The app under test (no tests here): ``make_app`` builds an app with its own database, instance folder
and a copy of the session's PKI; ``dispose`` closes it. The ``app``, ``app_factory`` and ``live_server``
fixtures in tests/conftest.py are built on these; call ``make_app`` yourself only where a test needs
an app outside a fixture (a second process's app in another folder, a restored instance).

The database: SQLite (a file in the app's folder) unless MDM_TEST_POSTGRES_URL names a PostgreSQL
server's maintenance database (``postgresql+psycopg://user@/postgres?host=/socket/dir``, as test.sh's
second run sets it): then every app gets a fresh database, copied from a template that the migrations
built once per session, and dropped after its test (``drop_created_databases``, ``drop_template``).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

from mdm import create_app
from mdm.extensions import db

SHARED = Path(__file__).resolve().parents[3] / "shared"
FIXTURES = SHARED / "fixtures" / "real-devices"
FEEDS = SHARED / "feeds"

POSTGRES_URL = os.environ.get("MDM_TEST_POSTGRES_URL", "")
_postgres = {"template": None, "created": []}


def make_app(tmp_path: Path, pki_template: Path, **overrides):
    """An initialised app (database, PKI, push identity) in ``tmp_path``; called again on the same folder
    it is a second process of the same deployment (same database, certificates and instance)."""
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


def dispose(app) -> None:
    """Close the app's sessions and connections (before its database is dropped)."""
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def plain_key_file(app, name: str, dest: Path) -> str:
    """Private keys in CERTS_DIR are sealed; test servers that need one as a file get an opened copy."""
    from mdm.pki import read_private_key_pem
    from mdm.secrets import get_box
    path = Path(dest) / f"{name}.plain"
    path.write_bytes(read_private_key_pem(Path(app.config["CERTS_DIR"]) / name, get_box(app)))
    os.chmod(path, 0o600)
    return str(path)


# ---------------------------------------------------------------- the database under test

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


def drop_created_databases() -> None:
    """Drop the databases made since the last call (FORCE ends what a test left connected: a subprocess,
    a server thread)."""
    if not POSTGRES_URL:
        return
    created, _postgres["created"] = _postgres["created"], []
    if created:
        engine = _postgres_admin()
        with engine.connect() as conn:
            for name in created:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        engine.dispose()


def drop_template() -> None:
    if POSTGRES_URL and _postgres["template"]:
        engine = _postgres_admin()
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{_postgres["template"]}" WITH (FORCE)')
        engine.dispose()


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
    with tempfile.TemporaryDirectory() as scratch:
        shutil.copytree(pki_template, Path(scratch) / "certs")
        app = create_app({"TESTING": True, "DATABASE_URL": _postgres_url(name), "CERTS_DIR": f"{scratch}/certs",
                          "SCHEDULER_ENABLED": False, "SERVER_URL": "https://localhost:8443"},
                         instance_path=scratch)
        with app.app_context():
            from mdm.ops.dbsetup import init_db
            init_db()
        dispose(app)
    _postgres["template"] = name
    return name
