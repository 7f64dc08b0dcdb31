"""``flask mdm …``: the operator's command group. Each room adds its own subcommands here."""
from __future__ import annotations

import click
from flask.cli import AppGroup

mdm_cli = AppGroup("mdm", help="Operate the MDM server.")


@mdm_cli.command("init")
def init_command():
    """Create database, CA, TLS and signing certificates (idempotent)."""
    from .bootstrap import initialise
    from .secrets import SecretsKeyError
    try:
        lines = initialise()
    except SecretsKeyError as exc:
        raise click.ClickException(str(exc)) from None
    for line in lines:
        click.echo(line)


def _register_subcommands():
    # Each room owns its CLI module; importing it attaches its commands to ``mdm_cli``.
    import importlib
    for module in ("mdm.cli_core", "mdm.enroll.cli", "mdm.push_cli", "mdm.ddm.cli", "mdm.ui.cli",
                   "mdm.simulator.cli", "mdm.backup"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # A room without a CLI module yet; any other missing import is a real error.
            if not module.startswith(exc.name or "\0"):
                raise


_register_subcommands()
