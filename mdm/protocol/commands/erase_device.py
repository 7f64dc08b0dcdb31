"""EraseDevice. Schema: mdm/commands/device.erase.yaml: PreserveDataPlan and DisallowProximitySetup are
iOS only, PIN is macOS only."""
from __future__ import annotations

import re

from .base import CommandError, flag

REQUEST_TYPE = "EraseDevice"


def build(preserve_data_plan: bool | None = None, disallow_proximity_setup: bool | None = None,
          pin: str | None = None) -> dict:
    command = {"RequestType": REQUEST_TYPE}
    if preserve_data_plan is not None:
        command["PreserveDataPlan"] = flag("preserve_data_plan", preserve_data_plan)
    if disallow_proximity_setup is not None:
        command["DisallowProximitySetup"] = flag("disallow_proximity_setup", disallow_proximity_setup)
    if pin is not None:
        if not isinstance(pin, str) or not re.fullmatch(r"\d{6}", pin):
            raise CommandError("pin must be six digits")
        command["PIN"] = pin
    return command


def check_device(device, command: dict) -> None:
    if "PIN" in command and device.platform != "macOS":
        raise CommandError("PIN is only allowed for macOS devices (device.erase.yaml)")
    ios_only = {"PreserveDataPlan", "DisallowProximitySetup"} & set(command)
    if ios_only and not device.runs_ios:
        raise CommandError(f"{', '.join(sorted(ios_only))} only apply to iOS devices (device.erase.yaml)")


def handle_response(device, response: dict) -> None:
    """Nothing to absorb."""
