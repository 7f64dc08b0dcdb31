import os
import stat

import httpx
import pytest

from mdm.extensions import db


def test_private_keys_are_owner_only(app):
    from pathlib import Path
    certs = Path(app.config["CERTS_DIR"])
    for name in ("ca.key", "tls.key", "signing.key"):
        mode = stat.S_IMODE(os.stat(certs / name).st_mode)
        assert mode == 0o600, (name, oct(mode))


def test_tls_certificate_names_and_issuer(app):
    from cryptography import x509
    from mdm.pki import get_pki, load_cert
    with app.app_context():
        pki = get_pki()
        cert = load_cert(pki.tls_cert_path)
        sans = {str(v.value) for v in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value}
        assert {"localhost", "127.0.0.1"} <= sans
        assert cert.issuer == pki.ca_cert.subject


def test_sqlite_runs_in_wal_mode(app):
    with app.app_context():
        if db.engine.dialect.name != "sqlite":
            pytest.skip("SQLite only: the suite's PostgreSQL run")
        mode = db.session.execute(db.text("PRAGMA journal_mode")).scalar()
        assert mode == "wal"


def test_live_server_speaks_https_with_our_ca(live_server):
    # A request verified against our CA only: proves TLS is on and the chain is ours.
    import ssl
    response = httpx.get(live_server.url + "/nothing-here", verify=ssl.create_default_context(cafile=live_server.ca_file))
    assert response.status_code == 404
