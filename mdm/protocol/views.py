"""Device-facing MDM endpoints: PUT /mdm/checkin and PUT /mdm/connect.

Thin on purpose: read the body within its size limit, authenticate (mdm/protocol/certauth.py), parse the XML
plist, call the service (mdm/protocol/checkin.py, mdm/protocol/queue.py), commit, answer. An ``Idle`` that changes nothing
(certificate bound and not retired, nothing waiting, last seen under a minute ago) is answered from a
read transaction: no write lock, nothing committed; so is a DeclarativeManagement ``tokens`` or
``declaration-items`` check-in whose answer would store nothing (the read handler the DDM room registers,
``checkin.register_read_handler``: ``ddm.protocol.serve_unchanged``), and a ``TokenUpdate`` that repeats the
stored token, push magic, topic and unlock token (``checkin.token_update_changes_nothing``); anything
else takes the write path. A device never gets 401 or 500:
refusals are 400/403/404/410/413 with the reason logged, and a refused request stores nothing except
its audit record: ``device.auth_failed`` (identity refused; ``object_id`` is the UDID the message
claimed, when it could be read), ``device.topic_refused`` (wrong push topic) and ``device.body_too_large``.

The production server (mdm/server/serve.py) answers these two routes' read paths on its event-loop thread,
without Flask and without handing the request to a worker thread (together about 0.45 ms of CPU, more than
the read path itself): the protocol room offers ``answer_from_read_path`` for each route in
``app.extensions["mdm_event_loop_reads"]``. It answers only from a read path, with the status, headers and
body the Flask view gives for that answer; a request that would write (the write path may wait for the
writer lock; refusals are audited) or fails in any way gets None, having written nothing, and the server
runs it through Flask on a worker thread, where it takes the path described above.

Body limits, enforced here in the Flask app whatever HTTP server runs it, before the signature is checked
or the plist parsed: ``MAX_CHECKIN_BYTES`` (1 MiB) for check-ins, ``MAX_COMMAND_RESPONSE_BYTES`` (2 MiB:
a large InstalledApplicationList or ProfileList fits) for command results. Larger bodies get 413, whether
announced by Content-Length or sent chunked.
"""
from __future__ import annotations

import contextlib
import functools
import logging

from flask import Blueprint, Response, current_app, request
from sqlalchemy.exc import OperationalError
from werkzeug.datastructures import EnvironHeaders
from werkzeug.exceptions import RequestEntityTooLarge

from . import certauth, checkin, queue
from .checkin import ProtocolError, Reply
from ..pki import get_pki
from ..extensions import db, read_only
from ..models import Device, audit, utcnow
from ..plistio import PlistError, loads_xml, require

log = logging.getLogger(__name__)

bp = Blueprint("protocol", __name__)

DEFAULT_MAX_COMMAND_RESPONSE_BYTES = 2 * 1024 * 1024
COMMAND_STATUSES = ("Idle", "Acknowledged", "Error", "CommandFormatError", "NotNow")


class BodyTooLarge(Exception):
    pass


@bp.record_once
def _offer_event_loop_reads(state) -> None:
    """The read paths the production server may answer on its event loop (module docstring)."""
    app = state.app
    app.extensions["mdm_event_loop_reads"] = {
        ("PUT", "/mdm/checkin"): functools.partial(answer_from_read_path, app, _checkin_read, _checkin_limit),
        ("PUT", "/mdm/connect"): functools.partial(answer_from_read_path, app, _connect_read, _connect_limit),
    }


def _checkin_limit(config) -> int:
    return int(config["MAX_CHECKIN_BYTES"])


def _connect_limit(config) -> int:
    return int(config.get("MAX_COMMAND_RESPONSE_BYTES") or DEFAULT_MAX_COMMAND_RESPONSE_BYTES)


@bp.put("/mdm/checkin")
def checkin_endpoint():
    return _device_request("checkin", _checkin_limit(current_app.config), _checkin_read, _checkin_write)


@bp.put("/mdm/connect")
def connect_endpoint():
    return _device_request("connect", _connect_limit(current_app.config), _connect_read, _connect_write)


def _checkin_read(identity, message: dict) -> Reply | None:
    """The check-in's read paths; None: take the write path."""
    reply = _declarative_management_read(identity, message)
    if reply is None and _token_update_changes_nothing(identity, message):
        reply = Reply()
    return reply


def _checkin_write(identity, message: dict, body: bytes) -> Reply:
    return checkin.handle(identity, message)


