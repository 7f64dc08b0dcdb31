"""``flask mdm backup`` while simulated devices keep checking in, ``flask mdm restore`` into a fresh
folder, and the same devices carry on against the restored server."""
from __future__ import annotations

import os
import shutil
import tarfile
import threading
from pathlib import Path

import pytest

from apps import database_url, make_app
from mdm import create_app
from mdm.extensions import db
from mdm.models import Command, Device
from mdm.simulator import SimulatedDevice
from server_process import ServerProcess, free_port


def _enrollment_url(app):
    from mdm.enroll.tokens import create_token, enrollment_url
    with app.app_context():
        return enrollment_url(create_token(description="backup", expires_in_days=1, max_uses=10, created_by="test"))


def _fresh_app(folder: Path, port: int, pki_template: Path, **config):
    """An instance nobody has started: no CA, no secrets key, an empty (or, on PostgreSQL, device-less) database."""
    (folder / "instance").mkdir(parents=True, exist_ok=True)
    return create_app({"TESTING": True, "SERVER_URL": f"https://localhost:{port}", "CERTS_DIR": str(folder / "certs"),
                       "DATABASE_URL": database_url(folder, pki_template), "SCHEDULER_ENABLED": False,
                       "ORGANIZATION": "Test Org", **config}, instance_path=str(folder / "instance"))


def _server_for(app, port: int, **config) -> ServerProcess:
    """The production server on ``app``'s instance, certificates and database."""
    return ServerProcess(Path(app.instance_path).parent, {
        "INSTANCE_PATH": app.instance_path, "CERTS_DIR": app.config["CERTS_DIR"],
        "DATABASE_URL": app.config["DATABASE_URL"], "ORGANIZATION": app.config["ORGANIZATION"], **config}, port=port)


def _dispose(app):
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def test_online_backup_restores_into_a_fresh_folder_and_devices_carry_on(tmp_path, pki_template):
    port = free_port()
    source_dir = tmp_path / "source"
    source_dir.mkdir()
    source = make_app(source_dir, pki_template, SERVER_URL=f"https://localhost:{port}")
    ca_file = str(source_dir / "certs" / "ca.pem")
    archive = tmp_path / "mdm-backup.tar.gz"

    server = _server_for(source, port).start()
    try:
        url = _enrollment_url(source)
        devices = [SimulatedDevice(f"https://localhost:{port}", ca_file) for _ in range(3)]
        for device in devices:
            device.enroll(url)
            device.connect()                      # the three inventory commands of a new enrollment

        # Devices keep connecting (and a command per round keeps the database busy) during the backup.
        stop, errors, rounds = threading.Event(), [], [0]

        def keep_checking_in():
            from mdm.protocol import queue
            while not stop.is_set():
                try:
                    with source.app_context():
                        for d in Device.query.all():
                            queue.enqueue(d, "DeviceInformation", push=False)
                        db.session.commit()
                    for device in devices:
                        device.connect()
                    rounds[0] += 1
                except Exception as exc:  # collected and asserted below
                    errors.append(repr(exc))
                    return

        worker = threading.Thread(target=keep_checking_in)
        worker.start()
        try:
            while rounds[0] < 2 and not errors:
                stop.wait(0.05)
            result = source.test_cli_runner().invoke(args=["mdm", "backup", "--out", str(archive)])
            rounds_at_backup = rounds[0]
            while rounds[0] < rounds_at_backup + 2 and not errors:
                stop.wait(0.05)
        finally:
            stop.set()
            worker.join(timeout=120)
        assert errors == []
        assert result.exit_code == 0, result.output
        assert "secrets key is not in the archive" in result.output
        with source.app_context():
            acknowledged_in_source = Command.query.filter_by(status="Acknowledged").count()
    finally:
        server.stop()
    _dispose(source)

    # The archive holds no plaintext private key and no secrets key.
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert {"database/mdm.sqlite3", "database/mdm.pgdump"} & set(names)
        assert "certs/ca.key" in names and "instance/secret_key" in names
        assert not any(n.endswith("secrets.key") for n in names)
        for member in tar.getmembers():
            assert b"PRIVATE KEY" not in tar.extractfile(member).read(), member.name
    assert (archive.stat().st_mode & 0o077) == 0

    # Restore into a new folder; the operator supplies the secrets key kept separately.
    kept_key = tmp_path / "kept-secrets.key"
    shutil.copy(source_dir / "instance" / "secrets.key", kept_key)
    shutil.rmtree(source_dir)                      # the old server is gone
    target_dir = tmp_path / "restored"
    target = _fresh_app(target_dir, port, pki_template, SECRETS_KEY_FILE=str(kept_key))
    result = target.test_cli_runner().invoke(args=["mdm", "restore", str(archive)])
    assert result.exit_code == 0, result.output
    assert (os.stat(target_dir / "certs" / "ca.key").st_mode & 0o077) == 0

    with target.app_context():
        from mdm.ops.bootstrap import initialise
        initialise()
        restored = {d.udid for d in Device.query.filter_by(enrollment_status="enrolled")}
        assert restored == {d.udid for d in devices}
        # Everything the devices had acknowledged before the snapshot is there (the snapshot is one moment).
        assert 9 <= Command.query.filter_by(status="Acknowledged").count() <= acknowledged_in_source

    server = _server_for(target, port, SECRETS_KEY_FILE=str(kept_key)).start()
    try:
        with target.app_context():
            from mdm.protocol import queue
            for d in Device.query.all():
                queue.enqueue(d, "SecurityInfo", push=False)
            db.session.commit()
        for device in devices:
            device.received_commands.clear()
            device.connect()        # same identity certificate, same CA: the restored server accepts it
            types = [c["Command"]["RequestType"] for c in device.received_commands]
            assert "SecurityInfo" in types
        with target.app_context():
            pending = Command.query.filter(Command.request_type == "SecurityInfo",
                                           Command.status != "Acknowledged").count()
            assert pending == 0
    finally:
        server.stop()
    for device in devices:
        device.close()
    _dispose(target)


