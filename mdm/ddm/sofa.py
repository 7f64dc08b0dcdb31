"""The SOFA iOS feed (macadmins/sofa, ``v2/ios_data_feed.json``): which CVEs each release fixes and which
of them are actively exploited. Format: ``shared/feeds/sofa-ios-v2.schema.json`` (IOSReleaseV2:
``ProductVersion``, ``UniqueCVEsCount``, ``CVEs``, ``ActivelyExploitedCVEs``).

Read side: ``security_by_version`` gives ``targets.ReleaseSecurity`` per ``version_key`` for the release
index (the exploited-vulnerability grace of a policy, targets.plan_deadline) and the catalog view. It
never writes: without a stored feed it reads the packaged snapshot (``data/sofa-ios-v2.json``).

Write side: ``sync_sofa`` (the daily job ``refresh_job``, ``flask mdm catalog sofa-sync``) fetches the URL
(config ``SOFA_URL``, default ``DEFAULT_URL``) or reads a file, and stores the reduced feed in
``ddm_sofa_feed``. A failed fetch keeps what is stored and records the error.

SOFA is advice, never a gate: a missing, broken or stale feed leaves releases it does not describe with
the policy's normal grace period, and ``sofa_health`` reports the problem in one sentence for the banner
every admin page shows (beside the stale-catalog one). CVE facts do not go stale (a fix stays a fix), so
an old feed is still used for the releases it lists.

Real-feed quirks (feeds/SOURCES.md, item 7): a version may appear twice in SecurityReleases (17.0.2,
18.7.7): merged. ``UpdateSummary.Stats.Exploited`` is 0 even where ``ActivelyExploitedCVEs`` lists CVEs:
the list (and each CVE's ``ActivelyExploited`` flag) is what counts.
"""
from __future__ import annotations

import datetime as dt
import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from flask import current_app

from ..extensions import db
from ..models import audit, utcnow
from ..unit_of_work import finish
from .catalog import DATA_DIR, CatalogError, fetch_feed, load_feed_file
from .catalog import releases as catalog_releases
from .models import SofaFeed
from .targets import ReleaseSecurity, version_key

log = logging.getLogger(__name__)

DEFAULT_URL = "https://sofafeed.macadmins.io/v2/ios_data_feed.json"
SNAPSHOT_PATH = DATA_DIR / "sofa-ios-v2.json"
STALE_AFTER_DAYS = 7

ORIGIN_SNAPSHOT, ORIGIN_SYNC, ORIGIN_NONE = "snapshot", "sync", "none"


class SofaError(Exception):
    """The feed could not be fetched or is not a SOFA v2 iOS feed; what is stored is unchanged."""


@dataclass
class SofaSyncResult:
    source: str
    releases: int
    changed: bool

    def as_dict(self) -> dict:
        return {"source": self.source, "releases": self.releases, "changed": self.changed}


# ---- parsing ----------------------------------------------------------------------------------------

def _exploited(release: dict) -> set[str]:
    listed = {c for c in release.get("ActivelyExploitedCVEs") or [] if isinstance(c, str)}
    cves = release.get("CVEs") if isinstance(release.get("CVEs"), dict) else {}
    return listed | {c for c, d in cves.items() if isinstance(d, dict) and d.get("ActivelyExploited") is True}


def _cve_count(release: dict) -> int:
    count = release.get("UniqueCVEsCount")
    if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
        return count
    return len(release["CVEs"]) if isinstance(release.get("CVEs"), dict) else 0


def parse_feed(data) -> tuple[dict[str, dict], dt.datetime | None]:
    """({version: {"cves", "exploited", "released", "info"}}, SOFA's LastCheck as naive UTC). Raises
    SofaError for a document that is not a SOFA v2 iOS feed; skips malformed releases."""
    if not isinstance(data, dict) or not isinstance(data.get("OSVersions"), list):
        raise SofaError("not a SOFA v2 iOS feed (no OSVersions list)")
    merged: dict[str, dict] = {}
    for os_version in data["OSVersions"]:
        entries = os_version.get("SecurityReleases") if isinstance(os_version, dict) else None
        for release in entries if isinstance(entries, list) else []:
            version = release.get("ProductVersion") if isinstance(release, dict) else None
            if not isinstance(version, str) or not version_key(version):
                continue
            key = ".".join(str(p) for p in version_key(version))
            released = release.get("ReleaseDate") if isinstance(release.get("ReleaseDate"), str) else None
            info = release.get("SecurityInfo") if isinstance(release.get("SecurityInfo"), str) else None
            slot = merged.setdefault(key, {"version": version, "cves": 0, "exploited": [], "released": released,
                                           "info": info})
            slot["cves"] = max(slot["cves"], _cve_count(release))
            slot["exploited"] = sorted(set(slot["exploited"]) | _exploited(release))
            if released and (slot["released"] is None or released < slot["released"]):
                slot["released"] = released
    if not merged:
        raise SofaError("the SOFA feed lists no iOS releases")
    return merged, _timestamp(data.get("LastCheck"))


