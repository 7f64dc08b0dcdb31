"""Admin device commands: which ones an administrator may queue, queuing them (one device or many,
all or nothing) with the audit event, and the bulk-confirmation rules. The UI's device pages and
the API's ``POST /api/v1/devices/<id>/commands`` call this one service.

Why here (the devices room) and not in mdm/protocol/queue.py: the MDM core's queue builds and stores any
command for the protocol; which commands a person may send, and what they must confirm, are
administration rules about devices, shared by the UI and the API. The service audits; the caller
(request) commits.

Bulk confirmation: a destructive command (``DESTRUCTIVE_COMMANDS``: EraseDevice, DeviceLock,
RestartDevice) sent to more than one device at once is refused unless the request carries
``confirm`` equal to the action and the device count, e.g. "erase 12 devices" (compared
case-insensitively, spaces collapsed). The count is the number of distinct devices that would
receive it, so a confirmation typed for another selection does not fit. Bulk EraseDevice also needs
the Administrator role. One device (as from the device page) and the harmless commands need neither.
``check_bulk_command`` is a pure rule: the views map a refusal to 403 (role) or 422 (confirmation
missing or wrong, with the phrase to type).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..accounts import Role
from ..models import audit
from ..protocol.queue import enqueue, enqueue_bulk

# Commands an admin may queue from the UI/API without parameters (the MDM core builds them: mdm/protocol/commands/).
ADMIN_COMMANDS = ("DeviceInformation", "SecurityInfo", "ProfileList", "InstalledApplicationList",
                  "AvailableOSUpdates", "OSUpdateStatus", "RestartDevice", "DeviceLock", "EraseDevice")
DESTRUCTIVE_COMMANDS = ("RestartDevice", "DeviceLock", "EraseDevice")

CONFIRM_VERBS = {"EraseDevice": "erase", "DeviceLock": "lock", "RestartDevice": "restart"}
BULK_ERASE_ROLE = Role.Administrator


def _check_admin_command(request_type: str) -> None:
    if request_type not in ADMIN_COMMANDS:
        raise ValueError(f"command: {request_type!r} is not one of {', '.join(ADMIN_COMMANDS)}")


def queue_device_command(device, request_type: str, *, actor: str, source: str | None):
    """Queue one command through the MDM core's queue (which wakes the device) and audit it; returns
    the Command row. Raises ValueError (the queue's CommandError is one) with the reason."""
    _check_admin_command(request_type)
    command = enqueue(device, request_type, queued_by=actor)
    audit("command.queue", actor=actor, source=source, object_type="device", object_id=device.id,
          after={"request_type": command.request_type, "command_uuid": command.uuid})
    return command


def queue_bulk_command(devices, request_type: str, *, actor: str, source: str | None):
    """Queue one command on each device, all or nothing (mdm.protocol.queue.enqueue_bulk), and audit it once;
    returns the Command rows. The caller checks ``check_bulk_command`` first."""
    _check_admin_command(request_type)
    commands = enqueue_bulk(devices, request_type, queued_by=actor)
    audit("command.bulk_queue", actor=actor, source=source, object_type="device",
          object_id=",".join(str(d.id) for d in devices)[:255], after=_bulk_facts(request_type, devices))
    return commands


def _bulk_facts(request_type: str, devices) -> dict:
    facts = {"request_type": request_type, "devices": len(devices)}
    phrase = confirmation_phrase(request_type, len(devices))
    return {**facts, "confirmed": phrase} if phrase else facts


@dataclass(frozen=True)
class BulkRefusal:
    message: str
    status: int                 # 403: the role may not; 422: type the phrase
    phrase: str | None = None   # what to type, when the confirmation is what is missing


def confirmation_phrase(request_type: str, device_count: int) -> str | None:
    """What the admin must type for this command to this many devices, or None when nothing is needed."""
    if request_type not in DESTRUCTIVE_COMMANDS or device_count <= 1:
        return None
    return f"{CONFIRM_VERBS.get(request_type, request_type.lower())} {device_count} devices"


def _normalised(text: str | None) -> str:
    return " ".join((text or "").split()).lower()


def check_bulk_command(request_type: str, device_count: int, role: Role, typed: str | None) -> BulkRefusal | None:
    """None when this bulk command may be queued, else why not."""
    phrase = confirmation_phrase(request_type, device_count)
    if phrase is None:
        return None
    if request_type == "EraseDevice" and role < BULK_ERASE_ROLE:
        return BulkRefusal(f"Erasing more than one device needs the {BULK_ERASE_ROLE.label} role. "
                           "Erase devices one at a time from their device pages, or ask an Administrator.", 403)
    if _normalised(typed) != phrase:
        told = f'To send {request_type} to {device_count} devices, type "{phrase}" to confirm.'
        if typed:
            told = f'The confirmation does not match: type "{phrase}" to send {request_type} to {device_count} devices.'
        return BulkRefusal(told, 422, phrase)
    return None
