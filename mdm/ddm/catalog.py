"""Apple's release catalog, from the software lookup service (gdmf ``v2/pmv``).

One row per (ProductVersion, Build) for iPhone, iPad and iPod. The traps in the real feed
(``shared/feeds/SOURCES.md``) shape this module:
1. the ``iOS`` key also holds watchOS, tvOS, HomePod and visionOS entries: filter by SupportedDevices;
2. "6xxx" build twins: every build is kept, matching happens on ProductVersion (targets.py);
3. PostingDate is re-posted with newer dates: we keep the earliest date we ever saw;
4. the same build may be listed several times with different device subsets and expirations;
6. the security-response section was renamed (PublicRapidSecurityResponses ->
   PublicBackgroundSecurityImprovements);
9. gdmf.apple.com is served under Apple's own root CA, shipped here as data/apple-root-ca.pem.

A snapshot ships in ``data/gdmf-pmv.json`` so a fresh install works offline. A failed refresh keeps
the cache; rows Apple no longer lists are removed only after a successful refresh.

Read side: ``catalog_health`` says where the catalog came from ("packaged snapshot loaded" versus
"synced from Apple at ...") and, when the catalog cannot be trusted (empty, every release expired,
Apple unreachable, not refreshed for STALE_AFTER_DAYS), the problem in one sentence for the banner
every admin page shows. ``devices_without_target`` counts the plans left without a target by it.
"""
from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from flask import current_app

from ..extensions import db
from ..models import audit, utcnow
from ..unit_of_work import finish
from . import changes
from .models import CatalogRelease, CatalogState, DevicePatchTarget
from .targets import REASON_CATALOG_EXPIRED, REASON_MODEL_UNKNOWN, version_key

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"
SNAPSHOT_PATH = DATA_DIR / "gdmf-pmv.json"
APPLE_ROOT_CA = DATA_DIR / "apple-root-ca.pem"
DEFAULT_URL = "https://gdmf.apple.com/v2/pmv"
MAX_FEED_BYTES = 20 * 1024 * 1024
STALE_AFTER_DAYS = 7

OS_SECTIONS = ("PublicAssetSets", "AssetSets")
SECURITY_RESPONSE_SECTIONS = ("PublicRapidSecurityResponses", "PublicBackgroundSecurityImprovements")
IOS_DEVICE_PREFIXES = ("iphone", "ipad", "ipod")


class CatalogError(Exception):
    """A feed could not be fetched or parsed; the cached catalog is unchanged."""


@dataclass
class ParsedRelease:
    product_version: str
    build: str
    kind: str
    posting_date: dt.date
    expiration_by_device: dict[str, dt.date | None]
    sections: set[str] = field(default_factory=set)
    product_version_extra: str | None = None
    prerequisite_build: str | None = None

    @property
    def supported_devices(self) -> list[str]:
        return sorted(self.expiration_by_device)

    @property
    def expiration_date(self) -> dt.date | None:
        dates = [d for d in self.expiration_by_device.values() if d]
        return max(dates) if dates else None


@dataclass
class SyncResult:
    source: str
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped_entries: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)

    def as_dict(self) -> dict:
        return {"source": self.source, "added": self.added, "updated": self.updated, "removed": self.removed,
                "unchanged": self.unchanged, "skipped_entries": self.skipped_entries, "changed": self.changed}


def is_ios_device(identifier) -> bool:
    return isinstance(identifier, str) and identifier.lower().startswith(IOS_DEVICE_PREFIXES)


def _date(value, what: str) -> dt.date:
    if not isinstance(value, str):
        raise ValueError(f"{what} missing")
    return dt.date.fromisoformat(value[:10])


# ---- parsing ----------------------------------------------------------------------------------------

