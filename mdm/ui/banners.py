"""Page-wide banners (push outage, stale release catalog): each is a function that returns the banner
to show or None, offered to every template as a lazy callable for signed-in users only. A banner that
fails to compute is logged and left out: it must never take a page down."""
from __future__ import annotations

from flask import current_app
from flask_login import current_user


def register_banner(app, name: str, compute) -> None:
    """Templates get ``name()``: ``compute()`` for a signed-in user, else None."""
    @app.context_processor
    def _banner():
        def banner():
            if not (current_user and current_user.is_authenticated):
                return None
            try:
                return compute()
            except Exception:
                current_app.logger.exception("%s could not be computed", name.replace("_", " "))
                return None
        return {name: banner}
