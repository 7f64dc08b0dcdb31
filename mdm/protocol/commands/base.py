"""What every command module shares: parameter checks, and turning responses into device facts.

A command module has ``REQUEST_TYPE``, ``build(**params) -> dict`` (the ``Command`` dictionary, with
``RequestType``), ``handle_response(device, response: dict) -> None`` and optionally
``check_device(device, command: dict) -> None`` for keys only some platforms accept.
"""
from __future__ import annotations

import base64
import datetime as dt

from ...models import Device
from ...signals import device_facts_changed


class CommandError(ValueError):
    """A command cannot be built as asked; the message says which parameter and why."""


def no_params(request_type: str, params: dict) -> None:
    if params:
        raise CommandError(f"{request_type} takes no parameters (got {', '.join(sorted(params))})")


def unknown_params(request_type: str, params: dict, known: set[str]) -> None:
    extra = set(params) - known
    if extra:
        raise CommandError(f"{request_type}: unknown parameters {', '.join(sorted(extra))}; "
                           f"accepted: {', '.join(sorted(known)) or 'none'}")


def text(name: str, value, *, max_length: int = 1024) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CommandError(f"{name} must be a non-empty string")
    if len(value) > max_length:
        raise CommandError(f"{name} is longer than {max_length} characters")
    return value


def flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise CommandError(f"{name} must be true or false")
    return value


def is_acknowledged(response: dict) -> bool:
    return response.get("Status") == "Acknowledged"


def json_safe(value):
    """Plist values as JSON (for Device.inventory): data as base64 text, dates as ISO 8601 UTC."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    return value


def _fit(column: str, value):
    """Cut strings to the column's length so PostgreSQL never refuses a long device name."""
    length = getattr(Device.__table__.c[column].type, "length", None)
    if isinstance(value, str) and length:
        return value[:length]
    return value


def update_device(device: Device, *, columns: dict | None = None, inventory: dict | None = None) -> set[str]:
    """Apply new facts; send ``device_facts_changed`` with the names that changed. Returns them.

    ``columns``: Device attribute -> new value (None values are ignored: a missing answer is not a change).
    ``inventory``: section name -> latest raw response, stored JSON-safe in ``device.inventory``; a
    changed section is reported as ``inventory.<section>``.
    """
    changed: set[str] = set()
    for name, value in (columns or {}).items():
        if value is None:
            continue
        value = _fit(name, value)
        if getattr(device, name) != value:
            setattr(device, name, value)
            changed.add(name)
    if inventory:
        current = dict(device.inventory or {})
        for section, value in inventory.items():
            value = json_safe(value)
            if current.get(section) != value:
                current[section] = value
                changed.add(f"inventory.{section}")
        device.inventory = current    # a new object, so SQLAlchemy sees the JSON change
    if changed:
        device_facts_changed.send(device, changed=changed)
    return changed
