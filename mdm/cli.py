"""``flask mdm …``: the operator's command group. Each room adds its own subcommands here from its
CLI module (mdm/ops/bootstrap.py: ``init``; mdm/devices/cli.py, mdm/push/cli.py, mdm/ops/backup.py,
mdm/enroll/cli.py, mdm/ddm/cli.py, mdm/ddm/enforcement_cli.py, mdm/ui/cli.py, mdm/simulator/cli.py); the app factory (mdm/__init__.py) imports those modules, so
this group imports no room and every room may import it."""
from __future__ import annotations

from flask.cli import AppGroup

mdm_cli = AppGroup("mdm", help="Operate the MDM server.")