def test_restore_refuses_a_wrong_key_and_a_used_instance_without_writing(tmp_path, pki_template):
    source = make_app(tmp_path / "a", pki_template)
    archive = tmp_path / "b.tar.gz"
    assert source.test_cli_runner().invoke(args=["mdm", "backup", "--out", str(archive)]).exit_code == 0

    fresh = _fresh_app(tmp_path / "wrong", 8443, pki_template, SECRETS_KEY=os.urandom(32).hex())
    result = fresh.test_cli_runner().invoke(args=["mdm", "restore", str(archive)])
    assert result.exit_code == 1 and "does not open" in result.output
    assert not (tmp_path / "wrong" / "certs").exists()

    nokey = _fresh_app(tmp_path / "nokey", 8443, pki_template)
    result = nokey.test_cli_runner().invoke(args=["mdm", "restore", str(archive)])
    assert result.exit_code == 1 and "needs the secrets key" in result.output

    # Into the instance it came from (it has a CA and a database): refused unless --force.
    result = source.test_cli_runner().invoke(args=["mdm", "restore", str(archive)])
    assert result.exit_code == 1 and "fresh instance" in result.output

    damaged = tmp_path / "damaged.tar.gz"
    damaged.write_bytes(archive.read_bytes()[:200])
    result = source.test_cli_runner().invoke(args=["mdm", "restore", str(damaged)])
    assert result.exit_code == 1 and "not a readable backup archive" in result.output
    _dispose(source)


def test_a_self_contained_backup_carries_its_key(tmp_path, pki_template):
    source = make_app(tmp_path / "a", pki_template)
    archive = tmp_path / "full.tar.gz"
    result = source.test_cli_runner().invoke(args=["mdm", "backup", "--out", str(archive), "--include-secrets-key"])
    assert result.exit_code == 0, result.output
    target = _fresh_app(tmp_path / "t", 8443, pki_template)
    result = target.test_cli_runner().invoke(args=["mdm", "restore", str(archive)])
    assert result.exit_code == 0, result.output
    assert ((tmp_path / "t" / "instance" / "secrets.key").read_text()
            == (tmp_path / "a" / "instance" / "secrets.key").read_text())
    with target.app_context():
        from mdm.pki import get_pki
        assert get_pki().ca_cert.subject.rfc4514_string().endswith("O=Test Org")
    _dispose(source)
    _dispose(target)


def test_postgresql_backup_without_pg_dump_says_what_to_install(tmp_path, pki_template, monkeypatch):
    from mdm.ops import backup
    app = make_app(tmp_path, pki_template)
    monkeypatch.setenv("PATH", str(tmp_path))   # a host without the PostgreSQL client tools
    from sqlalchemy.engine import make_url
    with pytest.raises(backup.BackupError, match="pg_dump is not installed"):
        backup._pg_dump(make_url("postgresql://mdm@localhost/mdm"), tmp_path / "x")
    _dispose(app)