def parse_feed(data) -> tuple[list[ParsedRelease], int]:
    """The iPhone/iPad/iPod releases of a gdmf v2/pmv document, merged per (version, build).
    Returns (releases, number of malformed entries skipped). Raises CatalogError when the document
    is not a pmv response at all."""
    if not isinstance(data, dict) or not any(isinstance(data.get(s), dict) for s in OS_SECTIONS):
        raise CatalogError("not a gdmf v2/pmv document (no PublicAssetSets or AssetSets)")
    merged: dict[tuple[str, str], ParsedRelease] = {}
    skipped = 0
    for section, kind in [(s, "os") for s in OS_SECTIONS] + [(s, "security-response")
                                                              for s in SECURITY_RESPONSE_SECTIONS]:
        entries = (data.get(section) or {}).get("iOS") if isinstance(data.get(section), dict) else None
        if not isinstance(entries, list):
            continue
        for entry in entries:
            try:
                version, build = entry["ProductVersion"], entry["Build"]
                if not (isinstance(version, str) and isinstance(build, str) and version and build):
                    raise ValueError("ProductVersion/Build")
                devices = [d for d in entry.get("SupportedDevices") or [] if is_ios_device(d)]
                posted = _date(entry.get("PostingDate"), "PostingDate")
                expires = _date(entry["ExpirationDate"], "ExpirationDate") if entry.get("ExpirationDate") else None
            except (KeyError, TypeError, ValueError):
                skipped += 1
                continue
            if not devices:
                continue            # a watch, TV, HomePod or visionOS release under the iOS key
            release = merged.get((version, build))
            if release is None:
                release = merged[(version, build)] = ParsedRelease(
                    version, build, kind, posted, {}, product_version_extra=entry.get("ProductVersionExtra"),
                    prerequisite_build=entry.get("PrerequisiteBuild"))
            release.sections.add(section)
            release.posting_date = min(release.posting_date, posted)
            for device in devices:
                known = release.expiration_by_device.get(device, dt.date.min)
                release.expiration_by_device[device] = (None if expires is None or known is None
                                                        else max(known, expires))
    if skipped:
        log.warning("catalog feed: skipped %d malformed entries", skipped)
    return list(merged.values()), skipped


def shift_feed(data: dict, days: int) -> dict:
    """A copy of a feed with every PostingDate and ExpirationDate moved by ``days`` (feeds/README.md:
    how tests get "current" releases on any day). Releases, builds and devices stay as published."""
    shifted = copy.deepcopy(data)
    for section in shifted.values():
        if not isinstance(section, dict):
            continue
        for entries in section.values():
            for entry in entries if isinstance(entries, list) else []:
                for key in ("PostingDate", "ExpirationDate"):
                    if isinstance(entry.get(key), str):
                        entry[key] = (dt.date.fromisoformat(entry[key][:10]) + dt.timedelta(days=days)).isoformat()
    return shifted


# ---- sources ----------------------------------------------------------------------------------------

def load_feed_file(path) -> dict:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise CatalogError(f"cannot read {path}: {exc.strerror or exc}") from None
    return _decode(raw, str(path))


def _decode(raw: bytes, where: str) -> dict:
    if len(raw) > MAX_FEED_BYTES:
        raise CatalogError(f"{where}: feed larger than {MAX_FEED_BYTES} bytes")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise CatalogError(f"{where}: not JSON ({exc})") from None
    # SOFA's cached copies wrap Apple's response as {"etag": ..., "data": {...}}.
    if isinstance(data, dict) and "data" in data and isinstance(data["data"], dict) and "etag" in data:
        data = data["data"]
    return data


def tls_context(extra_ca_file: str | None = None) -> ssl.SSLContext:
    """The system trust store plus Apple's root (gdmf.apple.com chains to it) plus an optional extra CA."""
    context = ssl.create_default_context()
    try:
        import certifi
        context.load_verify_locations(cafile=certifi.where())
    except ImportError:
        pass
    context.load_verify_locations(cafile=str(APPLE_ROOT_CA))
    if extra_ca_file:
        context.load_verify_locations(cafile=str(extra_ca_file))
    return context


def fetch_feed(url: str, *, ca_file: str | None = None, timeout: float = 30.0) -> dict:
    try:
        with httpx.Client(verify=tls_context(ca_file), timeout=timeout, follow_redirects=True) as client:
            with client.stream("GET", url, headers={"Accept": "application/json"}) as response:
                if response.status_code != 200:
                    raise CatalogError(f"{url}: HTTP {response.status_code}")
                raw = bytearray()
                for chunk in response.iter_bytes():
                    raw += chunk
                    if len(raw) > MAX_FEED_BYTES:
                        raise CatalogError(f"{url}: feed larger than {MAX_FEED_BYTES} bytes")
    except httpx.HTTPError as exc:
        raise CatalogError(f"{url}: {type(exc).__name__}: {exc}") from None
    return _decode(bytes(raw), url)


