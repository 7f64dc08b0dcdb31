"""Admin web UI (HTMX)."""


def init_ui(app) -> None:
    """Register the UI blueprints (filled by the UI issue)."""
