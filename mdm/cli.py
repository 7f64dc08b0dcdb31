"""``flask mdm …``: the operator's command group. Each room adds its own subcommands here from its
CLI module (mdm/devices/cli.py, mdm/push/cli.py, mdm/ops/backup.py, mdm/enroll/cli.py, mdm/ddm/cli.py,
mdm/ui/cli.py, mdm/simulator/cli.py); the app factory (mdm/__init__.py) imports those modules, so
this group imports no room and every room may import it."""
from __future__ import annotations

import click
from flask.cli import AppGroup

from .ops.bootstrap import initialise
from .secrets import SecretsKeyError

mdm_cli = AppGroup("mdm", help="Operate the MDM server.")


@mdm_cli.command("init")
def init_command():
    """Create database, CA, TLS and signing certificates (idempotent)."""
    try:
        lines = initialise()
    except SecretsKeyError as exc:
        raise click.ClickException(str(exc)) from None
    for line in lines:
        click.echo(line)
