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


PREVIOUS_RELEASE = "aa50c2e4f6eb"   # the first released schema


def test_upgrading_a_populated_database_from_the_previous_release_keeps_every_row(app):
    """Downgrade to the previous release's schema, fill it as that release would, upgrade: every row
    survives with its values."""
    from types import SimpleNamespace

    from flask_migrate import downgrade, upgrade
    from sqlalchemy import inspect

    from mdm.enroll.tokens import create_token
    from mdm.models import AuditEvent, Command, Device
    from mdm.protocol.queue import enqueue

    with app.app_context():
        downgrade(revision=PREVIOUS_RELEASE)
        assert "scheduler_job_runs" not in inspect(db.engine).get_table_names()
        create_token(description="kept", max_uses=3)
        for n in range(5):
            # Core insert: the ORM would also write columns that release did not have yet.
            values = dict(udid=f"UPGRADE-{n}", serial_number=f"SN{n}", product_name="iPhone15,2",
                          os_version="17.5", enrollment_status="enrolled", is_supervised=True,
                          push_token="ab" * 32, push_magic=f"MAGIC-{n}", unlock_token=b"unlock-%d" % n)
            device_id = db.session.execute(db.insert(Device.__table__).values(**values)).inserted_primary_key[0]
            enqueue(SimpleNamespace(id=device_id, udid=values["udid"]), "DeviceInformation", push=False)
        db.session.commit()

        def snapshot():
            tables = [t for t in inspect(db.engine).get_table_names() if t != "alembic_version"]
            with db.engine.connect() as connection:
                return {t: connection.exec_driver_sql(f'SELECT COUNT(*) FROM "{t}"').scalar() for t in tables}

        before = snapshot()
        assert before["devices"] == 5 and before["commands"] == 5 and before["enrollment_tokens"] == 1
        db.session.remove()

        upgrade()
        after = snapshot()
        assert {t: after[t] for t in before} == before
        assert "scheduler_job_runs" in after
        devices = Device.query.order_by(Device.udid).all()
        assert [d.unlock_token for d in devices] == [b"unlock-%d" % n for n in range(5)]
        assert {c.request_type for c in Command.query} == {"DeviceInformation"}
