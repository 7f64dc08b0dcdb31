"""The patch policy form: HTML form fields <-> the DDM room's ``validate_settings`` input.

Field names are the ``PolicySettings`` attribute names, so the errors the DDM service returns (which
name those attributes) land next to the right input. Validation itself is the DDM service's, the same
for the form, the API and the CLI.
"""
from __future__ import annotations

# The dependent fields: only submitted (and shown) while enforcement is on; when it is off they keep
# their stored values so switching enforcement back on restores them.
ENFORCEMENT_FIELDS = ("grace_days", "local_time", "details_url")
CHECKBOXES = ("enforce", "rsr_offer", "rsr_rollback")
RADIOS = ("notifications_all", "stay_on_major")
PLAIN = ("name", "deferral_days", "cadence", "auto_download", "auto_install_os", "auto_install_security",
         "beta_enrollment") + ENFORCEMENT_FIELDS

ACTION_CHOICES = (("Allowed", "User Controlled"), ("AlwaysOn", "Always On"), ("AlwaysOff", "Always Off"))
BETA_CHOICES = (("Allowed", "User Allowed"), ("AlwaysOn", "Always On"), ("AlwaysOff", "Always Off"))
CADENCE_CHOICES = (("All", "All versions"), ("Oldest", "Oldest only"), ("Newest", "Newest only"))

FIELD_LABELS = {
    "name": "Name", "deferral_days": "Defer OS updates (days)", "enforce": "Enforce automatic updates",
    "grace_days": "Grace period (days)", "local_time": "Local device time", "details_url": "Details URL",
    "notifications_all": "Notifications", "cadence": "Recommended cadence",
    "auto_download": "Download new updates when available", "auto_install_os": "Install OS updates",
    "auto_install_security": "Install security responses and system files",
    "rsr_offer": "Offer Rapid Security Responses", "rsr_rollback": "Allow rollback",
    "beta_enrollment": "Beta program enrollment", "beta_programs": "Offered beta programs",
    "stay_on_major": "Major upgrades",
}


def form_to_data(form) -> dict:
    """A dict for ``validate_settings`` from a submitted form (strings; the service parses them)."""
    data = {}
    enforce_values = form.getlist("enforce")
    enforce = bool(enforce_values) and enforce_values[-1] == "true"
    for name in PLAIN:
        if name in form and (enforce or name not in ENFORCEMENT_FIELDS):
            data[name] = form.get(name, "")
    for name in CHECKBOXES:
        values = form.getlist(name)  # a hidden "false" precedes each checkbox, so unchecked still says so
        if values:
            data[name] = values[-1]
    for name in RADIOS:
        if name in form:
            data[name] = form.get(name)
    if "beta_programs" in form:
        data["beta_programs"] = parse_programs(form.get("beta_programs", ""))
    return data


def parse_programs(text: str) -> list:
    """One program a line, "Description = token"; a line without "=" is passed on for the service to refuse."""
    programs = []
    for line in (text or "").splitlines():
        line = line.strip()
        if not line:
            continue
        if "=" in line:
            description, token = (part.strip() for part in line.split("=", 1))
            programs.append([description, token])
        else:
            programs.append(line)
    return programs


def programs_text(programs) -> str:
    return "\n".join(f"{d} = {t}" for d, t in (programs or ()))


def errors_by_field(errors) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for err in errors:
        grouped.setdefault(err.field, []).append(err.message)
    return grouped
