"""PostgreSQL specifics (run by test.sh's second pass, which sets MDM_TEST_POSTGRES_URL): the scheduler
is elected through an advisory lock across web processes that share only the database, and the
engine is configured for a server database."""
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from apps import POSTGRES_URL
from mdm import create_app
from mdm.extensions import db, normalise_database_url
from mdm.scheduler import ADVISORY_LOCK_KEY, start_scheduler, stop_scheduler
from scheduler_kit import Child

pytestmark = pytest.mark.skipif(not POSTGRES_URL, reason="needs MDM_TEST_POSTGRES_URL (test.sh's PostgreSQL run)")


def test_processes_on_different_hosts_elect_one_scheduler(app, tmp_path, children):
    # Separate instance folders stand for separate hosts: no shared file, only the database.
    holder = Child(app, instance_path=tmp_path / "host-a")
    children.append(holder)
    assert holder.next_line() == "holder"
    assert holder.next_line() == "started"
    standby = Child(app, instance_path=tmp_path / "host-b")
    children.append(standby)
    assert standby.next_line() == "standby"
    with app.app_context():
        holders = db.session.execute(text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND ((classid::bigint << 32) | objid::bigint) = :key"), {"key": ADVISORY_LOCK_KEY}).scalar()
    assert holders == 1
    holder.kill()
    assert standby.next_line() == "started"


def test_a_holder_that_loses_its_connection_pauses_and_a_standby_takes_over(app, tmp_path, children):
    holder = Child(app, instance_path=tmp_path / "host-a")
    children.append(holder)
    assert [holder.next_line(), holder.next_line()] == ["holder", "started"]
    standby = Child(app, instance_path=tmp_path / "host-b")
    children.append(standby)
    assert standby.next_line() == "standby"
    # A database restart or a network cut ends the holder's lock connection (and frees the lock).
    with app.app_context():
        ended = db.session.execute(text(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")).scalars().all()
        db.session.rollback()
    assert ended == [True]
    assert standby.next_line() == "started"
    assert holder.next_line() == "paused"
    assert holder.process.poll() is None     # still serving requests, only without its jobs


def test_the_lock_is_released_when_the_scheduler_stops(app, tmp_path):
    assert start_scheduler(app, jobs=[], standby=False) is not None
    other = create_app({"SCHEDULER_ENABLED": False, "CERTS_DIR": app.config["CERTS_DIR"],
                        "DATABASE_URL": app.config["DATABASE_URL"]}, instance_path=str(tmp_path / "other"))
    assert start_scheduler(other, jobs=[], standby=False) is None
    stop_scheduler(app)
    assert start_scheduler(other, jobs=[], standby=False) is not None
    stop_scheduler(other)


def test_engine_is_configured_for_a_server_database(app):
    with app.app_context():
        engine = db.engine
        assert engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"
        assert engine.pool.size() == 20
    # The short forms operators paste mean psycopg 3, the driver in requirements.txt.
    assert normalise_database_url("postgresql://u@db/mdm").drivername == "postgresql+psycopg"
    assert normalise_database_url("postgres://u@db/mdm").drivername == "postgresql+psycopg"
    assert normalise_database_url("sqlite:///x.db").drivername == "sqlite"


def _engine_for(app, tmp_path, **overrides):
    other = create_app({"SCHEDULER_ENABLED": False, "CERTS_DIR": app.config["CERTS_DIR"],
                        "DATABASE_URL": app.config["DATABASE_URL"], **overrides},
                       instance_path=str(tmp_path / "other"))
    with other.app_context():
        return db.engine


def _backend_pid(engine) -> int:
    with engine.connect() as connection:
        return connection.execute(text("SELECT pg_backend_pid()")).scalar()


def _end_backend(app, pid: int) -> None:
    with app.app_context():
        assert db.session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar() is True
        db.session.rollback()


def test_a_pooled_connection_that_sat_idle_is_checked_and_a_dead_one_replaced_unseen(app, tmp_path):
    # A database restart or a proxy's idle timeout ends a pooled connection while nobody uses it.
    engine = _engine_for(app, tmp_path, DB_PING_AFTER_IDLE_SECONDS=0)
    try:
        pid = _backend_pid(engine)
        _end_backend(app, pid)
        assert _backend_pid(engine) != pid       # no error reached the caller: a fresh connection
    finally:
        engine.dispose()


def test_a_connection_used_moments_ago_is_handed_out_without_a_round_trip(app, tmp_path):
    # No ping before a connection that was just in use (SQLAlchemy's pool_pre_ping would send one on
    # every request): so one ended in between fails once, and the pool then starts afresh.
    engine = _engine_for(app, tmp_path, DB_PING_AFTER_IDLE_SECONDS=3600)
    try:
        pid = _backend_pid(engine)
        _end_backend(app, pid)
        with pytest.raises(OperationalError):
            _backend_pid(engine)
        assert _backend_pid(engine) != pid
    finally:
        engine.dispose()


def test_pool_pre_ping_in_the_engine_options_checks_every_connection(app, tmp_path):
    engine = _engine_for(app, tmp_path, DB_PING_AFTER_IDLE_SECONDS=3600,
                         SQLALCHEMY_ENGINE_OPTIONS={"pool_pre_ping": True})
    try:
        pid = _backend_pid(engine)
        _end_backend(app, pid)
        assert _backend_pid(engine) != pid
    finally:
        engine.dispose()
