"""The patch policy form: HTML form fields <-> the DDM room's ``validate_settings`` input.

Field names are the ``PolicySettings`` attribute names, so the errors the DDM service returns (which
carry those attribute names) land next to the right input; the messages themselves are already in the
form's words (the DDM room's ``FIELD_LABELS``). Validation itself is the DDM service's, the same for the
form, the API and the CLI.

Beta programs are rows of two inputs, ``beta_description`` and ``beta_token`` (repeated, in order); a
row with both blank is ignored, a half-filled row is passed on for the service to refuse by number.
"""
from __future__ import annotations

from ..ddm.policies import ACTION_LABELS, ANCHOR_LABELS, BETA_LABELS, CADENCE_LABELS
from ..ddm.policies import FIELD_LABELS, MACOS_ONLY_SETTINGS  # noqa: F401  (re-exported for the form's views)

# The dependent fields: only submitted (and shown) while enforcement is on; when it is off they keep
# their stored values so switching enforcement back on restores them.
ENFORCEMENT_FIELDS = ("grace_days", "local_time", "details_url", "exploited_grace_days")
CHECKBOXES = ("enforce", "rsr_offer", "rsr_rollback")
RADIOS = ("notifications_all", "stay_on_major", "deadline_anchor")
PLAIN = ("name", "deferral_days", "cadence", "auto_download", "auto_install_os", "auto_install_security",
         "beta_enrollment") + ENFORCEMENT_FIELDS

ACTION_CHOICES = tuple(ACTION_LABELS.items())
BETA_CHOICES = tuple(BETA_LABELS.items())
CADENCE_CHOICES = tuple(CADENCE_LABELS.items())
ANCHOR_CHOICES = tuple(ANCHOR_LABELS.items())
# The platform a policy is for, as the UI names it: iPadOS is iOS to Apple's declarations.
PLATFORM_LABELS = {"iOS": "iOS & iPadOS"}


def platform_label(platform: str | None) -> str:
    return PLATFORM_LABELS.get(platform or "", platform or "")


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
    if "beta_description" in form or "beta_token" in form or "beta_rows" in form:
        data["beta_programs"] = programs_from_rows(form.getlist("beta_description"), form.getlist("beta_token"))
    return data


def programs_from_rows(descriptions: list[str], tokens: list[str]) -> list[list[str]]:
    """[[description, token], ...] from the Description + Token rows; fully blank rows are dropped."""
    rows = []
    for i in range(max(len(descriptions), len(tokens))):
        description = (descriptions[i] if i < len(descriptions) else "").strip()
        token = (tokens[i] if i < len(tokens) else "").strip()
        if description or token:
            rows.append([description, token])
    return rows


def errors_by_field(errors) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for err in errors:
        grouped.setdefault(err.field, []).append(err.message)
    return grouped