def _token_update_changes_nothing(identity, message: dict) -> bool:
    """The read path of a TokenUpdate that repeats what is stored (``checkin.token_update_changes_nothing``).
    False: take the write path, which decides everything again."""
    if message.get("MessageType") != "TokenUpdate" or (udid := _udid_or_none(message)) is None:
        return False
    return bool(_as_bound_device(identity, udid, lambda device_id, connection:
                                 checkin.token_update_changes_nothing(device_id, udid, message, utcnow(), connection)))


def _declarative_management_read(identity, message: dict) -> Reply | None:
    """The read path of DeclarativeManagement ``tokens`` and ``declaration-items``: the answer from the
    stored set when giving it changes nothing (certificate bound to the device and not retired, last seen
    under a minute ago, stored set current and recorded as served: the room's registered read handler).
    None: take the write path (``checkin.handle``), which validates, decides and stores everything again."""
    serve_unchanged = checkin.read_handler(message.get("MessageType"), message.get("Endpoint"))
    if (serve_unchanged is None
            or any(key in message for key in ("Topic", "Data", "UserID", "EnrollmentUserID", "UserShortName"))):
        return None
    if (udid := _udid_or_none(message)) is None:
        return None
    answer = _as_bound_device(identity, udid, lambda device_id, connection:
                              serve_unchanged(device_id, udid, message["Endpoint"], utcnow(), connection))
    return None if answer is None else Reply(*answer)


def _connect_read(identity, message: dict) -> Reply | None:
    """An Idle's read path; None: take the write path (which validates the message)."""
    if message.get("Status") != "Idle" or (udid := _udid_or_none(message)) is None:
        return None
    return Reply() if _idle_changes_nothing(identity, udid, message) else None


def _connect_write(identity, message: dict, body: bytes) -> Reply:
    status = require(message, "Status")
    if status not in COMMAND_STATUSES:
        raise ProtocolError(f"unknown Status {status!r}")
    if status != "Idle":
        require(message, "CommandUUID")
    udid = checkin.message_udid(message)
    device = certauth.authorize(identity, udid, enrolling=False)
    if _is_user_channel(message):
        return Reply()   # per-user channel: we queue no user commands
    device.mark_seen()
    command = queue.exchange(device, message, body)
    if command is None:
        return Reply()
    return Reply(200, command.payload, "application/xml; charset=utf-8")


def _idle_changes_nothing(identity, udid: str, message: dict) -> bool:
    """The read path: true when this Idle would write nothing (certificate bound to the device and not
    retired, nothing offerable, last seen less than a minute ago, or a per-user channel). False means: take
    the write path, which decides everything again under the write transaction (and refuses, delivers or
    records)."""
    facts = _as_bound_device(identity, udid,
                             lambda device_id, connection: queue.idle_facts(device_id, udid, connection))
    if facts is None:
        return False
    if _is_user_channel(message):
        return True      # the write path answers it with nothing and writes nothing either
    return not facts.waiting and not Device.seen_is_due(facts.last_seen_at, utcnow())


def _as_bound_device(identity, udid: str, decide):
    """The read paths' common step: ``decide(device_id, connection)`` for the device with ``udid`` that this
    certificate is bound to (and not retired), in a read transaction of its own (no writer lock, nothing
    committed). None, without deciding, when the session is already in a transaction or the certificate
    does not (yet) speak for that device: the write path decides then."""
    if db.session().in_transaction():
        return None
    with _read_connection() as connection:
        device_id = certauth.authorized_device_id(identity, udid, connection)
        return None if device_id is None else decide(device_id, connection)


def _udid_or_none(message: dict) -> str | None:
    """The message's UDID when well formed; None lets the write path refuse it with the reason."""
    try:
        return checkin.message_udid(message)
    except PlistError:
        return None


@contextlib.contextmanager
def _read_connection():
    """A Core connection in a read transaction of its own (``extensions.read_only``: on SQLite a deferred
    BEGIN without the writer lock), rolled back and returned to the pool on exit. The read paths use it
    instead of the ORM session: the same statements without the session's bookkeeping (~50 µs a request)."""
    with read_only(), db.engine.connect() as connection:
        yield connection


def _is_user_channel(message: dict) -> bool:
    return any(key in message for key in ("UserID", "EnrollmentUserID"))


