"""Error answers by kind of route (the kinds ``access`` defines):

- admin pages: a styled "Page not found" (404) or "Something went wrong" (500) inside the app frame
  (the frame's navigation only for a signed-in admin); an HTMX request gets a one-line message instead,
  so a whole page is never swapped into a fragment;
- the JSON API (/api/…): ``{"error": "..."}`` with the status, as every other API error;
- device-facing routes (/mdm, /scep, /enroll, /ca.pem): exactly what Flask answers by default, unchanged.

A 500 page never shows the exception; the server log has it.
"""
from __future__ import annotations

from flask import render_template, request
from werkzeug.exceptions import HTTPException, InternalServerError

from ..accounts.access import api_error, is_api, is_device_facing, is_htmx
from ..extensions import db

MESSAGES = {
    404: ("Page not found", "There is nothing at this address. It may have been deleted, or the link is mistyped."),
    405: ("Not allowed here", "This address does not take that kind of request."),
    500: ("Something went wrong", "The server could not finish this request. Nothing was half-saved: try again, "
                                  "and if it keeps happening the server log has the details."),
}


def init_error_pages(app) -> None:
    for code in MESSAGES:
        app.register_error_handler(code, _answer)


def _answer(exc: HTTPException):
    path = request.path
    code = exc.code or 500
    if is_device_facing(path):
        return exc
    title, text = MESSAGES.get(code, (exc.name, exc.description))
    if is_api(path):
        return api_error(code, _api_message(code, path))
    if code >= 500:
        _rollback()
    try:
        if is_htmx():
            return render_template("ui/_message.html", message=f"{title}. {text}", error=True), code
        return render_template("ui/error.html", code=code, title=title, text=text), code
    except Exception:  # noqa: BLE001 - the frame itself failed (e.g. the database is down): plain text
        return InternalServerError().get_response() if code >= 500 else exc


def _api_message(code: int, path: str) -> str:
    if code == 404:
        return f"no API endpoint or object at {path}"
    if code == 405:
        return f"{request.method} is not allowed on {path}"
    return "internal server error; the server log has the details"


def _rollback() -> None:
    """The failed request may have left the session mid-transaction; the frame reads the database."""
    try:
        db.session.rollback()
    except Exception:  # noqa: BLE001 - best effort before showing the error page
        pass
