"""RestartDevice. Schema: mdm/commands/device.restart.yaml (iOS: supervised only; the other keys are macOS only)."""
from __future__ import annotations

from .base import CommandError, flag

REQUEST_TYPE = "RestartDevice"


def build(notify_user: bool | None = None) -> dict:
    command = {"RequestType": REQUEST_TYPE}
    if notify_user is not None:
        command["NotifyUser"] = flag("notify_user", notify_user)
    return command


def check_device(device, command: dict) -> None:
    if device.platform != "macOS" and "NotifyUser" in command:
        raise CommandError("NotifyUser is macOS only (device.restart.yaml)")
    if device.runs_ios and device.is_supervised is False:
        raise CommandError("RestartDevice needs a supervised iOS device (device.restart.yaml)")


def handle_response(device, response: dict) -> None:
    """Nothing to absorb."""
