"""ScheduleOSUpdate. Schema: mdm/commands/system.update.schedule.yaml (iOS: supervised only).

InstallAction values per OS (the schema's description): iOS/tvOS take Default, DownloadOnly, InstallASAP;
NotifyOnly, InstallLater and InstallForceRestart are macOS only, as are MaxUserDeferrals and Priority.
"""
from __future__ import annotations

from .base import CommandError, is_acknowledged, text, update_device

REQUEST_TYPE = "ScheduleOSUpdate"

INSTALL_ACTIONS = ("Default", "DownloadOnly", "InstallASAP", "NotifyOnly", "InstallLater", "InstallForceRestart")
MACOS_ONLY_ACTIONS = ("NotifyOnly", "InstallLater", "InstallForceRestart")
_ITEM_KEYS = {"ProductKey", "ProductVersion", "InstallAction", "MaxUserDeferrals", "Priority"}


def build(updates: list | None = None, product_version: str | None = None, product_key: str | None = None,
          install_action: str = "Default") -> dict:
    """Either ``updates`` (Apple's list of dicts) or one update by ``product_version``/``product_key``."""
    if updates is None:
        if product_version is None and product_key is None:
            raise CommandError("ScheduleOSUpdate needs updates, product_version or product_key")
        item = {"InstallAction": install_action}
        if product_version is not None:
            item["ProductVersion"] = text("product_version", product_version, max_length=32)
        if product_key is not None:
            item["ProductKey"] = text("product_key", product_key, max_length=255)
        updates = [item]
    if not isinstance(updates, list) or not updates:
        raise CommandError("updates must be a non-empty list")
    for i, item in enumerate(updates):
        if not isinstance(item, dict):
            raise CommandError(f"updates[{i}] must be a dictionary")
        extra = set(item) - _ITEM_KEYS
        if extra:
            raise CommandError(f"updates[{i}]: keys not in Apple's schema: {', '.join(sorted(extra))}")
        if item.get("InstallAction") not in INSTALL_ACTIONS:
            raise CommandError(f"updates[{i}].InstallAction must be one of {', '.join(INSTALL_ACTIONS)}")
        if "ProductKey" not in item and "ProductVersion" not in item:
            raise CommandError(f"updates[{i}] needs ProductKey or ProductVersion")
        if "Priority" in item and item["Priority"] not in ("Low", "High"):
            raise CommandError(f"updates[{i}].Priority must be Low or High")
        if "MaxUserDeferrals" in item and (not isinstance(item["MaxUserDeferrals"], int)
                                           or isinstance(item["MaxUserDeferrals"], bool)):
            raise CommandError(f"updates[{i}].MaxUserDeferrals must be an integer")
    return {"RequestType": REQUEST_TYPE, "Updates": [dict(item) for item in updates]}


def check_device(device, command: dict) -> None:
    if device.platform == "macOS":
        return
    for i, item in enumerate(command["Updates"]):
        if item["InstallAction"] in MACOS_ONLY_ACTIONS:
            raise CommandError(f"updates[{i}]: InstallAction {item['InstallAction']} is macOS only")
        if {"MaxUserDeferrals", "Priority"} & set(item):
            raise CommandError(f"updates[{i}]: MaxUserDeferrals and Priority are macOS only")
    if device.runs_ios and device.is_supervised is False:
        raise CommandError("ScheduleOSUpdate needs a supervised iOS device (system.update.schedule.yaml)")


def handle_response(device, response: dict) -> None:
    results = response.get("UpdateResults")
    if is_acknowledged(response) and isinstance(results, list):
        update_device(device, inventory={REQUEST_TYPE: results})
