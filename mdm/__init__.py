"""Self-hosted Apple MDM: the application factory.

``create_app`` lists the rooms in one block; each wires itself with ``init_app(app)`` (blueprints,
scheduler jobs, signal receivers, check-in handlers). The CLI modules attach their commands to
``flask mdm`` when imported (mdm/cli.py). Transactions: services flush and audit; the edge commits
once (a request, a CLI command, a scheduler job): mdm/unit_of_work.py and docs/architecture.md.
"""
from __future__ import annotations

import os
from pathlib import Path

from flask import Flask

from .ops import backup, bootstrap, logs  # noqa: F401
from .devices import cli as devices_cli  # noqa: F401
from .push import apns as push, cli as push_cli, cert as pushcert  # noqa: F401  (CLI modules add commands)
from . import models, unit_of_work  # noqa: F401  (models: register tables)
from .accounts.guard import init_access
from .accounts.login import init_login
from .api import bp as api_bp
from .cli import mdm_cli
from .config import PROJECT_ROOT, load_config
from .ddm import jobs as ddm_room
from .ddm import enforcement_models, models as ddm_models, state_models as ddm_state_models  # noqa: F401  (tables)
from .enroll import cli as enroll_cli  # noqa: F401  (adds commands)
from .enroll import scep
from .enroll.views import bp as enroll_bp
from .extensions import db, init_db, migrate
from .protocol.views import bp as protocol_bp
from .simulator import cli as simulator_cli  # noqa: F401  (adds commands)
from .ui import cli as ui_cli  # noqa: F401  (adds commands)
from .ui import init_ui

MIGRATIONS_DIR = str(Path(__file__).resolve().parent / "migrations")


def create_app(overrides: dict | None = None, instance_path: str | None = None) -> Flask:
    app = Flask(
        __name__,
        instance_path=instance_path or os.environ.get("MDM_INSTANCE_PATH") or str(PROJECT_ROOT / "instance"),
        instance_relative_config=True,
        template_folder=str(PROJECT_ROOT / "templates"),
    )
    load_config(app, overrides)
    logs.configure(app.config)
    init_db(app)
    migrate.init_app(app, db, directory=MIGRATIONS_DIR, render_as_batch=True)

    # The rooms. Devices: the check-in/command protocol and enrollment (the core), push, SCEP. Accounts
    # decide who may call which route (one guard for every request). The DDM room registers its jobs,
    # receivers and the DeclarativeManagement check-in handler. The admin UI and the JSON API are
    # siblings above them that never import each other.
    pushcert.init_app(app)
    app.register_blueprint(protocol_bp)
    app.register_blueprint(enroll_bp)
    push.init_app(app)
    scep.init_app(app)
    init_login(app)
    init_access(app)
    ddm_room.init_app(app)
    init_ui(app)
    app.register_blueprint(api_bp)
    app.cli.add_command(mdm_cli)

    # A request is an edge: its services flush, and its work commits once (mdm/unit_of_work.py).
    app.before_request(unit_of_work.begin_request)
    app.after_request(unit_of_work.end_request)
    app.teardown_request(unit_of_work.forget_request)
    return app
