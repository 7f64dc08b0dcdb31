"""Bring the database schema up to date: Alembic migrations when they exist (always, in a release)."""
from __future__ import annotations

from pathlib import Path

from flask import current_app
from flask_migrate import upgrade

from ..extensions import db


def init_db() -> None:
    """Idempotent: run pending migrations (or, before the first migration exists, create the tables)."""
    versions = Path(current_app.extensions["migrate"].directory) / "versions"
    if versions.is_dir() and any(versions.glob("*.py")):
        upgrade()
    else:
        db.create_all()
