"""Target release and enforcement deadline for one device: pure functions over catalog rows.

Candidates support the device's model, are not expired and are newer than what it runs. A candidate
becomes visible once the deferral has elapsed since Apple first posted it. The target is the newest
visible candidate (within the device's current major when the policy says so). A release is expired
on its ExpirationDate itself: Apple only enforces what gdmf still lists.

Deadlines (``plan_deadline``): the grace period counts from the later of the end of the deferral and the
moment the policy was applied, and the deadline falls at the policy's device-local time. Which release's
deferral end starts the clock is the policy's ``deadline_anchor``:
  first_missed  the oldest visible candidate the device has not installed (the first release it missed),
                so a stream of new releases cannot postpone the deadline forever; the target is still
                the newest visible release;
  newest        the target itself: the clock restarts with each release (the behaviour before anchoring).
With ``exploited_grace_days`` set, a device whose missed releases (up to the target, whose install brings
their fixes) fix an actively exploited CVE (SOFA, ``ReleaseSecurity``) gets that shorter grace period,
counted by the same anchor rule among the releases that fix one. Releases SOFA does not describe get the
normal grace: missing security data never blocks nor delays enforcement.

Time zones: ``TargetLocalDateTime`` is wall time in the device's own zone (Apple's
declarative/declarations/configurations/softwareupdate.enforcement.specific.yaml), so the deadline
string is the same whatever the zone. The instant it falls on (``deadline_instant_utc``) needs the
IANA zone the device reported (DeviceInformation ``TimeZone``, iOS 14+); without a valid one there
is no instant, only "passed in every time zone" (``deadline_passed_everywhere``).
"""
from __future__ import annotations

import datetime as dt
import functools
import re
import zoneinfo
from dataclasses import dataclass
from typing import Iterable

REASON_COMPLIANT = "compliant"
REASON_MODEL_UNKNOWN = "model unknown"
REASON_OS_UNKNOWN = "OS version unknown"
REASON_NO_CANDIDATE = "no candidate release"
REASON_CATALOG_EXPIRED = "no candidate release: every release for this model has expired (catalog stale)"
REASON_ENFORCEMENT_OFF = "enforcement off"
ZONE_UNKNOWN = "device time zone unknown"

# The westernmost civil zone is UTC-12 (Etc/GMT+12): a wall time there is the latest instant it reaches.
LATEST_ZONE_OFFSET = dt.timedelta(hours=12)
LOCAL_FORMAT = "%Y-%m-%dT%H:%M:%S"


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
        # Expired ON its ExpirationDate (not the day after): Apple only enforces what gdmf still lists.
        return self.expires is not None and now.date() >= self.expires


@dataclass(frozen=True)
class ReleaseSecurity:
    """What SOFA says one OS version fixes: its CVE count and the actively exploited CVEs among them."""
    cve_count: int
    exploited_cves: tuple[str, ...] = ()

    @property
    def exploited(self) -> bool:
        return bool(self.exploited_cves)


class ReleaseIndex:
    """Per-model release lists, built once per recomputation from the catalog rows, plus the SOFA facts
    per version (``security``, keyed by ``version_key``; empty when SOFA is missing)."""

    def __init__(self, by_model: dict[str, list[ModelRelease]], total_rows: int,
                 security: dict[tuple[int, ...], ReleaseSecurity] | None = None):
        self.by_model = by_model
        self.total_rows = total_rows
        self.security = security or {}

    def security_of(self, release: ModelRelease | None) -> ReleaseSecurity | None:
        return self.security.get(release.key) if release is not None else None

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


