"""Flask-Login wiring: the user loader accepts a session cookie only while its server-side session
is alive (``user_for_session`` in mdm/accounts/models.py)."""
from __future__ import annotations

from flask import current_app
from flask_login import LoginManager

from .models import user_for_session

login_manager = LoginManager()


@login_manager.user_loader
def _load_user(session_id: str):
    return user_for_session(session_id, current_app.permanent_session_lifetime)


def init_login(app) -> None:
    login_manager.init_app(app)
    login_manager.session_protection = "basic"
