"""``python -m mdm.run``: the production command. First-run set-up, then the HTTPS server (cheroot: one
process, a pool of threads) and the scheduler in one process. ``./run.sh`` runs exactly this.

Options come from ``instance/config.py`` and ``MDM_*`` variables (``THREADS``, ``REQUEST_TIMEOUT_SECONDS``,
``REQUEST_BODY_DEADLINE_SECONDS``, ``MAX_CONTENT_LENGTH``, ``LOG_FORMAT``; see docs/operations.md).
A start-up problem the operator must fix (missing or wrong secrets key) ends with exit status 2 and a
one-line message, not a traceback.
"""
from __future__ import annotations

import logging
import signal
import sys

from . import create_app
from .bootstrap import initialise
from .secrets import SecretsKeyError
from .serve import build_server

log = logging.getLogger("mdm.run")

EXIT_CONFIG_ERROR = 2


def main() -> int:
    app = create_app()
    try:
        with app.app_context():
            for line in initialise():
                print(line, flush=True)
        server = build_server(app, app.config["LISTEN_HOST"], int(app.config["PORT"]), tls=bool(app.config["TLS"]))
    except SecretsKeyError as exc:
        print(f"mdm: cannot start: {exc}", file=sys.stderr, flush=True)
        return EXIT_CONFIG_ERROR
    scheduler = None
    if app.config["SCHEDULER_ENABLED"]:
        from .scheduler import start_scheduler
        scheduler = start_scheduler(app)
    server.prepare()   # bound and listening before we say so
    print(f"Serving on {app.config['SERVER_URL']}/ (listening on {app.config['LISTEN_HOST']}:{app.config['PORT']}, "
          f"{app.config['THREADS']} threads)", flush=True)

    def stop(signum, frame):
        # Raised in the serving thread, which then stops the server below (calling server.stop()
        # from inside the handler would wait for the very loop it interrupts).
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve()
    except (KeyboardInterrupt, SystemExit):
        log.info("shutting down")
    finally:
        server.stop()
        if scheduler:
            scheduler.shutdown(wait=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
