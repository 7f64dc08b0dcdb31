"""OSUpdateStatus: progress of updates being downloaded or installed. Schema: mdm/commands/system.update.status.yaml."""
from __future__ import annotations

from .base import is_acknowledged, no_params, update_device

REQUEST_TYPE = "OSUpdateStatus"


def build(**params) -> dict:
    no_params(REQUEST_TYPE, params)
    return {"RequestType": REQUEST_TYPE}


def handle_response(device, response: dict) -> None:
    status = response.get("OSUpdateStatus")
    if is_acknowledged(response) and isinstance(status, list):
        update_device(device, inventory={REQUEST_TYPE: status})
