"""One module per MDM command: each builds its ``Command`` dictionary and absorbs its response.

``get("DeviceInformation")`` returns the module; ``request_types()`` lists what we can send.
"""
from __future__ import annotations

from types import ModuleType

from . import (available_os_updates, declarative_management, device_information, device_lock, erase_device,
               install_profile, installed_application_list, os_update_status, profile_list, remove_profile,
               restart_device, schedule_os_update, security_info)
from .base import CommandError

REGISTRY: dict[str, ModuleType] = {module.REQUEST_TYPE: module for module in (
    device_information, security_info, profile_list, installed_application_list, install_profile,
    remove_profile, restart_device, device_lock, erase_device, declarative_management, schedule_os_update,
    available_os_updates, os_update_status,
)}

__all__ = ["REGISTRY", "CommandError", "get", "request_types"]


def get(request_type: str) -> ModuleType:
    try:
        return REGISTRY[request_type]
    except KeyError:
        raise CommandError(f"unknown command {request_type!r}; known: {', '.join(sorted(REGISTRY))}") from None


def request_types() -> list[str]:
    return sorted(REGISTRY)
