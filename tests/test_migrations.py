"""The Alembic migrations build exactly the schema the models describe."""
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from mdm.extensions import db


def test_migrations_match_the_models(app):
    # The app fixture ran ``flask mdm init``'s schema step, which upgrades through the migrations.
    with app.app_context():
        with db.engine.connect() as connection:
            version = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
            assert version, "schema was not created by migrations"
            diffs = compare_metadata(MigrationContext.configure(connection), db.metadata)
    assert diffs == []
