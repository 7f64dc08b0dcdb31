"""First-run set-up shared by ``flask mdm init`` and the server start: database, PKI, push identity."""
from __future__ import annotations

from flask import current_app

from .dbsetup import init_db
from .enroll.pki import get_pki


def initialise() -> list[str]:
    """Idempotent. Returns lines describing what exists, for the operator."""
    init_db()
    pki = get_pki()
    lines = [f"Database: {current_app.config['SQLALCHEMY_DATABASE_URI']}",
             f"CA certificate: {pki.ca_cert_path}",
             f"TLS certificate: {pki.tls_cert_path}",
             f"Server URL: {current_app.config['SERVER_URL']}"]
    for hook in current_app.extensions.get("mdm_init_hooks", []):
        lines += hook() or []
    return lines
