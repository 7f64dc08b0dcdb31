"""How a UI view answers after a change (a plain form or an HTMX request)."""
from __future__ import annotations

from flask import current_app, redirect

from ..accounts.access import is_htmx


def redirect_after_change(url: str):
    """After a change: a 303 for plain forms; for HTMX a whole-page HX-Redirect (an XHR would follow a
    303 silently and swap the next page into a fragment)."""
    if is_htmx():
        response = current_app.response_class("", status=200)
        response.headers["HX-Redirect"] = url
        return response
    return redirect(url, code=303)
