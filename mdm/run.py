"""``python -m mdm.run``: first-run set-up, then the HTTPS server and the scheduler in one process."""
from __future__ import annotations

import logging
import signal
import sys

from . import create_app
from .bootstrap import initialise
from .serve import build_server

log = logging.getLogger("mdm.run")


def main() -> int:
    app = create_app()
    with app.app_context():
        for line in initialise():
            print(line, flush=True)
    scheduler = None
    if app.config["SCHEDULER_ENABLED"]:
        from .scheduler import start_scheduler
        scheduler = start_scheduler(app)
    server = build_server(app, app.config["LISTEN_HOST"], int(app.config["PORT"]), tls=bool(app.config["TLS"]))
    print(f"Serving on {app.config['SERVER_URL']}/ (listening on {app.config['LISTEN_HOST']}:{app.config['PORT']})",
          flush=True)

    def stop(signum, frame):
        server.stop()
    signal.signal(signal.SIGTERM, stop)
    try:
        server.safe_start()
    finally:
        if scheduler:
            scheduler.shutdown(wait=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
