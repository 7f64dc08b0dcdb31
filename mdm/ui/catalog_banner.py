"""The stale-catalog banners every signed-in page shows. Apple's release catalog: the release catalog is empty, every release in
it expired, Apple's feed is unreachable while the packaged snapshot is in use, or no refresh succeeded
for a week. Without a trustworthy catalog devices get no patch target; the banner says so and how many.

The SOFA vulnerability feed (``sofa_banner``): unreachable, or not refreshed for a week. It never holds
enforcement back (releases it does not describe get the normal grace period); the banner says so.

The facts come from ``mdm.ddm.catalog.catalog_health``, ``devices_without_target`` and
``mdm.ddm.sofa.sofa_health`` (read-only: a page view never loads or syncs either feed)."""
from __future__ import annotations

from dataclasses import dataclass

from ..ddm.catalog import catalog_health, devices_without_target
from ..ddm.sofa import sofa_health
from .banners import register_banner


@dataclass
class CatalogBanner:
    problem: str                 # what is wrong, in one sentence an operator can act on
    origin_text: str             # "packaged snapshot loaded at ..." / "synced from Apple at ..."
    without_target: int          # devices left without a target because every release for them expired


def catalog_banner() -> CatalogBanner | None:
    health = catalog_health()
    if health.problem is None:
        return None
    return CatalogBanner(health.problem, health.origin_text, devices_without_target()["catalog"])


@dataclass
class SofaBanner:
    problem: str                 # what is wrong and what it means for deadlines
    origin_text: str             # "SOFA data of 2026-08-22, synced from ... at ..." / "packaged snapshot (...)"


def sofa_banner() -> SofaBanner | None:
    health = sofa_health()
    if health.problem is None:
        return None
    return SofaBanner(health.problem, health.origin_text)


def init_catalog_banner(app) -> None:
    register_banner(app, "catalog_banner", catalog_banner)
    register_banner(app, "sofa_banner", sofa_banner)
