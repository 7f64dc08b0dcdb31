"""Flask extensions, created unbound and initialised in ``create_app`` through ``init_app``.

SQLite transactions start ``BEGIN IMMEDIATE`` behind a process-wide writer lock (below), except inside
``read_only()``: there a transaction is a plain deferred ``BEGIN`` that takes no lock, reads one WAL
snapshot and never waits for the writer. Code inside ``read_only()`` must not write; it ends its
transaction with a rollback (``read_only`` does that on exit).
"""
import contextlib
import contextvars
import sqlite3
import threading

from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import MetaData, event
from sqlalchemy.engine import Engine, make_url

# Stable constraint names so Alembic migrations work the same on SQLite and PostgreSQL.
naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def normalise_database_url(url):
    """``postgresql://`` (and Heroku-style ``postgres://``) mean psycopg 3, the driver we ship."""
    url = make_url(url)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


class _SQLAlchemy(SQLAlchemy):
    def _apply_driver_defaults(self, options, app):
        super()._apply_driver_defaults(options, app)
        url = normalise_database_url(options["url"])
        if url.get_backend_name() == "postgresql":
            options["url"] = url
            # A pool as large as the server's threads plus the scheduler and the push sender (16 per
            # worker by default); connections checked before use survive a database restart or an idle timeout
            # at a proxy. SQLALCHEMY_ENGINE_OPTIONS in instance/config.py overrides these.
            options.setdefault("pool_size", 20)
            options.setdefault("max_overflow", 10)
            options.setdefault("pool_pre_ping", True)
            options.setdefault("pool_recycle", 1800)


db = _SQLAlchemy(metadata=MetaData(naming_convention=naming_convention))
migrate = Migrate()


@event.listens_for(Engine, "connect")
def _sqlite_on_connect(dbapi_connection, connection_record):
    """WAL + busy timeout, and let SQLAlchemy (not pysqlite) emit BEGIN so we can make it IMMEDIATE."""
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


# SQLite has one writer at a time. Threads of this process queue for it on a Python lock, which hands
# over the moment the writer commits; left to SQLite's busy handler they would sleep in growing steps
# (up to 100 ms each) and the tail latency of concurrent check-ins would be hundreds of milliseconds.
WRITER_WAIT_SECONDS = 30
_writer_locks: dict[str, threading.Lock] = {}
_writer_locks_guard = threading.Lock()


def _writer_lock(engine) -> threading.Lock:
    key = str(engine.url)
    with _writer_locks_guard:
        return _writer_locks.setdefault(key, threading.Lock())


_read_only: contextvars.ContextVar[bool] = contextvars.ContextVar("mdm_read_only", default=False)


@contextlib.contextmanager
def read_only():
    """Run the block's queries in a read transaction of its own: on SQLite a deferred ``BEGIN`` without
    the writer lock (readers never wait for the writer in WAL mode). The session must not be in a
    transaction on entry (RuntimeError); the block must not write; its transaction is rolled back on exit,
    so what follows starts a fresh (write) transaction."""
    if db.session().in_transaction():
        raise RuntimeError("read_only() needs a session outside any transaction")
    token = _read_only.set(True)
    try:
        yield
    finally:
        try:
            db.session.rollback()
        finally:
            _read_only.reset(token)


@event.listens_for(Engine, "begin")
def _sqlite_begin_immediate(conn):
    """Take the write lock at BEGIN: a deferred transaction that later upgrades to a writer fails with
    "database is locked" without waiting for the busy timeout, which is what concurrent check-ins hit.
    Inside ``read_only()`` a deferred BEGIN without the lock."""
    if conn.dialect.name != "sqlite":
        return
    if _read_only.get():
        conn.exec_driver_sql("BEGIN")
        return
    lock = _writer_lock(conn.engine)
    # After a long wait go on anyway: SQLite's own busy timeout then has the last word.
    conn.info["mdm_writer_lock"] = lock if lock.acquire(timeout=WRITER_WAIT_SECONDS) else None
    try:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    except BaseException:
        _release_writer_lock(conn)
        raise


@event.listens_for(Engine, "commit")
@event.listens_for(Engine, "rollback")
def _release_writer_lock(conn):
    lock = conn.info.pop("mdm_writer_lock", None)
    if lock is not None:
        lock.release()
