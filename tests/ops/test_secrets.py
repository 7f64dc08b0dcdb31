"""Private keys at rest: sealed with the secrets key, migrated from plaintext, and a missing or wrong
key stops start-up with a message the operator can act on."""
from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from mdm import create_app
from mdm.pki import get_pki, load_private_key
from mdm.extensions import db
from mdm.models import Device
from mdm.secrets import SecretsKeyError, is_sealed, parse_key

ROOT = Path(__file__).resolve().parents[2]
KEY_NAMES = ("ca.key", "tls.key", "signing.key", "push.key")


def spki(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_first_run_generates_an_owner_only_key_and_seals_every_private_key(app):
    key_file = Path(app.instance_path) / "secrets.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(bytes.fromhex(key_file.read_text().strip())) == 32
    certs = Path(app.config["CERTS_DIR"])
    with app.app_context():
        from mdm.push import cert as pushcert
        pushcert.current_identity()
        pushcert.generate_csr()
    for name in KEY_NAMES + ("push.key.pending",):
        data = (certs / name).read_bytes()
        assert is_sealed(data), name
        assert b"PRIVATE KEY" not in data, name
        # No run of the key's own DER (as it would appear base64-armoured) survives sealing.
        with app.app_context():
            from mdm.secrets import get_box
            plain = get_box().open(data)
        armoured = b"".join(line for line in plain.splitlines() if not line.startswith(b"-----"))
        assert armoured[:48] not in data, name
        assert stat.S_IMODE((certs / name).stat().st_mode) == 0o600, name


def test_plaintext_keys_from_an_earlier_install_are_sealed_on_start(app, pki_template):
    # The session template is a plaintext install (as before this release); the app sealed its copy.
    certs = Path(app.config["CERTS_DIR"])
    for name in ("ca.key", "tls.key", "signing.key"):
        assert b"-----BEGIN PRIVATE KEY-----" in (pki_template / name).read_bytes()
        assert is_sealed((certs / name).read_bytes())
        with app.app_context():
            assert spki(load_private_key(certs / name)) == spki(load_private_key(pki_template / name))


def test_the_tls_server_and_profile_signing_work_with_sealed_keys(live_server):
    import httpx
    import ssl
    response = httpx.get(live_server.url + "/ca.pem", verify=ssl.create_default_context(cafile=live_server.ca_file))
    assert response.status_code == 200 and b"BEGIN CERTIFICATE" in response.content
    with live_server.app.app_context():
        pki = get_pki()
        assert spki(pki.signing_key) == pki.signing_cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _database_dump(url: str) -> str:
    """SQLite: Python's iterdump; PostgreSQL: the real pg_dump."""
    from sqlalchemy.engine import make_url
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        con = sqlite3.connect(parsed.database)
        try:
            return "\n".join(con.iterdump())
        finally:
            con.close()
    from mdm.ops.backup import _pg_env
    args, env = _pg_env(parsed)
    return subprocess.run(["pg_dump", *args], env=env, capture_output=True, text=True, check=True).stdout


def test_database_dump_contains_no_private_key(app):
    with app.app_context():
        device = Device(udid="DUMP-1", enrollment_status="enrolled", unlock_token=os.urandom(64),
                        push_token="ab" * 32, push_magic="MAGIC")
        db.session.add(device)
        db.session.commit()
        from mdm.push import cert as pushcert
        pushcert.generate_csr()          # every kind of key exists, and an audit row was written
        db.session.remove()
        db.engine.dispose()
    dump = _database_dump(app.config["DATABASE_URL"])
    assert "DUMP-1" in dump  # the dump is real
    assert "PRIVATE KEY" not in dump and "SEALED SECRET" not in dump


def test_operator_key_from_environment_is_used(tmp_path, pki_template, monkeypatch):
    key = os.urandom(32).hex()
    monkeypatch.setenv("MDM_SECRETS_KEY", key)
    from apps import make_app
    app = make_app(tmp_path, pki_template)
    assert not (Path(app.instance_path) / "secrets.key").exists()
    sealed = (Path(app.config["CERTS_DIR"]) / "ca.key").read_bytes()
    assert parse_key(key, "test").open(sealed).startswith(b"-----BEGIN PRIVATE KEY-----")


def _fresh_app(tmp_path, pki_template, **config):
    certs = tmp_path / "certs"
    if not certs.exists():
        shutil.copytree(pki_template, certs)
    return create_app({"TESTING": True, "SERVER_URL": "https://localhost:8443", "CERTS_DIR": str(certs),
                       "DATABASE_URL": f"sqlite:///{tmp_path / 'mdm.db'}", "SCHEDULER_ENABLED": False, **config},
                      instance_path=str(tmp_path / "instance"))


def test_wrong_key_stops_initialise_and_flask_mdm_init(tmp_path, pki_template):
    app = _fresh_app(tmp_path, pki_template)
    with app.app_context():
        from mdm.ops.bootstrap import initialise
        initialise()
    wrong = _fresh_app(tmp_path, pki_template, SECRETS_KEY=os.urandom(32).hex())
    with wrong.app_context(), pytest.raises(SecretsKeyError, match="does not open .*ca.key"):
        from mdm.ops.bootstrap import initialise
        initialise()
    result = wrong.test_cli_runner().invoke(args=["mdm", "init"])
    assert result.exit_code == 1 and "does not open" in result.output and "Traceback" not in result.output


def _run_main(tmp_path, **env):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MDM_")}
    environ.update({"MDM_INSTANCE_PATH": str(tmp_path / "instance"), "MDM_CERTS_DIR": str(tmp_path / "certs"),
                    "MDM_DATABASE_URL": f"sqlite:///{tmp_path / 'mdm.db'}", "MDM_SCHEDULER_ENABLED": "false",
                    "MDM_LISTEN_HOST": "127.0.0.1", "MDM_PORT": "1", "MDM_SERVER_URL": "https://localhost:1",
                    "PYTHONPATH": str(ROOT), **env})
    return subprocess.run([sys.executable, "-m", "mdm.run"], cwd=ROOT, env=environ, capture_output=True,
                          text=True, timeout=120)


def test_mdm_run_refuses_to_start_with_a_missing_or_wrong_key(tmp_path, pki_template):
    app = _fresh_app(tmp_path, pki_template)
    with app.app_context():
        from mdm.ops.bootstrap import initialise
        initialise()
    sealed_before = (tmp_path / "certs" / "ca.key").read_bytes()

    wrong = _run_main(tmp_path, MDM_SECRETS_KEY=os.urandom(32).hex())
    assert wrong.returncode == 2, wrong.stderr
    assert "cannot start" in wrong.stderr and "does not open" in wrong.stderr and "Traceback" not in wrong.stderr

    (tmp_path / "instance" / "secrets.key").rename(tmp_path / "kept-elsewhere.key")
    missing = _run_main(tmp_path)
    assert missing.returncode == 2, missing.stderr
    assert "secrets key is missing" in missing.stderr and "Traceback" not in missing.stderr
    # Nothing was regenerated or overwritten: the old key still opens the old CA key.
    assert not (tmp_path / "instance" / "secrets.key").exists()
    assert (tmp_path / "certs" / "ca.key").read_bytes() == sealed_before

    missing_file = _run_main(tmp_path, MDM_SECRETS_KEY_FILE=str(tmp_path / "nope.key"))
    assert missing_file.returncode == 2 and "does not exist" in missing_file.stderr


def test_a_plaintext_push_key_from_an_earlier_install_is_sealed_too(tmp_path, pki_template):
    from mdm.pki import new_key, private_key_pem
    from apps import make_app
    shutil.copytree(pki_template, tmp_path / "certs")
    key = new_key()
    (tmp_path / "certs" / "push.key.pending").write_bytes(private_key_pem(key))
    app = make_app(tmp_path, pki_template)
    pending = tmp_path / "certs" / "push.key.pending"
    assert is_sealed(pending.read_bytes()) and stat.S_IMODE(pending.stat().st_mode) == 0o600
    with app.app_context():
        assert spki(load_private_key(pending)) == spki(key)
        db.session.remove()
        db.engine.dispose()


def test_device_unlock_and_bootstrap_tokens_are_sealed_in_the_database(app):
    unlock, bootstrap = os.urandom(64), os.urandom(48)
    with app.app_context():
        db.session.add(Device(udid="TOKENS-1", enrollment_status="enrolled", unlock_token=unlock,
                              bootstrap_token=bootstrap))
        db.session.commit()
        raw = db.session.execute(db.text("SELECT unlock_token, bootstrap_token FROM devices "
                                         "WHERE udid = 'TOKENS-1'")).one()
        assert unlock not in bytes(raw[0]) and bootstrap not in bytes(raw[1])
        db.session.expire_all()
        device = Device.query.filter_by(udid="TOKENS-1").one()
        assert (device.unlock_token, device.bootstrap_token) == (unlock, bootstrap)
        db.session.remove()
        db.engine.dispose()
    assert unlock.hex() not in _database_dump(app.config["DATABASE_URL"]).lower()


def test_device_tokens_stored_in_the_clear_by_an_earlier_release_are_sealed_on_start(app):
    from mdm.ops.bootstrap import initialise
    unlock = os.urandom(64)
    with app.app_context():
        db.session.add(Device(udid="OLD-1", enrollment_status="enrolled"))
        db.session.commit()
        db.session.execute(db.text("UPDATE devices SET unlock_token = :t WHERE udid = 'OLD-1'"), {"t": unlock})
        db.session.commit()
        assert Device.query.filter_by(udid="OLD-1").one().unlock_token == unlock   # still readable
        db.session.remove()
        initialise()
        raw = db.session.execute(db.text("SELECT unlock_token FROM devices WHERE udid = 'OLD-1'")).scalar()
        assert bytes(raw) != unlock and unlock not in bytes(raw)
        db.session.expire_all()
        assert Device.query.filter_by(udid="OLD-1").one().unlock_token == unlock
        db.session.remove()
        db.engine.dispose()
