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
import time

from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import MetaData, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import Pool

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
            # A pool larger than the server's threads plus the scheduler and the push sender. Connections
            # are recycled every half hour, and one that sat idle is checked before use (``ping_idle``,
            # installed by ``init_db``), so a database restart or a proxy's idle timeout costs no request.
            # SQLALCHEMY_ENGINE_OPTIONS in instance/config.py overrides these; ``pool_pre_ping: True``
            # there checks every connection on every use instead.
            options.setdefault("pool_size", 20)
            options.setdefault("max_overflow", 10)
            options.setdefault("pool_recycle", 1800)


db = _SQLAlchemy(metadata=MetaData(naming_convention=naming_convention))
migrate = Migrate()


def init_db(app) -> None:
    """Bind ``db`` to the app, and on PostgreSQL ping only connections that sat idle (``ping_idle``)."""
    db.init_app(app)
    after_seconds = float(app.config["DB_PING_AFTER_IDLE_SECONDS"])
    if app.config.get("SQLALCHEMY_ENGINE_OPTIONS", {}).get("pool_pre_ping"):
        return
    with app.app_context():
        for engine in db.engines.values():
            if engine.dialect.name == "postgresql":
                ping_idle(engine, after_seconds)


def ping_idle(engine: Engine, after_seconds: float) -> None:
    """Check a pooled connection with one round trip before it is used, when it has been back in the pool
    for ``after_seconds`` or more; a dead one (database restarted, proxy timed it out) is replaced
    before anyone sees it. A connection used moments ago is handed out unchecked: SQLAlchemy's
    ``pool_pre_ping`` would check every one, an extra server transaction on every request. A
    connection that breaks in between fails its statement, and SQLAlchemy then discards the whole
    pool's older connections."""
    @event.listens_for(engine, "checkin")
    def _checked_in(dbapi_connection, record):
        if dbapi_connection is not None:
            record.info["mdm_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection, record, proxy):
        idle_since = record.info.get("mdm_idle_since")
        if idle_since is None or time.monotonic() - idle_since < after_seconds:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            if engine.dialect.is_disconnect(exc, dbapi_connection, None):
                raise DisconnectionError(str(exc)) from exc  # the pool connects afresh and retries
            raise


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
    # A connection invalidated in its transaction (lost, closed under it) released its lock then (below);
    # its ``info`` is out of reach until the rollback, and asking for it would hide the original error.
    if conn.dialect.name != "sqlite" or conn.invalidated:
        return
    _release(conn.info)


@event.listens_for(Pool, "invalidate")
def _release_writer_lock_of_lost_connection(dbapi_connection, connection_record, exception):
    _release(connection_record.info)


def _release(info: dict) -> None:
    lock = info.pop("mdm_writer_lock", None)
    if lock is not None:
        lock.release()
