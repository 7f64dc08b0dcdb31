"""Apps that the production server (``mdm.run.main`` → granian → ``mdm.server.serve``) serves in tests that
need to see inside the app: run as ``python -m serving_apps NAME`` (``tests/support/`` on PYTHONPATH).

- ``echo``: the MDM app plus ``/_echo`` (PUT/POST), which answers the body's length and appends one
  line per body it received to ``<instance>/received.log``, so a test can tell that a refused body
  never reached the application.
- ``careless``: the MDM app plus hooks that log every request and response in full, as careless
  code might; the log must still hold no secret.
"""
from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path

from flask import request

from mdm import create_app
from mdm.server.serve import bridge_for, die_with_parent


def _echo_app():
    app = create_app({"WTF_CSRF_METHODS": []})   # /_echo is a test route, not a form
    from mdm.accounts.access import public
    received = Path(app.instance_path) / "received.log"

    @app.route("/_echo", methods=["PUT", "POST"])
    @public
    def echo():
        body = request.get_data()
        with received.open("a") as f:
            f.write(f"{len(body)} {hashlib.sha256(body).hexdigest()}\n")
        return {"length": len(body)}
    return app


def _careless_app():
    app = create_app()
    careless = logging.getLogger("careless")

    # Code that should never have been written: it logs every request and response in full.
    @app.before_request
    def log_everything_in():
        careless.warning("request %s %s headers=%s body=%r", request.method, request.full_path,
                         dict(request.headers), request.environ["wsgi.input"].getvalue())

    @app.after_request
    def log_everything_out(response):
        careless.warning("response %s body=%r", response.status, response.get_data())
        return response
    return app


APPS = {"echo": _echo_app, "careless": _careless_app}


def echo_worker_app():
    die_with_parent()
    return bridge_for(_echo_app())


def careless_worker_app():
    die_with_parent()
    return bridge_for(_careless_app())


if __name__ == "__main__":
    from mdm.run import main
    sys.exit(main(target=f"serving_apps:{sys.argv[1]}_worker_app"))
