"""Logging: plain text or one JSON object per line, request context on every record, secrets redacted.

``MDM_LOG_FORMAT=json`` gives lines like
``{"time": "2026-11-27T20:21:07.123Z", "level": "INFO", "logger": "mdm.protocol.checkin", "message": "...",
"request_id": "3f2a...", "remote_addr": "10.0.0.7", "method": "PUT", "path": "/mdm/checkin"}``;
``MDM_LOG_LEVEL`` sets the level (default INFO).

Every handler on the root logger gets :class:`RedactingFilter`, which rewrites the message (and any
traceback) before it is formatted: PEM private keys and sealed secrets, APNs push tokens, PushMagic,
Unlock/Bootstrap tokens, ``Mdm-Signature`` values, SCEP challenges, enrollment tokens in
``/enroll/<token>`` URLs, passwords and bearer tokens are replaced by ``[REDACTED]``, whatever code
logged them.
"""
from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import re
import sys

REDACTED = "[REDACTED]"

# Request context set by the server bridge in ``mdm.server.serve`` (one per request, in its app thread).
request_context: contextvars.ContextVar[dict | None] = contextvars.ContextVar("mdm_request", default=None)

_SECRET_NAMES = (r"push[_ ]?magic|(?:unlock|bootstrap|push|enrollment|api|access|auth|bearer)?[_ -]?token|"
                 r"mdm-signature|signature|challenge(?:password)?|password|passwd|secret(?:[_ ]?key)?|"
                 r"authorization|cookie|set-cookie")
_PATTERNS: list[tuple[re.Pattern, str]] = [
    # PEM private keys (any flavour, even cut off by a length limit) and our sealed secrets.
    (re.compile(r"-----BEGIN [A-Z0-9 ]*(?:PRIVATE KEY|SEALED SECRET)-----.*?"
                r"(?:-----END [A-Z0-9 ]*(?:PRIVATE KEY|SEALED SECRET)-----|\Z)", re.S), "[REDACTED PRIVATE KEY]"),
    # plist XML: <key>Token</key><data>…</data> / <string>…</string>
    # (whitespace may be real or, in a logged bytes repr, escaped as \n and \t)
    (re.compile(r"(<key>(?:\s|\\[nrt])*(?:Token|PushMagic|UnlockToken|BootstrapToken|Challenge|Password|"
                r"AuthToken|Mdm-Signature)(?:\s|\\[nrt])*</key>(?:\s|\\[nrt])*<(data|string)>).*?(</\2>)",
                re.S | re.I), r"\1" + REDACTED + r"\3"),
    # name=value, name: value, "name": "value", 'Name': b'...' (dict reprs, headers, query strings, JSON)
    (re.compile(r"""(?ix)(["']?\b(?:""" + _SECRET_NAMES + r""")\b["']?\s*[:=]\s*)"""
                r"""(?:bearer\s+|basic\s+)?(b?'[^']*'|b?"[^"]*"|[^\s,;&}<\])]+)"""), r"\1" + REDACTED),
    # enrollment URLs carry their token in the path
    (re.compile(r"(/enroll/)[^\s/?#\"'<>]+"), r"\1" + REDACTED),
    # SCEP PKIOperation over GET carries the request (with the challenge) in ?message=
    (re.compile(r"([?&]message=)[^\s&\"']+"), r"\1" + REDACTED),
    # APNs request paths (push.py's own filter on httpx writes the same)
    (re.compile(r"(/3/device/)[0-9a-fA-F]+"), r"\1<token>"),
    # APNs device tokens (32 bytes as hex) wherever they appear
    (re.compile(r"\b[0-9a-fA-F]{64}\b"), REDACTED),
    # long base64 runs: CMS signatures (Mdm-Signature), DER blobs, tokens as base64
    (re.compile(r"[A-Za-z0-9+/]{160,}={0,2}"), REDACTED),
]


# A pattern only runs when its cheap trigger is in the text (None: always): most lines need two scans.
_TRIGGERS = ("-----BEGIN", "</key>", None, "/enroll/", "message=", "/3/device/", None, None)


_NAME_HINT = re.compile(r"token|magic|signature|challenge|passw|secret|authoriz|cookie")


def redact(text: str) -> str:
    lowered = None
    for (pattern, replacement), trigger in zip(_PATTERNS, _TRIGGERS):
        if trigger is not None and trigger not in text:
            continue
        if pattern is _PATTERNS[2][0]:
            lowered = lowered or text.lower()
            if not _NAME_HINT.search(lowered):
                continue
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record's message and traceback with secrets removed (never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "_mdm_redacted", False):
            try:
                message = record.getMessage()
            except Exception:  # a broken format string: keep what we can
                message = f"{record.msg!r} {record.args!r}"
            record.msg, record.args = redact(message), None
            record._mdm_redacted = True
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class RequestContextFilter(logging.Filter):
    """Adds request_id, remote_addr, method and path (path redacted) when a request is being served."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = request_context.get()
        if ctx is None:
            ctx = _flask_request_context()
        for name in ("request_id", "remote_addr", "method", "path"):
            if not hasattr(record, name):
                setattr(record, name, (ctx or {}).get(name))
        return True


def _flask_request_context() -> dict | None:
    try:
        from flask import has_request_context, request
    except ImportError:  # pragma: no cover
        return None
    if not has_request_context():
        return None
    return {"request_id": request.environ.get("mdm.request_id"), "remote_addr": request.remote_addr,
            "method": request.method, "path": request.path}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds")
                      .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ("request_id", "remote_addr", "method", "path", "status", "duration_ms", "bytes_in"):
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = redact(value) if isinstance(value, str) else value
        if record.exc_info or record.exc_text:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        return f"{line} [req {request_id}]" if request_id else line


def configure(config=None, *, stream=None) -> None:
    """Set up the root logger from ``LOG_FORMAT`` (text|json) and ``LOG_LEVEL``. Idempotent: our
    handler is replaced, other handlers (e.g. a test runner's) keep theirs but gain the filters."""
    config = config or {}
    fmt = str(config.get("LOG_FORMAT") or "text").lower()
    if fmt not in ("text", "json"):
        raise ValueError(f"MDM_LOG_FORMAT must be 'text' or 'json', not {fmt!r}")
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_mdm_handler", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._mdm_handler = True
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(str(config.get("LOG_LEVEL") or "INFO").upper())
    for h in root.handlers:
        _add_filters(h)
    _install_record_factory()
    # granian's own loggers (configured in mdm.server.serve) propagate to ours.
    for name in ("_granian", "granian.access"):
        logging.getLogger(name).propagate = True


def _install_record_factory() -> None:
    """Redact at the moment a record is made as well, so handlers added later (by a library, a test
    runner, an operator's logging config) never see a secret either."""
    current = logging.getLogRecordFactory()
    if getattr(current, "_mdm_redacting", False):
        return

    def factory(*args, **kwargs):
        record = current(*args, **kwargs)
        _redactor.filter(record)
        return record
    factory._mdm_redacting = True
    logging.setLogRecordFactory(factory)


def _add_filters(handler: logging.Handler) -> None:
    if not any(isinstance(f, RedactingFilter) for f in handler.filters):
        handler.addFilter(RequestContextFilter())
        handler.addFilter(RedactingFilter())


_redactor = RedactingFilter()
access_log = logging.getLogger("mdm.access")