# ---- storing ----------------------------------------------------------------------------------------

def _state() -> CatalogState:
    state = db.session.get(CatalogState, 1)
    if state is None:
        state = CatalogState(id=1, generation=0)
        db.session.add(state)
    return state


def _expiry_overrides(release: ParsedRelease) -> dict[str, str]:
    top = release.expiration_date
    return {d: e.isoformat() for d, e in sorted(release.expiration_by_device.items())
            if e is not None and top is not None and e < top}


def apply_feed(data, source: str, *, now: dt.datetime | None = None, actor: str = "system") -> SyncResult:
    """Replace the catalog with the feed's releases, keeping each row's first PostingDate and first-seen
    time. Refuses (CatalogError, nothing stored) a document with no iPhone/iPad releases at all."""
    now = now or utcnow()
    releases, skipped = parse_feed(data)
    if not releases:
        raise CatalogError(f"{source}: no iPhone/iPad/iPod releases in the feed; keeping the cached catalog")
    result = SyncResult(source=source, skipped_entries=skipped)
    existing = {(r.product_version, r.build): r for r in CatalogRelease.query.all()}
    for release in releases:
        row = existing.pop((release.product_version, release.build), None)
        values = dict(kind=release.kind, product_version_extra=release.product_version_extra,
                      prerequisite_build=release.prerequisite_build, sections=sorted(release.sections),
                      supported_devices=release.supported_devices,
                      expiration_by_device=_expiry_overrides(release), posting_date=release.posting_date,
                      expiration_date=release.expiration_date)
        if row is None:
            db.session.add(CatalogRelease(product_version=release.product_version, build=release.build,
                                          first_posting_date=release.posting_date, first_seen_at=now,
                                          last_seen_at=now, **values))
            result.added += 1
            continue
        # A re-post carries a later PostingDate: the deferral clock keeps the earliest one.
        values["first_posting_date"] = min(row.first_posting_date, release.posting_date)
        if any(getattr(row, k) != v for k, v in values.items()):
            for k, v in values.items():
                setattr(row, k, v)
            result.updated += 1
        else:
            result.unchanged += 1
        row.last_seen_at = now
    for row in existing.values():       # no longer signed by Apple: only after a successful fetch
        db.session.delete(row)
        result.removed += 1
    state = _state()
    state.source, state.last_attempt_at, state.last_success_at, state.last_error = source, now, now, None
    if result.changed:
        state.generation = (state.generation or 0) + 1
        audit("catalog.sync", actor=actor, object_type="catalog", object_id=source, after=result.as_dict())
    finish()
    log.info("catalog sync from %s: %s", source, result.as_dict())
    return result


def _record_failure(source: str, message: str, now: dt.datetime) -> None:
    db.session.rollback()
    state = _state()
    state.last_attempt_at, state.last_error = now, message
    if state.source is None:
        state.source = source
    db.session.commit()     # the failure is recorded although the caller's unit of work fails (CatalogError)


def sync_catalog(*, file: str | None = None, url: str | None = None, now: dt.datetime | None = None,
                 recompute: bool = True, actor: str = "system") -> SyncResult:
    """Refresh from a file, or from ``url`` / config CATALOG_URL. On failure the cache stays and the
    error is recorded and raised (CatalogError). A change triggers a full target recomputation."""
    now = now or utcnow()
    config = current_app.config
    source = str(file) if file else (url or config.get("CATALOG_URL") or DEFAULT_URL)
    try:
        data = load_feed_file(file) if file else fetch_feed(source, ca_file=config.get("CATALOG_CA_FILE"),
                                                            timeout=float(config.get("CATALOG_TIMEOUT", 30)))
        result = apply_feed(data, source, now=now, actor=actor)
    except CatalogError as exc:
        log.warning("catalog sync failed, keeping the cached catalog: %s", exc)
        _record_failure(source, str(exc), now)
        raise
    if recompute and result.changed:
        changes.replan(None, now=now)     # every device: through the spine (mdm/ddm/changes.py)
        finish()
    return result


