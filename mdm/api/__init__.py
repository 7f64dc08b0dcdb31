"""JSON API under /api/v1: the same services and validation as the UI, authenticated by role-bearing
tokens (``flask mdm api-token create --role ROLE`` or Administrators › API Tokens)."""
from __future__ import annotations

from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/api/v1")

from . import devices, enforcement, groups, openapi, policies  # noqa: E402,F401  (register the routes)
