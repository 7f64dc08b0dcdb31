"""The check-in protocol (PUT /mdm/checkin): one function per MessageType.

Schemas: apple-schema/mdm/checkin/*.yaml. Each handler validates the keys it uses (a bad message is a
``ProtocolError`` -> 400 and nothing is stored), changes the device in the caller's transaction, and
returns a ``Reply``. The HTTP layer (mdm/protocol/views.py) authenticates and commits.

Topic: Authenticate, TokenUpdate and CheckOut must carry ``Topic`` (their schemas require it); any other
message that carries one is checked too. A Topic that is not our push topic is refused (400, audited as
``device.topic_refused`` with the claimed UDID) before the certificate is looked at or anything changes.

Authenticate starts a new enrollment: the certificate is bound, the device's other certificates are
retired (mdm/protocol/certauth.py), its waiting commands are cancelled (mdm/protocol/queue.py), as NanoMDM does, and
``device_reenrolled`` is sent so rooms drop per-device state of the old enrollment (the DDM room forgets
the declaration set it served and serves a fresh one).

DeclarativeManagement is answered by the handler a room registers with ``register_handler`` (the DDM
room, from its ``init_app``): the core imports nothing from mdm.ddm. Without one the message is a 400.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import bindparam, select

from . import certauth, queue
from ..extensions import db
from ..models import Device, audit, utcnow
from ..plistio import PlistError, dumps, optional, require
from ..push.cert import current_topic
from ..signals import device_checked_out, device_enrolled, device_facts_changed, device_reenrolled

log = logging.getLogger(__name__)

# Apple UDIDs: 40 hex (older iOS), 8-16 hex with a dash (newer iOS), or a UUID (Macs).
_UDID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")

# What the first TokenUpdate of an enrollment asks for, so the inventory fills in straight away.
INITIAL_COMMANDS = ("DeviceInformation", "SecurityInfo", "ProfileList")


class ProtocolError(Exception):
    """A message we refuse. ``status`` is the HTTP answer (400 unless said otherwise). With ``audit_action``
    the HTTP layer also writes an audit event naming ``udid`` (the device the message claimed to be)."""

    def __init__(self, reason: str, status: int = 400, *, audit_action: str | None = None,
                 udid: str | None = None):
        super().__init__(reason)
        self.status = status
        self.audit_action = audit_action
        self.udid = udid


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"

    @classmethod
    def plist(cls, value: dict) -> "Reply":
        return cls(200, dumps(value), "application/xml; charset=utf-8")


def server_topic() -> str | None:
    """Our APNs topic (the push certificate's UID); None when none is configured."""
    try:
        return current_topic() or None
    except Exception:  # no push identity yet: refuse enrolment rather than fail the request
        log.exception("could not read the push topic")
        return None


def message_udid(message: dict) -> str:
    udid = require(message, "UDID")
    if not _UDID.fullmatch(udid):
        raise PlistError("UDID has an unexpected format")
    return udid


def handle(identity: certauth.Identity, message: dict) -> Reply:
    """Authorise the certificate for the message's UDID, then run the message's handler."""
    message_type = require(message, "MessageType")
    handler = HANDLERS.get(message_type)
    if handler is None:
        raise ProtocolError(f"unknown MessageType {message_type!r}")
    udid = message_udid(message)
    if message_type in TOPIC_REQUIRED or "Topic" in message:
        _check_topic(message, udid)
    device = certauth.authorize(identity, udid, enrolling=message_type == "Authenticate")
    if device is not None:
        device.mark_seen()
    return handler(identity, device, udid, message)


# The check-in messages whose schema requires Topic (apple-schema/mdm/checkin/*.yaml).
TOPIC_REQUIRED = frozenset({"Authenticate", "TokenUpdate", "CheckOut"})


def _check_topic(message: dict, udid: str) -> str:
    topic = require(message, "Topic")
    ours = server_topic()
    if ours is None:
        raise ProtocolError("this server has no push certificate (topic) configured")
    if topic != ours:
        raise ProtocolError(f"Topic {topic[:255]!r} is not this server's push topic",
                            audit_action="device.topic_refused", udid=udid)
    return topic


def _optional_text(message: dict, key: str) -> str | None:
    """Optional strings: absent or empty means unknown (the iOS Authenticate has no DeviceName)."""
    value = message.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise PlistError(f"key {key} must be str")
    return value


def _is_user_channel(message: dict) -> bool:
    # macOS per-user connections carry a user; we manage the device channel only.
    return any(key in message for key in ("UserID", "EnrollmentUserID", "UserShortName"))


# --- Authenticate ----------------------------------------------------------------------------------------

AUTHENTICATE_FACTS = {
    "SerialNumber": "serial_number", "ProductName": "product_name", "Model": "model", "ModelName": "model_name",
    "OSVersion": "os_version", "BuildVersion": "build_version", "DeviceName": "device_name",
}


def authenticate(identity, device: Device | None, udid: str, message: dict) -> Reply:
    topic = message["Topic"]     # checked by handle()
    facts = {column: _optional_text(message, key) for key, column in AUTHENTICATE_FACTS.items()}
    if device is None:
        device = Device(udid=udid, inventory={}, last_seen_at=utcnow())
        db.session.add(device)
    # A (re-)enrollment: no pushes until the TokenUpdate that follows brings a fresh token.
    device.enrollment_status = "authenticated"
    device.topic = topic
    device.push_token = None
    device.push_magic = None
    device.push_token_invalid = False
    changed = set()
    for column, value in facts.items():
        if value is not None and getattr(device, column) != value:
            setattr(device, column, value[:Device.__table__.c[column].type.length])
            changed.add(column)
    db.session.flush()
    retired = certauth.bind_new_enrollment(identity, device)
    cancelled = queue.cancel_pending(device)
    device_reenrolled.send(device)
    if retired or cancelled:
        audit("device.reenrolled", actor="device", object_type="device", object_id=udid,
              detail=f"new certificate {identity.sha256[:16]}; retired {len(retired)} certificate(s) "
                     f"{', '.join(r[:16] for r in retired)}; cancelled {len(cancelled)} waiting command(s)")
    log.info("Authenticate from %s (%s)", udid, device.product_name or "unknown model")
    if changed:
        device_facts_changed.send(device, changed=changed)
    return Reply()


# --- TokenUpdate -----------------------------------------------------------------------------------------

def token_update(identity, device: Device, udid: str, message: dict) -> Reply:
    if _is_user_channel(message):
        log.info("ignoring user-channel TokenUpdate from %s", udid)
        return Reply()
    topic = message["Topic"]     # checked by handle()
    token = require(message, "Token", bytes)
    if not token:
        raise PlistError("key Token must not be empty")
    push_magic = require(message, "PushMagic")
    unlock_token = optional(message, "UnlockToken", bytes)
    optional(message, "AwaitingConfiguration", bool)
    if token.hex() != device.push_token:
        device.push_token_invalid = False
    device.push_token = token.hex()
    device.push_magic = push_magic
    device.topic = topic
    if unlock_token:
        device.unlock_token = unlock_token
    first = device.enrollment_status != "enrolled"
    if first:
        device.enrollment_status = "enrolled"
        device.enrolled_at = utcnow()
        device.unenrolled_at = None
        for request_type in INITIAL_COMMANDS:
            queue.enqueue(device, request_type, queued_by="system:enrollment", push=False)
        queue.request_push_for(device)
        log.info("%s enrolled", udid)
        device_enrolled.send(device)
    return Reply()


_devices = Device.__table__
# The read path of a TokenUpdate (mdm/protocol/views.py): what ``token_update`` would compare, in one round trip.
_TOKEN_FACTS = (select(_devices.c.enrollment_status, _devices.c.push_token, _devices.c.push_magic, _devices.c.topic,
                       _devices.c.unlock_token, _devices.c.last_seen_at)
                .where(_devices.c.id == bindparam("device_id"), _devices.c.udid == bindparam("udid")))


def token_update_changes_nothing(device_id: int, udid: str, message: dict, now, connection) -> bool:
    """True when ``handle`` would answer this TokenUpdate 200 and store nothing: the device channel of an
    enrolled device repeating its stored Topic (still this server's), Token, PushMagic and UnlockToken (or
    none), keys of the right types, last seen under a minute ago. Reads only, through ``connection``.
    False means: take the write path, which validates, refuses or stores as always."""
    if _is_user_channel(message):
        return False
    try:
        topic = require(message, "Topic")
        token = require(message, "Token", bytes)
        push_magic = require(message, "PushMagic")
        unlock_token = optional(message, "UnlockToken", bytes)
        optional(message, "AwaitingConfiguration", bool)
    except PlistError:
        return False
    if not token or topic != server_topic():
        return False
    row = connection.execute(_TOKEN_FACTS, {"device_id": device_id, "udid": udid}).one_or_none()
    return (row is not None and row.enrollment_status == "enrolled" and row.push_token == token.hex()
            and row.push_magic == push_magic and row.topic == topic
            and (not unlock_token or row.unlock_token == unlock_token)
            and not Device.seen_is_due(row.last_seen_at, now))


# --- CheckOut --------------------------------------------------------------------------------------------

def check_out(identity, device: Device, udid: str, message: dict) -> Reply:
    if _is_user_channel(message):
        return Reply()
    # Unenrolled: the token goes so nothing pushes to it; the device row and command history stay.
    device.enrollment_status = "unenrolled"
    device.unenrolled_at = utcnow()
    device.push_token = None
    device.push_magic = None
    log.info("%s checked out", udid)
    device_checked_out.send(device)
    return Reply()


# --- DeclarativeManagement -------------------------------------------------------------------------------

# handler(device, endpoint, data) -> (HTTP status, body, content type), registered by a room's init_app.
RoomHandler = Callable[[Device, str, "bytes | None"], "tuple[int, bytes, str]"]
_ROOM_HANDLERS: dict[str, RoomHandler] = {}


def register_handler(message_type: str, handler: RoomHandler) -> None:
    """Called by a room's ``init_app``: ``register_handler("DeclarativeManagement", handler)``."""
    _ROOM_HANDLERS[message_type] = handler


# A room may also answer some endpoints of its message from a read transaction, before the write path:
# read_handler(device_id, udid, endpoint, now, connection) -> (status, body, content type), or None when
# answering would store something (the write path then decides). Registered with the endpoints it serves.
RoomReadHandler = Callable[..., "tuple[int, bytes, str] | None"]
_READ_HANDLERS: dict[str, tuple[RoomReadHandler, frozenset[str]]] = {}


def register_read_handler(message_type: str, handler: RoomReadHandler, endpoints) -> None:
    """Called by a room's ``init_app``: the read path for ``endpoints`` of ``message_type`` (mdm/protocol/views.py)."""
    _READ_HANDLERS[message_type] = (handler, frozenset(endpoints))


def read_handler(message_type: str, endpoint) -> RoomReadHandler | None:
    """The registered read path for this message type and endpoint, or None (also for values a hostile
    plist may carry instead of strings)."""
    if not isinstance(message_type, str):
        return None
    handler, endpoints = _READ_HANDLERS.get(message_type, (None, frozenset()))
    return handler if isinstance(endpoint, str) and endpoint in endpoints else None


def declarative_management(identity, device: Device, udid: str, message: dict) -> Reply:
    endpoint = require(message, "Endpoint")
    data = optional(message, "Data", bytes)
    handler = _ROOM_HANDLERS.get("DeclarativeManagement")
    if handler is None:
        raise ProtocolError("DeclarativeManagement is not available on this server")
    status, body, content_type = handler(device, endpoint, data)
    return Reply(status, body, content_type)


# --- Bootstrap token, and what we do not support ---------------------------------------------------------

def get_bootstrap_token(identity, device: Device, udid: str, message: dict) -> Reply:
    optional(message, "AwaitingConfiguration", bool)
    if device.bootstrap_token:
        return Reply.plist({"BootstrapToken": device.bootstrap_token})
    return Reply.plist({})


def set_bootstrap_token(identity, device: Device, udid: str, message: dict) -> Reply:
    token = optional(message, "BootstrapToken", bytes)
    optional(message, "AwaitingConfiguration", bool)
    # Missing or empty clears the stored token (setbootstraptoken.yaml).
    device.bootstrap_token = token or None
    log.info("%s %s its bootstrap token", udid, "set" if token else "cleared")
    return Reply()


def user_authenticate(identity, device: Device, udid: str, message: dict) -> Reply:
    # 410 tells the device this server does not do user authentication (userauthenticate.yaml).
    return Reply(410)


def get_token(identity, device: Device, udid: str, message: dict) -> Reply:
    raise ProtocolError("GetToken is not supported by this server")


HANDLERS = {
    "Authenticate": authenticate,
    "TokenUpdate": token_update,
    "CheckOut": check_out,
    "DeclarativeManagement": declarative_management,
    "GetBootstrapToken": get_bootstrap_token,
    "SetBootstrapToken": set_bootstrap_token,
    "UserAuthenticate": user_authenticate,
    "GetToken": get_token,
}