def _catalog_present() -> bool:
    state = db.session.get(CatalogState, 1, populate_existing=True)
    return state is not None and bool(state.last_success_at or CatalogRelease.query.first() is not None)


def ensure_catalog(now: dt.datetime | None = None) -> None:
    """First use on a fresh install: load the packaged snapshot (never overrides a refreshed catalog)."""
    if _catalog_present():
        return
    # Two first requests may race here. SQLite transactions already start IMMEDIATE (one writer);
    # PostgreSQL needs a lock, then a second look at what the winner committed.
    if db.session.get_bind().dialect.name == "postgresql":
        db.session.execute(db.text("SELECT pg_advisory_xact_lock(hashtext('mdm.ddm.catalog.ensure'))"))
        if _catalog_present():
            return
    try:
        apply_feed(load_feed_file(SNAPSHOT_PATH), f"snapshot:{SNAPSHOT_PATH.name}", now=now)
    except CatalogError as exc:          # a broken package: say so, keep going without releases
        log.error("packaged catalog snapshot unusable: %s", exc)


def generation() -> int:
    state = db.session.get(CatalogState, 1)
    return state.generation if state else 0


def releases(*, include_security_responses: bool = True) -> list[CatalogRelease]:
    query = CatalogRelease.query
    if not include_security_responses:
        query = query.filter(CatalogRelease.kind == "os")
    rows = query.all()
    return sorted(rows, key=lambda r: (version_key(r.product_version), r.build), reverse=True)


def catalog_status(now: dt.datetime | None = None) -> dict:
    """Where the catalog came from and whether it is stale, in words an operator can act on."""
    now = now or utcnow()
    state = db.session.get(CatalogState, 1)
    rows = CatalogRelease.query.filter(CatalogRelease.kind == "os").all()
    # A release is expired on its ExpirationDate itself (targets.ModelRelease.expired).
    live = [r for r in rows if r.expiration_date is None or r.expiration_date > now.date()]
    newest_expiry = max((r.expiration_date for r in rows if r.expiration_date), default=None)
    warnings = []
    if not rows:
        warnings.append("the catalog is empty: no targets can be computed, enforcement declarations are "
                        "not sent")
    elif not live:
        warnings.append(f"every release in the catalog expired (latest expiration {newest_expiry}): no targets "
                        f"can be computed until a refresh succeeds; run `flask mdm catalog sync`")
    last_success = state.last_success_at if state else None
    if state is not None and (state.source or "").startswith("snapshot:"):
        warnings.append("using the release snapshot shipped with the server, not a refresh from Apple; "
                        "releases published since are unknown until `flask mdm catalog sync` succeeds")
    elif last_success is None or now - last_success > dt.timedelta(days=STALE_AFTER_DAYS):
        warnings.append(f"not refreshed from Apple for more than {STALE_AFTER_DAYS} days "
                        f"(last success: {last_success or 'never'}); newly published releases are unknown")
    health = catalog_health(now)
    return {"source": state.source if state else None,
            "last_attempt_at": state.last_attempt_at.isoformat() if state and state.last_attempt_at else None,
            "last_success_at": last_success.isoformat() if last_success else None,
            "last_error": state.last_error if state else None,
            "releases": len(rows), "unexpired_releases": len(live),
            "stale": bool(warnings), "warnings": warnings,
            "origin": health.origin, "origin_text": health.origin_text, "problem": health.problem}


ORIGIN_SNAPSHOT, ORIGIN_APPLE, ORIGIN_URL, ORIGIN_FILE = "snapshot", "apple", "url", "file"


