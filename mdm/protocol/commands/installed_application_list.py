"""InstalledApplicationList. Schema: mdm/commands/application.installed.list.yaml."""
from __future__ import annotations

from .base import CommandError, flag, is_acknowledged, update_device

REQUEST_TYPE = "InstalledApplicationList"


def build(identifiers=None, managed_apps_only: bool | None = None) -> dict:
    command = {"RequestType": REQUEST_TYPE}
    if identifiers is not None:
        if (not isinstance(identifiers, (list, tuple)) or not identifiers
                or not all(isinstance(i, str) and i for i in identifiers)):
            raise CommandError("identifiers must be a non-empty list of bundle identifiers")
        command["Identifiers"] = list(identifiers)
    if managed_apps_only is not None:
        command["ManagedAppsOnly"] = flag("managed_apps_only", managed_apps_only)
    return command


def handle_response(device, response: dict) -> None:
    apps = response.get("InstalledApplicationList")
    if is_acknowledged(response) and isinstance(apps, list):
        update_device(device, inventory={REQUEST_TYPE: apps})
