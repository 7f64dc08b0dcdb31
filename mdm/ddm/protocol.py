"""The DeclarativeManagement check-in endpoints, called by the check-in handler with the decoded Data.

tokens -> TokensResponse; declaration-items -> DeclarationItemsResponse; declaration/<type>/<identifier>
-> the declaration (404 when it is not in this device's set); status -> status intake, 200 empty body
(400 when unreadable as a whole, 403 when it names another device's declarations; malformed items are
left out and the rest stored, mdm/ddm/status.py). Status refusals are audited (``ddm.status_refused``).
declaration-items also records the identifiers it served (``served_identifiers``): the set the device
holds, whose status it may still report after the set changes.
``serve_unchanged`` is the read path of tokens and declaration-items: when serving would store nothing
(the stored set equals the one computed now, notes included, and for declaration-items the served
identifiers are already recorded) it answers from the stored set inside the caller's read transaction;
otherwise it returns None and the caller takes the write path above, which decides again and stores.
Policy state never causes a 4xx/5xx here: the set is computed without what cannot be computed.
"""
from __future__ import annotations

import json
import logging

from ..extensions import db
from ..models import audit
from . import status as status_intake
from . import sync
from .state_models import DeclarationSet

log = logging.getLogger(__name__)

JSON = "application/json"


def _json(value: dict) -> tuple[int, bytes, str]:
    return 200, json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode(), JSON


def _refuse(code: int, device, endpoint: str, reason: str) -> tuple[int, bytes, str]:
    log.warning("DeclarativeManagement %s from device %s refused (%d): %s", endpoint[:80], device.id, code, reason)
    return code, reason.encode(), "text/plain; charset=utf-8"


def _audit_status_refusal(device, code: int, reason: str) -> None:
    audit("ddm.status_refused", actor="device", object_type="device", object_id=device.udid,
          detail=f"{code}: {reason[:500]}")
    db.session.commit()


READ_PATH_ENDPOINTS = ("tokens", "declaration-items")


def serve_unchanged(device, endpoint: str) -> tuple[int, bytes, str] | None:
    """The answer to ``tokens`` or ``declaration-items`` when giving it would change nothing stored; None
    when something would change (or for any other endpoint). Reads only: the caller runs it in a read
    transaction (``extensions.read_only``) and takes the write path on None."""
    if endpoint not in READ_PATH_ENDPOINTS:
        return None
    row = db.session.get(DeclarationSet, device.id)
    if row is None:
        return None
    computed = sync.compute_set(device)
    if computed.token != row.declarations_token or computed.notes != row.notes:
        return None
    if endpoint == "tokens":
        return _json({"SyncTokens": sync.sync_tokens(row)})
    if row.served_identifiers != sorted(d["Identifier"] for d in row.declarations):
        return None
    return _json(sync.manifest(row))


def handle_declarative_management(device, endpoint: str, data: bytes | None) -> tuple[int, bytes, str]:
    """(HTTP status, body, content type) for one DeclarativeManagement check-in. Commits what it stores."""
    endpoint = endpoint or ""
    if endpoint == "tokens":
        row = sync.current_set(device)
        db.session.commit()
        return _json({"SyncTokens": sync.sync_tokens(row)})
    if endpoint == "declaration-items":
        row = sync.current_set(device)
        identifiers = sorted(d["Identifier"] for d in row.declarations)
        if row.served_identifiers != identifiers:
            row.served_identifiers = identifiers
        db.session.commit()
        return _json(sync.manifest(row))
    if endpoint.startswith("declaration/"):
        parts = endpoint.split("/", 2)
        if len(parts) != 3 or not parts[1] or not parts[2]:
            return _refuse(400, device, endpoint, "declaration endpoint must be declaration/<type>/<identifier>")
        # Serve from the stored set: the one whose manifest the device just fetched.
        row = sync.stored_set(device)
        db.session.commit()
        item = sync.find_declaration(row, parts[1], parts[2])
        if item is None:
            return _refuse(404, device, endpoint, "declaration not in this device's set")
        return _json(item)
    if endpoint == "status":
        try:
            status_intake.ingest(device, data)
        except status_intake.ForeignDeclarationError as exc:
            db.session.rollback()
            _audit_status_refusal(device, 403, str(exc))
            return _refuse(403, device, endpoint, f"status report refused: {exc}")
        except status_intake.StatusReportError as exc:
            db.session.rollback()
            _audit_status_refusal(device, 400, str(exc))
            return _refuse(400, device, endpoint, f"status report refused: {exc}")
        return 200, b"", JSON
    return _refuse(400, device, endpoint, "unknown DeclarativeManagement endpoint")
