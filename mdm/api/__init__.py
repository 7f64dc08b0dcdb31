"""JSON API under /api/v1: the same services and validation as the UI, authenticated by role-bearing
tokens (``flask mdm api-token create --role ROLE`` or Administrators › API Tokens)."""
from __future__ import annotations

from . import devices, enforcement, groups, openapi, policies  # noqa: F401  (register the routes)
from .blueprint import bp  # noqa: F401  (registered by the app factory)