_STAMP = re.compile(r"^(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2})(?:\.\d+)?(Z|[+-]\d{2}:\d{2})?$")


def _timestamp(value) -> dt.datetime | None:
    """SOFA's "2026-08-22T18:45:03.083466422+00:00" (nanoseconds, which fromisoformat refuses) as naive
    UTC; None when unreadable. No offset means UTC."""
    match = _STAMP.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        return None
    offset = match.group(2) or "+00:00"
    try:
        moment = dt.datetime.fromisoformat(match.group(1) + ("+00:00" if offset == "Z" else offset))
    except ValueError:
        return None
    return moment.astimezone(dt.timezone.utc).replace(tzinfo=None)


def security_from(releases: dict[str, dict]) -> dict[tuple[int, ...], ReleaseSecurity]:
    return {version_key(v): ReleaseSecurity(int(r.get("cves") or 0), tuple(r.get("exploited") or ()))
            for v, r in releases.items()}


# ---- reading ----------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _snapshot(path: Path = SNAPSHOT_PATH) -> tuple[dict[str, dict], dt.datetime | None]:
    try:
        return parse_feed(load_feed_file(path))
    except (CatalogError, SofaError) as exc:
        log.error("packaged SOFA snapshot unusable: %s", exc)
        return {}, None


def _row() -> SofaFeed | None:
    return db.session.get(SofaFeed, 1)


def releases_in_use() -> tuple[dict[str, dict], str]:
    """(the reduced feed in use, ORIGIN_SYNC or ORIGIN_SNAPSHOT or ORIGIN_NONE)."""
    row = _row()
    if row is not None and row.releases:
        return row.releases, ORIGIN_SYNC
    releases, _checked = _snapshot()
    return releases, ORIGIN_SNAPSHOT if releases else ORIGIN_NONE


def security_by_version() -> dict[tuple[int, ...], ReleaseSecurity]:
    return security_from(releases_in_use()[0])


def generation() -> int:
    """Changes whenever the feed in use changes (cache key for the release index). Reads the one column,
    not the stored feed."""
    return db.session.query(SofaFeed.generation).filter(SofaFeed.id == 1).scalar() or 0


# ---- storing ----------------------------------------------------------------------------------------

def _state() -> SofaFeed:
    row = _row()
    if row is None:
        row = SofaFeed(id=1, generation=0)
        db.session.add(row)
    return row


def apply_feed(data, source: str, *, now: dt.datetime | None = None, actor: str = "system") -> SofaSyncResult:
    """Store the feed's releases (replacing the previous feed). Commits."""
    now = now or utcnow()
    releases, checked = parse_feed(data)
    row = _state()
    changed = row.releases != releases
    row.source, row.feed_checked_at = source, checked
    row.last_attempt_at, row.last_success_at, row.last_error = now, now, None
    if changed:
        row.releases = releases
        row.generation = (row.generation or 0) + 1
    result = SofaSyncResult(source, len(releases), changed)
    if changed:
        audit("sofa.sync", actor=actor, object_type="sofa_feed", object_id=source, after=result.as_dict())
    finish()
    log.info("SOFA sync from %s: %s", source, result.as_dict())
    return result


def _record_failure(source: str, message: str, now: dt.datetime) -> None:
    db.session.rollback()
    row = _state()
    row.last_attempt_at, row.last_error = now, message
    if row.source is None:
        row.source = source
    db.session.commit()     # the failure is recorded although the caller's unit of work fails


def sync_sofa(*, file: str | None = None, url: str | None = None, now: dt.datetime | None = None,
              actor: str = "system") -> SofaSyncResult:
    """Refresh from a file, or from ``url`` / config SOFA_URL. On failure what is stored stays, the error
    is recorded and SofaError raised. Plans follow at the next recomputation (hourly)."""
    now = now or utcnow()
    config = current_app.config
    source = str(file) if file else (url or config.get("SOFA_URL") or DEFAULT_URL)
    try:
        data = load_feed_file(file) if file else fetch_feed(source, ca_file=config.get("SOFA_CA_FILE"),
                                                            timeout=float(config.get("SOFA_TIMEOUT", 30)))
        return apply_feed(data, source, now=now, actor=actor)
    except (CatalogError, SofaError) as exc:
        log.warning("SOFA sync failed, keeping the feed in use: %s", exc)
        _record_failure(source, str(exc), now)
        raise SofaError(str(exc)) from None


def refresh_job() -> None:
    """The daily job: a failure is recorded (and shown by the banner), never raised."""
    try:
        sync_sofa()
    except SofaError:
        pass


