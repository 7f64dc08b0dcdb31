"""DeviceLock. Schema: mdm/commands/device.lock.yaml: Message and PhoneNumber (iOS 7+, macOS),
PIN only on macOS (the six-digit Find My PIN)."""
from __future__ import annotations

import re

from .base import CommandError, text

REQUEST_TYPE = "DeviceLock"


def build(message: str | None = None, phone_number: str | None = None, pin: str | None = None) -> dict:
    command = {"RequestType": REQUEST_TYPE}
    if message is not None:
        command["Message"] = text("message", message, max_length=500)
    if phone_number is not None:
        command["PhoneNumber"] = text("phone_number", phone_number, max_length=64)
    if pin is not None:
        if not isinstance(pin, str) or not re.fullmatch(r"\d{6}", pin):
            raise CommandError("pin must be six digits")
        command["PIN"] = pin
    return command


def check_device(device, command: dict) -> None:
    if "PIN" in command and device.platform != "macOS":
        raise CommandError("PIN is only allowed for macOS devices (device.lock.yaml)")
    if device.platform == "visionOS" and ({"Message", "PhoneNumber"} & set(command)):
        raise CommandError("Message and PhoneNumber are not supported on visionOS (device.lock.yaml)")


def handle_response(device, response: dict) -> None:
    """Nothing to absorb: MessageResult stays on the stored response."""
