"""The command queue: what each device is asked to do, and what it answered.

Delivery is at least once. A command is ``queued`` until the device takes it (``sent``) and stays
offerable until a final status (Acknowledged, Error, CommandFormatError) arrives:
- NotNow puts it back to ``queued`` (not_now_count + 1); it is offered again on the next Idle.
- A ``sent`` command the device never answered (lost connection, server restart) is offered again on
  the device's next Idle: a device says Idle only when it has no result to report, so an unanswered
  ``sent`` command never reached it, or its answer was lost.
Commands go out oldest first. All functions work in the caller's transaction; the caller commits.
``idle_facts`` only reads: an Idle that finds nothing waiting (and a last-seen time less than a minute
old) is answered without a write transaction (mdm/protocol/views.py).

A new enrollment (Authenticate) clears the queue, as NanoMDM does: every command still waiting becomes
``cancelled`` (kept for the history, never offered again, and a late report for it changes nothing).
"""
from __future__ import annotations

import inspect
import logging
import plistlib
import uuid

from sqlalchemy import bindparam, exists, literal, select

from . import commands
from .commands import CommandError
from .commands.base import json_safe
from ..extensions import db
from ..models import Command, Device, utcnow
from ..plistio import dumps
from ..push.apns import request_push

log = logging.getLogger(__name__)

OFFERABLE = ("queued", "sent")
CANCELLED = "cancelled"
RESULT_STATUSES = ("Acknowledged", "Error", "CommandFormatError", "NotNow")

__all__ = ["CommandError", "enqueue", "enqueue_bulk", "next_command", "record_result", "exchange", "history", "command_plist",
           "request_push_for", "cancel_pending"]


def enqueue(device: Device, request_type: str, *, queued_by: str = "system", push: bool = True,
            **params) -> Command:
    """Build ``request_type`` with ``params`` (see the module in mdm/protocol/commands/), store it for ``device``
    and, when ``push``, ask for an APNs push. Raises CommandError for a bad request type or parameters."""
    module = commands.get(request_type)
    try:
        inspect.signature(module.build).bind(**params)
    except TypeError as exc:
        raise CommandError(f"{request_type}: {exc}") from None
    body = module.build(**params)
    check = getattr(module, "check_device", None)
    if check is not None:
        check(device, body)
    command = Command(device_id=device.id, request_type=request_type, queued_by=queued_by)
    command.uuid = str(uuid.uuid4()).upper()   # known before the payload is written
    command.payload = dumps({"CommandUUID": command.uuid, "Command": body})
    db.session.add(command)
    db.session.flush()
    log.info("queued %s %s for %s by %s", request_type, command.uuid, device.udid, queued_by)
    if push:
        request_push_for(device)
    return command


def enqueue_bulk(devices, request_type: str, *, queued_by: str = "system", push: bool = True,
                 **params) -> list[Command]:
    """``enqueue`` for many devices, all or nothing: the commands are written inside one savepoint of the
    caller's transaction, so when one device refuses (CommandError from the module's ``check_device``, or
    any database error) none of them is stored and the error is raised. One push request covers all."""
    devices = list(devices)
    module = commands.get(request_type)
    try:
        inspect.signature(module.build).bind(**params)
    except TypeError as exc:
        raise CommandError(f"{request_type}: {exc}") from None
    check = getattr(module, "check_device", None)
    created: list[Command] = []
    with db.session.begin_nested():
        for device in devices:
            body = module.build(**params)
            if check is not None:
                try:
                    check(device, body)
                except CommandError as exc:
                    raise CommandError(f"{device.udid}: {exc}") from None
            command = Command(device_id=device.id, request_type=request_type, queued_by=queued_by)
            command.uuid = str(uuid.uuid4()).upper()
            command.payload = dumps({"CommandUUID": command.uuid, "Command": body})
            db.session.add(command)
            created.append(command)
        db.session.flush()
    log.info("queued %s for %d devices by %s", request_type, len(created), queued_by)
    if push and devices:
        _request_push_ids([device.id for device in devices])
    return created


def _request_push_ids(device_ids: list[int]) -> None:
    request_push(device_ids)


def request_push_for(device: Device) -> None:
    """Ask the push room to wake the device (recorded in this transaction, sent after commit)."""
    request_push([device.id])


def next_command(device: Device) -> Command | None:
    """The oldest command still waiting for a final answer (queued, or sent but never answered)."""
    return (Command.query.filter(Command.device_id == device.id, Command.status.in_(OFFERABLE))
            .order_by(Command.id).first())