# ---- health -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SofaHealth:
    origin: str                        # ORIGIN_SYNC, ORIGIN_SNAPSHOT or ORIGIN_NONE
    source: str | None
    loaded_at: dt.datetime | None      # the last successful sync (UTC)
    feed_checked_at: dt.datetime | None  # SOFA's own LastCheck of the data in use
    last_error: str | None             # the latest failed sync's message, when it failed after that
    releases: int
    problem: str | None                # the banner's sentence; None when the feed can be trusted

    @property
    def origin_text(self) -> str:
        checked = f"SOFA data of {self.feed_checked_at:%Y-%m-%d}" if self.feed_checked_at else "SOFA data"
        if self.origin == ORIGIN_SYNC:
            return f"{checked}, synced from {self.source} at {self.loaded_at:%Y-%m-%d %H:%M} UTC"
        if self.origin == ORIGIN_SNAPSHOT:
            return f"packaged snapshot ({checked}); no sync has succeeded"
        return "no SOFA data"


def sofa_health(now: dt.datetime | None = None) -> SofaHealth:
    """Where the vulnerability data comes from and whether it can be trusted. Read-only."""
    now = now or utcnow()
    row = _row()
    releases, origin = releases_in_use()
    loaded_at = row.last_success_at if row is not None and origin == ORIGIN_SYNC else None
    checked = row.feed_checked_at if origin == ORIGIN_SYNC else _snapshot()[1]
    failed_since = bool(row is not None and row.last_error and row.last_attempt_at
                        and (row.last_success_at is None or row.last_attempt_at >= row.last_success_at))
    facts = dict(origin=origin, source=row.source if row is not None else None, loaded_at=loaded_at,
                 feed_checked_at=checked, last_error=row.last_error if failed_since else None,
                 releases=len(releases))
    return SofaHealth(problem=_problem(now, **facts), **facts)


def _problem(now, *, origin, source, loaded_at, feed_checked_at, last_error, releases) -> str | None:
    error = f" Last sync error: {last_error}." if last_error else ""
    fallback = "releases it does not describe get the policy's normal grace period (enforcement is not held back)"
    if origin == ORIGIN_NONE:
        return f"No SOFA vulnerability data is available: every release gets the normal grace period.{error}"
    data_date = f"{feed_checked_at:%Y-%m-%d}" if feed_checked_at else "an unknown date"
    if last_error:
        return (f"The SOFA vulnerability feed is unreachable: data of {data_date} is in use and {fallback}."
                f"{error}")
    age_days = (now - loaded_at).days if loaded_at else None
    if age_days is not None and age_days > STALE_AFTER_DAYS:
        return (f"The SOFA vulnerability feed has not been refreshed for {age_days} days (since "
                f"{loaded_at:%Y-%m-%d}): {fallback}.")
    if origin == ORIGIN_SYNC and feed_checked_at and (now - feed_checked_at).days > STALE_AFTER_DAYS:
        return (f"The SOFA feed itself was last updated on {data_date}: {fallback}.")
    return None


def sofa_status(now: dt.datetime | None = None) -> dict:
    """For Settings, the CLI and the API: the health facts as plain values."""
    health = sofa_health(now)
    return {"origin": health.origin, "origin_text": health.origin_text, "source": health.source,
            "loaded_at": health.loaded_at.isoformat() if health.loaded_at else None,
            "feed_checked_at": health.feed_checked_at.isoformat() if health.feed_checked_at else None,
            "last_error": health.last_error, "releases": health.releases, "problem": health.problem,
            "url": current_app.config.get("SOFA_URL") or DEFAULT_URL}


# ---- the catalog view -------------------------------------------------------------------------------

def releases_with_security(*, include_security_responses: bool = False, model: str | None = None) -> list[dict]:
    """Catalog rows, newest first, each with SOFA's CVE count and actively exploited CVEs (None when SOFA
    does not describe the version). For the catalog page and ``flask mdm catalog list``."""
    security = security_by_version()
    today = utcnow().date()
    rows = []
    for r in catalog_releases(include_security_responses=include_security_responses):
        if model and model not in (r.supported_devices or ()):
            continue
        facts = security.get(version_key(r.product_version)) if r.kind == "os" else None
        rows.append({"version": r.product_version, "build": r.build, "kind": r.kind,
                     "extra": r.product_version_extra, "first_posting_date": r.first_posting_date.isoformat(),
                     "posting_date": r.posting_date.isoformat(),
                     "expiration_date": r.expiration_date.isoformat() if r.expiration_date else None,
                     "expired": r.expiration_date is not None and today >= r.expiration_date,
                     "sections": r.sections, "devices": len(r.supported_devices or ()),
                     "cves": facts.cve_count if facts else None,
                     "exploited_cves": list(facts.exploited_cves) if facts else None})
    return rows
