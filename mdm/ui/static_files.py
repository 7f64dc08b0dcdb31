"""Static files: our stylesheet, script and icon, and htmx served from the installed package (never a CDN,
never a copy). ``/favicon.ico`` is answered at the root too, where browsers ask for it unprompted."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from flask import Blueprint, abort, send_from_directory

from ..accounts.access import public

bp = Blueprint("ui_static", __name__)
OWN_STATIC = Path(__file__).resolve().parent / "static"


def htmx_directory() -> Path:
    spec = importlib.util.find_spec("js_lib_htmx")  # the django-js-lib-htmx wheel; no Django needed
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("django-js-lib-htmx is not installed (see requirements.txt)")
    return Path(list(spec.submodule_search_locations)[0]) / "static" / "htmx"


@bp.route("/static/vendor/htmx.min.js")
@public
def htmx_js():
    return send_from_directory(htmx_directory(), "htmx.min.js", mimetype="text/javascript", max_age=86400)


@bp.route("/static/ui/<path:filename>")
@public
def own_static(filename):
    if not (OWN_STATIC / filename).is_file():
        abort(404)
    return send_from_directory(OWN_STATIC, filename, max_age=3600)


@bp.route("/favicon.ico")
@public
def favicon():
    return send_from_directory(OWN_STATIC, "favicon.ico", mimetype="image/vnd.microsoft.icon", max_age=86400)
