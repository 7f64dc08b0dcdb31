"""The services of other rooms that the UI and the API call, resolved when those rooms exist.

The UI is built while the MDM core and DDM rooms are still landing: a service that is not there yet
shows as "not available yet" instead of breaking a page. Nothing here reaches into protocol internals.
"""
from __future__ import annotations

import importlib


def service(module: str, name: str):
    """The function ``module.name`` or None when that room (or that function) does not exist yet."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if module.startswith(exc.name or "\0"):
            return None
        raise
    return getattr(mod, name, None)


class NotAvailable(RuntimeError):
    """The room providing this feature has not landed yet."""


def require(module: str, name: str):
    func = service(module, name)
    if func is None:
        raise NotAvailable(f"{module}.{name} is not available in this build yet")
    return func


# Commands an admin may queue from the UI/API without parameters (the MDM core builds them: mdm/commands/).
ADMIN_COMMANDS = ("DeviceInformation", "SecurityInfo", "ProfileList", "InstalledApplicationList",
                  "AvailableOSUpdates", "OSUpdateStatus", "RestartDevice", "DeviceLock", "EraseDevice")
DESTRUCTIVE_COMMANDS = ("RestartDevice", "DeviceLock", "EraseDevice")


def queue_device_command(device, request_type: str, *, actor: str):
    """Queue one command through the MDM core's service and wake the device; returns the Command row."""
    if request_type not in ADMIN_COMMANDS:
        raise ValueError(f"command: {request_type!r} is not one of {', '.join(ADMIN_COMMANDS)}")
    enqueue = require("mdm.queue", "enqueue")   # raises CommandError (a ValueError) with the reason
    return enqueue(device, request_type, queued_by=actor)


def queue_bulk_command(devices, request_type: str, *, actor: str):
    """Queue one command on each device, all or nothing (mdm.queue.enqueue_bulk); returns the Command rows."""
    if request_type not in ADMIN_COMMANDS:
        raise ValueError(f"command: {request_type!r} is not one of {', '.join(ADMIN_COMMANDS)}")
    enqueue_bulk = require("mdm.queue", "enqueue_bulk")
    return enqueue_bulk(devices, request_type, queued_by=actor)