_commands = Command.__table__
_devices = Device.__table__
# The read path of an Idle (mdm/protocol/views.py): the device's last-seen time and whether anything waits for
# it, in one round trip. Built once, so SQLAlchemy compiles it once.
_IDLE_FACTS = (select(_devices.c.last_seen_at,
                      exists().where(_commands.c.device_id == _devices.c.id,
                                     # one bound value per status, not an expanding list: a statement
                                     # with an expanding IN is re-processed on every execution
                                     _commands.c.status.in_([literal(s) for s in OFFERABLE])).label("waiting"))
               .where(_devices.c.id == bindparam("device_id"), _devices.c.udid == bindparam("udid")))


def idle_facts(device_id: int, udid: str, connection=None):
    """(last_seen_at, waiting) of the device: ``waiting`` is true when a command is offerable (queued, or
    sent and never answered). None when no device has this id and UDID (deleted). Reads only, through
    ``connection`` (a Core connection in a read transaction) when given, else the session."""
    return (connection or db.session).execute(_IDLE_FACTS, {"device_id": device_id, "udid": udid}).one_or_none()


def cancel_pending(device: Device) -> list[Command]:
    """Cancel every command still waiting for a final answer (queued or sent): a new enrollment starts
    with an empty queue. Returns the commands cancelled."""
    pending = (Command.query.filter(Command.device_id == device.id, Command.status.in_(OFFERABLE))
               .order_by(Command.id).all())
    now = utcnow()
    for command in pending:
        command.status = CANCELLED
        command.completed_at = now
    if pending:
        log.info("cancelled %d waiting commands of %s (new enrollment)", len(pending), device.udid)
    return pending


def mark_sent(command: Command) -> None:
    command.status = "sent"
    command.sent_at = utcnow()


def record_result(device: Device, response_plist: dict, raw: bytes | None = None) -> Command | None:
    """Store a device's answer to one of its commands. Returns the command, or None when the
    CommandUUID is not one of this device's commands (nothing changes then). A repeated report for a
    command that already has a final status changes nothing. ``raw`` is the body as received."""
    status = response_plist.get("Status")
    if status not in RESULT_STATUSES:
        raise ValueError(f"not a command result status: {status!r}")
    command_uuid = response_plist.get("CommandUUID")
    command = Command.query.filter_by(uuid=command_uuid, device_id=device.id).one_or_none() \
        if isinstance(command_uuid, str) else None
    if command is None:
        log.warning("%s reported %s for unknown command %r; ignored", device.udid, status, command_uuid)
        return None
    if command.status in Command.FINAL_STATUSES or command.status == CANCELLED:
        log.info("%s repeated its %s report for %s; ignored", device.udid, command.status, command.uuid)
        return command
    now = utcnow()
    if status == "NotNow":
        command.status = "queued"
        command.not_now_count += 1
        command.last_not_now_at = now
        return command
    command.status = status
    command.completed_at = now
    command.response = raw if raw is not None else dumps(response_plist)
    chain = response_plist.get("ErrorChain")
    command.error_chain = json_safe(chain) if chain is not None else None
    _absorb(device, command, response_plist)
    return command


def _absorb(device: Device, command: Command, response: dict) -> None:
    """Let the command's module update the device. A module that chokes on an odd answer must not lose
    the stored result, so it runs in a savepoint and its failure is only logged."""
    try:
        module = commands.get(command.request_type)
    except CommandError:
        return
    try:
        with db.session.begin_nested():
            module.handle_response(device, response)
    except Exception:
        log.exception("handling the %s response %s from %s failed; result stored anyway",
                      command.request_type, command.uuid, device.udid)


def exchange(device: Device, message: dict, raw: bytes) -> Command | None:
    """One PUT to the command endpoint: absorb the report, then pick what to send (None = nothing).

    Idle and results get the next command; NotNow ends the exchange (the device is busy: the command
    waits for its next Idle). Every command handed out is marked ``sent``.
    """
    status = message["Status"]
    if status == "NotNow":
        record_result(device, message, raw)
        return None
    if status != "Idle":
        record_result(device, message, raw)
    command = next_command(device)
    if command is not None:
        mark_sent(command)
    return command


def history(device: Device, limit: int | None = None) -> list[Command]:
    """Newest first."""
    query = Command.query.filter_by(device_id=device.id).order_by(Command.id.desc())
    if limit:
        query = query.limit(limit)
    return query.all()


def command_plist(command: Command) -> dict:
    return plistlib.loads(command.payload)
