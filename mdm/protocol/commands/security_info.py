"""SecurityInfo: passcode, encryption and management state. Schema: mdm/commands/information.security.yaml."""
from __future__ import annotations

from .base import is_acknowledged, no_params, update_device

REQUEST_TYPE = "SecurityInfo"


def build(**params) -> dict:
    no_params(REQUEST_TYPE, params)
    return {"RequestType": REQUEST_TYPE}


def handle_response(device, response: dict) -> None:
    info = response.get("SecurityInfo")
    if is_acknowledged(response) and isinstance(info, dict):
        update_device(device, inventory={REQUEST_TYPE: info})
