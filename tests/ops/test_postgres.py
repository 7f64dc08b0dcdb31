"""PostgreSQL specifics (run by test.sh's second pass, which sets MDM_TEST_POSTGRES_URL): the scheduler
is elected through an advisory lock across web processes that share only the database, and the
engine is configured for a server database."""
import pytest
from sqlalchemy import text

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
        assert engine.pool.size() == 20 and engine.pool._pre_ping
    # The short forms operators paste mean psycopg 3, the driver in requirements.txt.
    assert normalise_database_url("postgresql://u@db/mdm").drivername == "postgresql+psycopg"
    assert normalise_database_url("postgres://u@db/mdm").drivername == "postgresql+psycopg"
    assert normalise_database_url("sqlite:///x.db").drivername == "sqlite"
