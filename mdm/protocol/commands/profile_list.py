"""ProfileList: the configuration profiles installed. Schema: mdm/commands/profile.list.yaml."""
from __future__ import annotations

from .base import flag, is_acknowledged, update_device

REQUEST_TYPE = "ProfileList"


def build(managed_only: bool | None = None) -> dict:
    command = {"RequestType": REQUEST_TYPE}
    if managed_only is not None:
        command["ManagedOnly"] = flag("managed_only", managed_only)
    return command


def handle_response(device, response: dict) -> None:
    profiles = response.get("ProfileList")
    if not is_acknowledged(response) or not isinstance(profiles, list):
        return
    # Signer certificates are large and of no use to the inventory; keep who signed, not the DER.
    summary = []
    for profile in profiles:
        if not isinstance(profile, dict):
            continue
        item = {k: v for k, v in profile.items() if k != "SignerCertificates"}
        if isinstance(profile.get("SignerCertificates"), list):
            item["SignerCertificateCount"] = len(profile["SignerCertificates"])
        summary.append(item)
    update_device(device, inventory={REQUEST_TYPE: summary})
