"""First-run set-up shared by ``flask mdm init`` and the server start: database, PKI, push identity."""
from __future__ import annotations

import click
from flask import current_app
from sqlalchemy.engine import make_url

from .dbsetup import init_db
from ..pki import get_pki
from ..cli import mdm_cli
from ..secrets import SecretsKeyError, get_box, seal_device_tokens


def _safe_url(url: str) -> str:
    """The database URL without its password (it is printed and may be logged)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy understands: say nothing about it
        return "(unparseable database URL)"


def initialise() -> list[str]:
    """Idempotent. Returns lines describing what exists, for the operator."""
    box = get_box()  # first: a missing or wrong secrets key stops here, before anything is written
    init_db()
    seal_device_tokens(box)  # rows from a release that stored device tokens in the clear
    pki = get_pki()
    lines = [f"Database: {_safe_url(current_app.config['SQLALCHEMY_DATABASE_URI'])}",
             f"Secrets key: {box.source}",
             f"CA certificate: {pki.ca_cert_path}",
             f"TLS certificate: {pki.tls_cert_path}",
             f"Server URL: {current_app.config['SERVER_URL']}"]
    for hook in current_app.extensions.get("mdm_init_hooks", []):
        lines += hook() or []
    return lines


@mdm_cli.command("init")
def init_command():
    """Create database, CA, TLS and signing certificates (idempotent)."""
    try:
        lines = initialise()
    except SecretsKeyError as exc:
        raise click.ClickException(str(exc)) from None
    for line in lines:
        click.echo(line)
