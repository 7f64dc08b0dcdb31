"""Self-hosted Apple MDM: the application factory."""
from __future__ import annotations

import os
from pathlib import Path

from flask import Flask

from .config import PROJECT_ROOT, load_config
from .extensions import db, migrate

MIGRATIONS_DIR = str(Path(__file__).resolve().parent / "migrations")


def create_app(overrides: dict | None = None, instance_path: str | None = None) -> Flask:
    app = Flask(
        __name__,
        instance_path=instance_path or os.environ.get("MDM_INSTANCE_PATH") or str(PROJECT_ROOT / "instance"),
        instance_relative_config=True,
        template_folder=str(PROJECT_ROOT / "templates"),
    )
    load_config(app, overrides)
    from . import logs
    logs.configure(app.config)

    db.init_app(app)
    migrate.init_app(app, db, directory=MIGRATIONS_DIR, render_as_batch=True)

    from . import models  # noqa: F401  (register tables)
    from .ddm import models as ddm_models  # noqa: F401
    from .ddm import state_models  # noqa: F401

    from . import pushcert
    pushcert.init_app(app)

    from .protocol import bp as protocol_bp
    from .enroll.views import bp as enroll_bp
    app.register_blueprint(protocol_bp)
    app.register_blueprint(enroll_bp)

    # Accounts decide who may call which route (one guard for every request); the admin UI and the
    # JSON API are siblings above them that never import each other.
    from .accounts.guard import init_access
    from .accounts.login import init_login
    init_login(app)
    init_access(app)
    from .ui import init_ui
    init_ui(app)
    from .api import bp as api_bp
    app.register_blueprint(api_bp)

    from . import backup, cli_core, push_cli  # noqa: F401  (each room's CLI module adds its commands)
    from .cli import mdm_cli
    from .ddm import cli as ddm_cli  # noqa: F401
    from .enroll import cli as enroll_cli  # noqa: F401
    from .simulator import cli as simulator_cli  # noqa: F401
    from .ui import cli as ui_cli  # noqa: F401
    app.cli.add_command(mdm_cli)
    return app