def _device_request(endpoint: str, limit: int, read, write) -> Response:
    """``read(identity, message)`` answers from a read path or returns None; then ``write(identity, message,
    body)`` decides everything again, writes and answers. Refusals are answered and audited here."""
    remote = request.remote_addr
    body = b""
    try:
        body = _read_body(limit)
        identity = certauth.identify(current_app.config, remote, request.headers, body, get_pki().ca_cert)
        message = loads_xml(body)
        reply = read(identity, message)
        if reply is None:
            reply = write(identity, message, body)
        if db.session().in_transaction():   # the read paths leave the session untouched: nothing to commit
            db.session.commit()
    except BodyTooLarge as exc:
        db.session.rollback()
        _audit_refusal("device.body_too_large", endpoint, remote, None, str(exc))
        return _refuse(endpoint, 413, str(exc))
    except certauth.AuthError as exc:
        db.session.rollback()
        _audit_refusal("device.auth_failed", endpoint, remote, exc.udid or _claimed_udid(body), str(exc))
        return _refuse(endpoint, 400, str(exc))
    except PlistError as exc:
        db.session.rollback()
        return _refuse(endpoint, 400, str(exc))
    except ProtocolError as exc:
        db.session.rollback()
        if exc.audit_action:
            _audit_refusal(exc.audit_action, endpoint, remote, exc.udid, str(exc))
        return _refuse(endpoint, exc.status, str(exc))
    except OperationalError:
        db.session.rollback()
        log.exception("%s: database unavailable", endpoint)
        return Response("busy, retry later", 503, {"Retry-After": "30"}, content_type="text/plain")
    except Exception:
        # Never a 500 to a device: it would retry the same message forever. The trace is in the log.
        db.session.rollback()
        log.exception("%s: unexpected error processing a device message", endpoint)
        return _refuse(endpoint, 400, "could not process the message")
    return Response(reply.body, reply.status, content_type=reply.content_type)


def answer_from_read_path(app, read, limit_of, environ: dict) -> tuple[int, list, bytes] | None:
    """The production server's event-loop step for one device route (module docstring): the read path's
    (status, headers, body), the same the Flask view sends for that answer, or None when the request needs
    Flask and a worker thread: the write path, or anything unusual (too large, refused, unreadable, an
    error), which that run then refuses, audits and logs as it must. Nothing here writes or waits for the
    writer lock."""
    with app.app_context():
        try:
            limit = limit_of(app.config)
            body = environ["wsgi.input"].read(limit + 1)
            if len(body) > limit:
                return None
            with read_only():
                identity = certauth.identify(app.config, environ.get("REMOTE_ADDR"), EnvironHeaders(environ),
                                             body, get_pki().ca_cert)
                reply = read(identity, loads_xml(body))
        except Exception:
            return None
    if reply is None:
        return None
    # What Flask sends for Response(reply.body, reply.status, content_type=...): flask-login looks at the
    # session on every response, so the session interface adds "Vary: Cookie" (compared in
    # tests/protocol/test_event_loop_reads.py).
    return reply.status, [("Content-Type", reply.content_type), ("Content-Length", str(len(reply.body))),
                          ("Vary", "Cookie")], reply.body


def _audit_refusal(action: str, endpoint: str, remote: str | None, udid: str | None, reason: str) -> None:
    audit(action, actor="device", source=remote, object_type="device" if udid else None, object_id=udid,
          detail=f"{endpoint}: {reason}" + (f" (claimed UDID {udid})" if udid else ""))
    db.session.commit()


def _claimed_udid(body: bytes | None) -> str | None:
    """The UDID an unauthenticated message claims, for the audit record only (never trusted)."""
    if not body:
        return None
    try:
        udid = loads_xml(body).get("UDID")
        return checkin.message_udid({"UDID": udid}) if isinstance(udid, str) else None
    except Exception:   # unreadable: the refusal is audited without a UDID
        return None


def _read_body(limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"body of {request.content_length} bytes exceeds the limit of {limit}")
    try:
        body = request.stream.read(limit + 1)
    except RequestEntityTooLarge:
        raise BodyTooLarge(f"body exceeds the limit of {limit} bytes") from None
    if len(body) > limit:
        raise BodyTooLarge(f"body exceeds the limit of {limit} bytes")
    return body


def _refuse(endpoint: str, status: int, reason: str) -> Response:
    log.warning("%s refused %s from %s: %s", endpoint, status, request.remote_addr, reason)
    return Response(reason + "\n", status, content_type="text/plain; charset=utf-8")
