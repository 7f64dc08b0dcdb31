"""Target release and enforcement deadline for one device: pure functions over catalog rows.

Candidates support the device's model, are not expired and are newer than what it runs. A candidate
becomes visible once the deferral has elapsed since Apple first posted it. The target is the newest
visible candidate (within the device's current major when the policy says so). The grace period
counts from the later of the end of the deferral and the moment the policy was applied, and the
deadline falls at the policy's device-local time.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Iterable

REASON_COMPLIANT = "compliant"
REASON_MODEL_UNKNOWN = "model unknown"
REASON_OS_UNKNOWN = "OS version unknown"
REASON_NO_CANDIDATE = "no candidate release"
REASON_CATALOG_EXPIRED = "no candidate release: every release for this model has expired (catalog stale)"
REASON_ENFORCEMENT_OFF = "enforcement off"


def version_key(version: str | None) -> tuple[int, ...]:
    """'18.0' -> (18,), '17.7.1' -> (17, 7, 1); trailing zeros dropped so 18 == 18.0 == 18.0.0."""
    parts = []
    for piece in str(version or "").strip().split("."):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


@dataclass(frozen=True)
class ModelRelease:
    """One OS version as offered to one model: its builds, first posting and expiration for that model."""
    version: str
    key: tuple[int, ...]
    builds: tuple[str, ...]
    first_posted: dt.date
    expires: dt.date | None

    @property
    def major(self) -> int:
        return self.key[0] if self.key else 0

    def visible_at(self, deferral_days: int) -> dt.datetime:
        return dt.datetime.combine(self.first_posted, dt.time()) + dt.timedelta(days=deferral_days)

    def expired(self, now: dt.datetime) -> bool:
        # ExpirationDate is the last day Apple lists the release as signed.
        return self.expires is not None and now.date() > self.expires


class ReleaseIndex:
    """Per-model release lists, built once per recomputation from the catalog rows."""

    def __init__(self, by_model: dict[str, list[ModelRelease]], total_rows: int):
        self.by_model = by_model
        self.total_rows = total_rows

    def __contains__(self, model) -> bool:
        return model in self.by_model

    def releases_for(self, model: str) -> list[ModelRelease]:
        return self.by_model.get(model, [])

    def model_for(self, software_update_device_id: str | None, product_name: str | None) -> str | None:
        """SoftwareUpdateDeviceID when the catalog knows it, else the product name."""
        for candidate in (software_update_device_id, product_name):
            if candidate and candidate in self.by_model:
                return candidate
        return None


def build_release_index(rows: Iterable) -> ReleaseIndex:
    """``rows``: CatalogRelease-like objects. Security responses are never patch targets (they need a
    prerequisite build and are not OS versions a declaration can name), so only kind "os" counts.
    Build twins ("6xxx") and re-released builds of one version merge into one ModelRelease."""
    grouped: dict[tuple[str, str], dict] = {}
    total = 0
    for row in rows:
        if getattr(row, "kind", "os") != "os":
            continue
        total += 1
        overrides = row.expiration_by_device or {}
        for model in row.supported_devices or ():
            expires = overrides.get(model)
            expires = dt.date.fromisoformat(expires) if expires else row.expiration_date
            slot = grouped.setdefault((model, row.product_version),
                                      {"builds": set(), "posted": row.first_posting_date, "expires": expires})
            slot["builds"].add(row.build)
            slot["posted"] = min(slot["posted"], row.first_posting_date)
            if slot["expires"] is not None:
                slot["expires"] = None if expires is None else max(slot["expires"], expires)
    by_model: dict[str, list[ModelRelease]] = {}
    for (model, version), slot in grouped.items():
        by_model.setdefault(model, []).append(ModelRelease(version, version_key(version), tuple(sorted(slot["builds"])),
                                                           slot["posted"], slot["expires"]))
    for releases in by_model.values():
        releases.sort(key=lambda r: r.key, reverse=True)
    return ReleaseIndex(by_model, total)


@dataclass(frozen=True)
class TargetChoice:
    release: ModelRelease | None
    compliant: bool
    reason: str | None

    @property
    def target_version(self) -> str | None:
        return self.release.version if self.release else None

    @property
    def target_build(self) -> str | None:
        """Only when one build is unambiguous: with twins Apple picks the right one from the version
        (enforcement.specific.yaml: the target OS version takes precedence)."""
        return self.release.builds[0] if self.release and len(self.release.builds) == 1 else None


def choose_target(releases: list[ModelRelease], installed_version: str | None, *, deferral_days: int,
                  stay_on_major: bool, now: dt.datetime) -> TargetChoice:
    installed = version_key(installed_version)
    if not installed:
        return TargetChoice(None, False, REASON_OS_UNKNOWN)
    if not releases:
        return TargetChoice(None, False, REASON_NO_CANDIDATE)
    live = [r for r in releases if not r.expired(now)]
    if not live:
        return TargetChoice(None, False, REASON_CATALOG_EXPIRED)
    newer = [r for r in live if r.key > installed and (not stay_on_major or r.major == installed[0])]
    visible = [r for r in newer if now >= r.visible_at(deferral_days)]
    if visible:
        return TargetChoice(max(visible, key=lambda r: r.key), False, None)
    if newer:
        soonest = min(newer, key=lambda r: r.visible_at(deferral_days))
        return TargetChoice(None, True, f"{REASON_COMPLIANT}; {soonest.version} deferred until "
                                        f"{soonest.visible_at(deferral_days).date().isoformat()}")
    return TargetChoice(None, True, REASON_COMPLIANT)


def enforcement_deadline(release: ModelRelease, *, deferral_days: int, grace_days: int, local_time: str,
                         applied_at: dt.datetime) -> tuple[str, dt.datetime]:
    """(TargetLocalDateTime "yyyy-mm-ddThh:mm:ss", the same wall time as a naive datetime).

    The grace period starts at the later of the end of the deferral and ``applied_at`` (a release
    already available when the policy is applied gets the full grace period). The deadline is the
    first ``local_time`` at or after start + grace, so the device always gets at least the grace period.
    The device applies the string in its own time zone; the datetime equals it for a UTC device clock.
    """
    start = max(release.visible_at(deferral_days), applied_at)
    earliest = start + dt.timedelta(days=grace_days)
    hours, minutes = (int(p) for p in local_time.split(":"))
    deadline = dt.datetime.combine(earliest.date(), dt.time(hours, minutes))
    if deadline < earliest:
        deadline += dt.timedelta(days=1)
    return deadline.strftime("%Y-%m-%dT%H:%M:%S"), deadline