@dataclass(frozen=True)
class CatalogHealth:
    origin: str | None               # where the rows in use came from (ORIGIN_*), None before any load
    source: str | None
    loaded_at: dt.datetime | None    # the last successful load or sync (UTC)
    last_error: str | None           # the latest failed sync's message, when it failed after that
    releases: int                    # OS releases (security responses are not targets)
    unexpired: int
    newest_expiry: dt.date | None
    problem: str | None              # the banner's sentence; None when the catalog can be trusted

    @property
    def origin_text(self) -> str:
        when = f"{self.loaded_at:%Y-%m-%d %H:%M} UTC" if self.loaded_at else "an unknown time"
        if self.origin == ORIGIN_SNAPSHOT:
            return f"packaged snapshot loaded at {when} (no sync from Apple has succeeded)"
        if self.origin == ORIGIN_APPLE:
            return f"synced from Apple at {when}"
        if self.origin == ORIGIN_URL:
            return f"synced from {self.source} at {when}"
        if self.origin == ORIGIN_FILE:
            return f"loaded from the file {self.source} at {when}"
        return "no release catalog loaded yet"


def _origin(source: str | None) -> str | None:
    if not source:
        return None
    if source.startswith("snapshot:"):
        return ORIGIN_SNAPSHOT
    if source.startswith(("https://gdmf.apple.com/", "http://gdmf.apple.com/")):
        return ORIGIN_APPLE
    if source.startswith(("https://", "http://")):
        return ORIGIN_URL
    return ORIGIN_FILE


def catalog_health(now: dt.datetime | None = None) -> CatalogHealth:
    """Where the catalog came from and whether it can be trusted. Read-only: never loads the snapshot."""
    now = now or utcnow()
    state = db.session.get(CatalogState, 1)
    os_rows = db.select(CatalogRelease.expiration_date).where(CatalogRelease.kind == "os")
    expiries = list(db.session.scalars(os_rows))
    unexpired = sum(1 for e in expiries if e is None or e > now.date())
    newest_expiry = max((e for e in expiries if e), default=None)
    source = state.source if state else None
    loaded_at = state.last_success_at if state else None
    failed_since = bool(state and state.last_error and state.last_attempt_at
                        and (loaded_at is None or state.last_attempt_at >= loaded_at))
    last_error = state.last_error if failed_since else None
    origin = _origin(source) if loaded_at else None
    facts = dict(origin=origin, source=source, loaded_at=loaded_at, last_error=last_error,
                 releases=len(expiries), unexpired=unexpired, newest_expiry=newest_expiry)
    return CatalogHealth(problem=_problem(now, **facts), **facts)


def _problem(now, *, origin, source, loaded_at, last_error, releases, unexpired, newest_expiry) -> str | None:
    """One sentence (plus the last error); where the catalog came from is ``origin_text``, shown beside it."""
    error = f" Last sync error: {last_error}." if last_error else ""
    if releases == 0:
        return ("The release catalog is empty: no device gets a patch target until a sync succeeds "
                f"(flask mdm catalog sync, or Sync now in Settings).{error}")
    if unexpired == 0:
        return (f"Every release in the catalog has expired (latest expiration {newest_expiry}): no device gets "
                f"a patch target until a sync from Apple succeeds.{error}")
    if origin == ORIGIN_SNAPSHOT and last_error:
        return (f"Apple's release catalog is unreachable: the packaged snapshot is in use and releases "
                f"published since are unknown.{error}")
    age_days = (now - loaded_at).days if loaded_at else None
    if age_days is not None and age_days > STALE_AFTER_DAYS:
        what = "The packaged snapshot has been in use" if origin == ORIGIN_SNAPSHOT else \
            "The release catalog has not been refreshed"
        return (f"{what} for {age_days} days (since {loaded_at:%Y-%m-%d}): releases published since are "
                f"unknown.{error}")
    return None


def devices_without_target() -> dict[str, int]:
    """Devices a patch policy reaches that have no target because of the catalog ("catalog": every
    release for their model expired) or because their model is unknown to it ("model_unknown")."""
    counts = dict(db.session.execute(
        db.select(DevicePatchTarget.reason, db.func.count(DevicePatchTarget.device_id))
        .where(DevicePatchTarget.policy_id.is_not(None),
               DevicePatchTarget.reason.in_((REASON_CATALOG_EXPIRED, REASON_MODEL_UNKNOWN)))
        .group_by(DevicePatchTarget.reason)).all())
    return {"catalog": counts.get(REASON_CATALOG_EXPIRED, 0), "model_unknown": counts.get(REASON_MODEL_UNKNOWN, 0)}
