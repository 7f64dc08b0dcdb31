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
from mdm.enroll.pki import get_pki, load_private_key
from mdm.extensions import db
from mdm.models import Device
from mdm.secrets import SecretsKeyError, is_sealed, parse_key

ROOT = Path(__file__).resolve().parents[1]
KEY_NAMES = ("ca.key", "tls.key", "signing.key", "push.key")


def spki(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_first_run_generates_an_owner_only_key_and_seals_every_private_key(app):
    key_file = Path(app.instance_path) / "secrets.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(bytes.fromhex(key_file.read_text().strip())) == 32
    certs = Path(app.config["CERTS_DIR"])
    with app.app_context():
        from mdm import pushcert
        pushcert.current_identity()
        pushcert.generate_csr()
    for name in KEY_NAMES + ("push.key.pending",):
        data = (certs / name).read_bytes()
        assert is_sealed(data), name
        assert b"PRIVATE KEY" not in data and b"MII" not in data, name
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


def test_database_dump_contains_no_private_key(app):
    with app.app_context():
        device = Device(udid="DUMP-1", enrollment_status="enrolled", unlock_token=os.urandom(64),
                        push_token="ab" * 32, push_magic="MAGIC")
        db.session.add(device)
        db.session.commit()
        get_pki()
        db.engine.dispose()
    con = sqlite3.connect(app.config["DATABASE_URL"].removeprefix("sqlite:///"))
    dump = "\n".join(con.iterdump())
    con.close()
    assert "DUMP-1" in dump  # the dump is real
    assert "PRIVATE KEY" not in dump and "SEALED SECRET" not in dump


def test_operator_key_from_environment_is_used(tmp_path, pki_template, monkeypatch):
    key = os.urandom(32).hex()
    monkeypatch.setenv("MDM_SECRETS_KEY", key)
    from tests.conftest import make_app
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
        from mdm.bootstrap import initialise
        initialise()
    wrong = _fresh_app(tmp_path, pki_template, SECRETS_KEY=os.urandom(32).hex())
    with wrong.app_context(), pytest.raises(SecretsKeyError, match="does not open .*ca.key"):
        from mdm.bootstrap import initialise
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
        from mdm.bootstrap import initialise
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
