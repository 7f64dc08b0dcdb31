"""The stale-catalog banner every signed-in page shows: the release catalog is empty, every release in
it expired, Apple's feed is unreachable while the packaged snapshot is in use, or no refresh succeeded
for a week. Without a trustworthy catalog devices get no patch target; the banner says so and how many.

The facts come from ``mdm.ddm.catalog.catalog_health`` and ``devices_without_target`` (read-only: a page
view never loads or syncs the catalog)."""
from __future__ import annotations

from dataclasses import dataclass

from ..ddm.catalog import catalog_health, devices_without_target
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


def init_catalog_banner(app) -> None:
    register_banner(app, "catalog_banner", catalog_banner)
