"""AvailableOSUpdates: updates the device can install. Schema: mdm/commands/system.update.available.yaml."""
from __future__ import annotations

from .base import is_acknowledged, no_params, update_device

REQUEST_TYPE = "AvailableOSUpdates"


def build(**params) -> dict:
    no_params(REQUEST_TYPE, params)
    return {"RequestType": REQUEST_TYPE}


def handle_response(device, response: dict) -> None:
    updates = response.get("AvailableOSUpdates")
    if is_acknowledged(response) and isinstance(updates, list):
        update_device(device, inventory={REQUEST_TYPE: updates})
