"""DeclarativeManagement: tell the device to sync declarations. Schema: mdm/commands/declarativemanagement.yaml.

``Data`` is the JSON SynchronizationTokens document {"SyncTokens": {...}}; the plist carries it as data
(base64 on the wire). Without Data the device fetches the tokens endpoint itself.
"""
from __future__ import annotations

import json

from .base import CommandError

REQUEST_TYPE = "DeclarativeManagement"


def build(sync_tokens: dict | None = None, data: bytes | None = None) -> dict:
    """``sync_tokens``: {"DeclarationsToken": ..., "Timestamp": ...}; or ``data``: the JSON bytes as is."""
    if sync_tokens is not None and data is not None:
        raise CommandError("give sync_tokens or data, not both")
    command = {"RequestType": REQUEST_TYPE}
    if sync_tokens is not None:
        if not isinstance(sync_tokens, dict) or not isinstance(sync_tokens.get("DeclarationsToken"), str):
            raise CommandError("sync_tokens must be a dictionary with a DeclarationsToken string")
        data = json.dumps({"SyncTokens": sync_tokens}, sort_keys=True).encode()
    if data is not None:
        if not isinstance(data, (bytes, bytearray)):
            raise CommandError("data must be bytes")
        try:
            document = json.loads(data)
        except ValueError:
            raise CommandError("data must be JSON") from None
        if not isinstance(document, dict) or not isinstance(document.get("SyncTokens"), dict):
            raise CommandError('data must be a JSON object {"SyncTokens": {...}}')
        command["Data"] = bytes(data)
    return command


def handle_response(device, response: dict) -> None:
    """Nothing to absorb: the device reports declaration status through the DDM status endpoint."""