def build_release_index(rows: Iterable, security: dict | None = None) -> ReleaseIndex:
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
    return ReleaseIndex(by_model, total, security)


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
    The device applies the string in its own time zone: the datetime is that naive wall time, not an
    instant (``deadline_instant_utc`` turns it into one for a known zone).
    """
    start = max(release.visible_at(deferral_days), applied_at)
    earliest = start + dt.timedelta(days=grace_days)
    hours, minutes = (int(p) for p in local_time.split(":"))
    deadline = dt.datetime.combine(earliest.date(), dt.time(hours, minutes))
    if deadline < earliest:
        deadline += dt.timedelta(days=1)
    return deadline.strftime(LOCAL_FORMAT), deadline


ANCHOR_FIRST_MISSED = "first_missed"
ANCHOR_NEWEST = "newest"
DEADLINE_ANCHORS = (ANCHOR_FIRST_MISSED, ANCHOR_NEWEST)


@dataclass(frozen=True)
class Deadline:
    """An enforcement deadline and why it falls where it does."""
    local: str                          # TargetLocalDateTime, "yyyy-mm-ddThh:mm:ss" device wall time
    wall: dt.datetime                   # the same wall time as a naive datetime
    anchor: ModelRelease                # the release whose deferral end starts the grace period
    anchor_rule: str                    # ANCHOR_FIRST_MISSED or ANCHOR_NEWEST
    from_applied: bool                  # the policy reached the device later: the grace ran from then
    shortened_by: tuple[str, ...] = ()  # actively exploited CVEs that shortened it (empty: normal grace)
    urgent_from: ModelRelease | None = None   # when shortened: the release the shorter grace counts from
    urgent_grace_days: int | None = None

    @property
    def note(self) -> str:
        """"deadline counted from iOS 18.1 (first release this device missed)", plus why it is shorter."""
        if self.anchor_rule == ANCHOR_NEWEST:
            text = (f"deadline counted from iOS {self.anchor.version} (the newest release: the clock restarts "
                    f"with each release)")
        else:
            text = f"deadline counted from iOS {self.anchor.version} (first release this device missed)"
        if self.from_applied:
            text += "; the grace period runs from when the policy reached the device"
        if self.shortened_by:
            n = len(self.shortened_by)
            text += (f"; deadline shortened: fixes {n} actively exploited vulnerabilit{'y' if n == 1 else 'ies'} "
                     f"({self.urgent_grace_days}-day grace from iOS {self.urgent_from.version})")
        return text


def missed_releases(releases: list[ModelRelease], installed_version: str | None, target: ModelRelease, *,
                    deferral_days: int, stay_on_major: bool, now: dt.datetime) -> list[ModelRelease]:
    """The candidates the device has not installed, visible now, up to and including ``target``: oldest
    first (by first posting, then version). Same candidate rules as ``choose_target``."""
    installed = version_key(installed_version)
    missed = [r for r in releases
              if not r.expired(now) and installed < r.key <= target.key
              and (not stay_on_major or not installed or r.major == installed[0])
              and now >= r.visible_at(deferral_days)]
    if target not in missed:
        missed.append(target)
    return sorted(missed, key=lambda r: (r.first_posted, r.key))


def plan_deadline(releases: list[ModelRelease], installed_version: str | None, target: ModelRelease, *,
                  deferral_days: int, grace_days: int, local_time: str, applied_at: dt.datetime,
                  now: dt.datetime, anchor_rule: str = ANCHOR_FIRST_MISSED,
                  exploited_grace_days: int | None = None,
                  security: dict[tuple[int, ...], ReleaseSecurity] | None = None,
                  stay_on_major: bool = False) -> Deadline:
    """The deadline for ``target`` on a device running ``installed_version`` (module docstring: anchors
    and the exploited-vulnerability grace)."""
    missed = missed_releases(releases, installed_version, target, deferral_days=deferral_days,
                             stay_on_major=stay_on_major, now=now)
    anchor = target if anchor_rule == ANCHOR_NEWEST else missed[0]
    local, wall = enforcement_deadline(anchor, deferral_days=deferral_days, grace_days=grace_days,
                                       local_time=local_time, applied_at=applied_at)
    normal = Deadline(local, wall, anchor, anchor_rule, applied_at > anchor.visible_at(deferral_days))
    if exploited_grace_days is None or not security:
        return normal
    urgent = [r for r in missed if r.key in security and security[r.key].exploited]
    if not urgent:
        return normal
    cves = tuple(sorted({c for r in urgent for c in security[r.key].exploited_cves}))
    urgent_anchor = target if anchor_rule == ANCHOR_NEWEST else urgent[0]
    local, wall = enforcement_deadline(urgent_anchor, deferral_days=deferral_days, grace_days=exploited_grace_days,
                                       local_time=local_time, applied_at=applied_at)
    if wall >= normal.wall:
        return normal
    return Deadline(local, wall, anchor, anchor_rule, normal.from_applied, cves, urgent_anchor, exploited_grace_days)


# Files in a tz database directory that are not zone names a device would report.
_NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})


@functools.lru_cache(maxsize=1)
def _iana_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) - _NOT_ZONES


@functools.lru_cache(maxsize=512)
def zone_named(name) -> zoneinfo.ZoneInfo | None:
    """The zone for an IANA name as a device reports it ("America/New_York"); None for anything else
    (empty, "localtime", a path, a name this server's tz database does not know). Never raises."""
    if not isinstance(name, str) or not name or len(name) > 64 or name not in _iana_names():
        return None
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return None


def parse_local(deadline_local: str | None) -> dt.datetime | None:
    """"yyyy-mm-ddThh:mm:ss" -> naive wall time; None when absent or malformed."""
    try:
        return dt.datetime.strptime(deadline_local, LOCAL_FORMAT) if deadline_local else None
    except (TypeError, ValueError):
        return None


def deadline_instant_utc(deadline_local: str | None, time_zone: str | None) -> dt.datetime | None:
    """The UTC instant (naive, meaning UTC) at which the device's clock shows ``deadline_local``, or None
    when the zone is unknown or not an IANA name. A wall time that occurs twice (autumn fold) is the
    first; one that does not exist (spring gap) counts with the offset before the change."""
    zone, wall = zone_named(time_zone), parse_local(deadline_local)
    if zone is None or wall is None:
        return None
    return wall.replace(tzinfo=zone).astimezone(dt.timezone.utc).replace(tzinfo=None)


def deadline_passed_everywhere(deadline_local: str | None, now: dt.datetime) -> bool:
    """True once ``deadline_local`` has passed in every time zone on Earth (``now`` is naive UTC): what
    "overdue" can honestly mean for a device whose zone is unknown."""
    wall = parse_local(deadline_local)
    return wall is not None and now > wall + LATEST_ZONE_OFFSET
