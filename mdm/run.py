"""``python -m mdm.run``: the production command. First-run set-up, then the HTTPS server (granian,
``mdm.server.serve``) with the scheduler running in exactly one worker process. ``./run.sh`` runs exactly this.

Options come from ``instance/config.py`` and ``MDM_*`` variables (``WORKERS``, ``THREADS``,
``REQUEST_TIMEOUT_SECONDS``, ``REQUEST_BODY_DEADLINE_SECONDS``, ``MAX_CONTENT_LENGTH``,
``SHUTDOWN_TIMEOUT_SECONDS``, ``LOG_FORMAT``; see docs/operations.md). SIGTERM or SIGINT stops the
server: requests in flight get ``SHUTDOWN_TIMEOUT_SECONDS`` to finish, then the workers are killed.
A start-up problem the operator must fix (missing or wrong secrets key, a ``WORKERS`` value that is
neither a positive number nor ``auto``) ends with exit status 2 and a one-line message, not a traceback.
"""
from __future__ import annotations

import logging
import sys

from . import create_app
from .ops import logs
from .ops.bootstrap import initialise
from .extensions import db
from .secrets import SecretsKeyError
from .server.serve import PRODUCTION_TARGET, WorkersSettingError, build_server, worker_count

log = logging.getLogger("mdm.run")

EXIT_CONFIG_ERROR = 2


def main(target: str = PRODUCTION_TARGET) -> int:
    app = create_app()
    try:
        worker_count(app.config)
        with app.app_context():
            for line in initialise():
                print(line, flush=True)
            db.engine.dispose()   # the workers open their own connections
        server = build_server(app, target=target)
    except (SecretsKeyError, WorkersSettingError) as exc:
        print(f"mdm: cannot start: {exc}", file=sys.stderr, flush=True)
        return EXIT_CONFIG_ERROR
    logs.configure(app.config)   # granian set up its loggers; ours formats (and redacts) everything
    config = app.config

    @server.on_startup
    def announce():
        # Bound and listening (connections wait in the backlog until a worker takes them).
        print(f"Serving on {config['SERVER_URL']}/ (listening on {config['LISTEN_HOST']}:{config['PORT']}, "
              f"{worker_count(config)} worker process(es) x {config['THREADS']} threads)", flush=True)

    server.serve()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
