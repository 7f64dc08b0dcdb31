"""InstallProfile: install a configuration profile (signed or not). Schema: mdm/commands/profile.install.yaml."""
from __future__ import annotations

from ...plistio import dumps
from .base import CommandError

REQUEST_TYPE = "InstallProfile"


def build(payload: bytes | None = None, profile: dict | None = None) -> dict:
    """``payload``: the profile file as bytes (e.g. a signed .mobileconfig); or ``profile``: a profile dict."""
    if (payload is None) == (profile is None):
        raise CommandError("InstallProfile needs exactly one of payload (bytes) or profile (dict)")
    if profile is not None:
        if not isinstance(profile, dict) or "PayloadIdentifier" not in profile:
            raise CommandError("profile must be a dictionary with a PayloadIdentifier")
        payload = dumps(profile)
    if not isinstance(payload, (bytes, bytearray)) or not payload:
        raise CommandError("payload must be the non-empty bytes of a profile")
    return {"RequestType": REQUEST_TYPE, "Payload": bytes(payload)}


def handle_response(device, response: dict) -> None:
    """Nothing to absorb: the result is stored on the command; ProfileList reports what is installed."""
