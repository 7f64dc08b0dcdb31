"""The JSON API's blueprint (/api/v1). Its own module so the route modules and the package's
``__init__`` import it without importing each other."""
from __future__ import annotations

from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/api/v1")
