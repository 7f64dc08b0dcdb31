"""The database layer's own promises (mdm/extensions.py): SQLite's process-wide writer lock is held for a
write transaction and released however the transaction ends, including when its connection is lost."""
import pytest
from sqlalchemy import text

from apps import POSTGRES_URL
from mdm.extensions import _writer_lock, db

pytestmark = pytest.mark.skipif(bool(POSTGRES_URL), reason="SQLite's writer lock")


def test_the_writer_lock_is_held_for_a_write_transaction_and_released_at_its_end(app):
    with app.app_context():
        lock = _writer_lock(db.engine)
        db.session.execute(text("SELECT 1"))
        assert lock.locked()
        db.session.commit()
        assert not lock.locked()
        db.session.execute(text("SELECT 1"))
        db.session.rollback()
        assert not lock.locked()


def test_a_connection_lost_in_a_write_transaction_releases_the_writer_lock(app):
    # Otherwise every later write in the process would wait its full WRITER_WAIT_SECONDS for a lock
    # nobody holds, and the rollback would raise a PendingRollbackError that hides the first error.
    with app.app_context():
        lock = _writer_lock(db.engine)
        with db.engine.connect() as connection:
            connection.begin()
            assert lock.locked()
            connection.invalidate()
            assert not lock.locked()
            connection.rollback()
        with db.engine.begin() as connection:
            assert connection.execute(text("SELECT 1")).scalar() == 1
        assert not lock.locked()
