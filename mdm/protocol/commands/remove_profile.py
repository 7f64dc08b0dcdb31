"""RemoveProfile: remove an installed profile by its PayloadIdentifier. Schema: mdm/commands/profile.remove.yaml."""
from __future__ import annotations

from .base import text

REQUEST_TYPE = "RemoveProfile"


def build(identifier: str | None = None) -> dict:
    return {"RequestType": REQUEST_TYPE, "Identifier": text("identifier", identifier, max_length=255)}


def handle_response(device, response: dict) -> None:
    """Nothing to absorb: the result is stored on the command."""
