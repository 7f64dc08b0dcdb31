"""Bulk destructive commands need the admin to type what will happen; the server enforces it.

A destructive command (EraseDevice, DeviceLock, RestartDevice: ``rooms.DESTRUCTIVE_COMMANDS``) sent to
more than one device at once is refused unless the request carries ``confirm`` equal to the action
and the device count, e.g. "erase 12 devices" (compared case-insensitively, spaces collapsed). The
count is the number of distinct devices that would receive it, so a confirmation typed for another
selection does not fit. Bulk EraseDevice also needs the Administrator role. One device (as from the
device page) and the harmless commands need neither. Pure rules: the views map a refusal to 403
(role) or 422 (confirmation missing or wrong, with the phrase to type).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..accounts import Role
from .rooms import DESTRUCTIVE_COMMANDS

CONFIRM_VERBS = {"EraseDevice": "erase", "DeviceLock": "lock", "RestartDevice": "restart"}
BULK_ERASE_ROLE = Role.Administrator


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
