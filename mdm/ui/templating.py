"""Jinja helpers shared by every page: role checks, dates, the navigation."""
from __future__ import annotations

from datetime import datetime

from flask_login import current_user

from ..accounts import Role
from ..models import utcnow
from .catalog_banner import init_catalog_banner
from .device_facts import state_badge
from .push_banner import init_push_banner


def can(role_name: str) -> bool:
    """In templates: ``{% if can('Manager') %}`` shows a control only to roles that may use it."""
    return bool(current_user and current_user.is_authenticated and current_user.has_role(Role.parse(role_name)))


def format_dt(value: datetime | str | None, empty: str = "—") -> str:
    """UTC datetimes, naive or ISO strings (some services hand out ``isoformat()`` text)."""
    if isinstance(value, str) and value:
        try:
            value = datetime.fromisoformat(value.rstrip("Z"))
        except ValueError:
            return value
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else empty


def ago(value: datetime | None, empty: str = "never") -> str:
    if not value:
        return empty
    seconds = int((utcnow() - value).total_seconds())
    future = seconds < 0
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            text = f"{seconds // size}{unit}"
            break
    else:
        text = f"{seconds}s"
    return f"in {text}" if future else f"{text} ago"


def init_templating(app) -> None:
    app.jinja_env.filters["dt"] = format_dt
    app.jinja_env.filters["ago"] = ago


    @app.context_processor
    def _helpers():
        return {"can": can, "Role": Role, "now_utc": utcnow, "state_badge": state_badge}

    init_push_banner(app)
    init_catalog_banner(app)
