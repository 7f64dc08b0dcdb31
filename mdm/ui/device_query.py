"""The devices list: search, filters and pagination in SQL, shared by the UI and the API.

Stays fast with 10,000+ devices: one COUNT and one LIMIT/OFFSET query per page, group memberships
loaded in one extra query for the page only, and filters that indexes can serve (prefix matches on
name, serial and UDID; equality on OS version, model, enrollment status; ranges on last_seen_at).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import selectinload

from ..extensions import db
from ..models import Device, group_members, utcnow

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
PATCH_STATES = ("Compliant", "Scheduled", "Downloading", "Prepared", "Installing", "Overdue", "Failed",
                "Not applicable", "Pending", "Unknown")
# "Below target" on the dashboard: every state that is neither done nor out of scope.
BELOW_TARGET_STATES = ("Scheduled", "Downloading", "Prepared", "Installing", "Overdue", "Failed", "Pending",
                       "Unknown")


@dataclass
class DeviceFilters:
    q: str = ""             # prefix of device name, serial number or UDID
    os: str = ""            # "17.5" exact, or "17" for every 17.x
    model: str = ""         # product name, e.g. iPhone15,2
    platform: str = ""      # iOS, iPadOS, macOS, ... (from the product name prefix)
    supervised: str = ""    # "yes" | "no"
    group: int | None = None
    patch: str = ""         # a PATCH_STATES value, or "below" for any below-target state
    policy: int | None = None  # restricts the patch filter to one policy
    seen: str = ""          # "7" / "30": not seen for that many days; "never"
    status: str = ""        # enrollment status: enrolled | unenrolled | authenticated
    deadline: str = ""      # "7": a patch deadline within the next 7 days, not yet compliant
    page: int = 1
    per_page: int = PAGE_SIZE
    errors: list = field(default_factory=list)

    @classmethod
    def from_args(cls, args) -> "DeviceFilters":
        f = cls(q=(args.get("q") or "").strip()[:255], os=(args.get("os") or "").strip()[:32],
                model=(args.get("model") or "").strip()[:64], platform=(args.get("platform") or "").strip(),
                supervised=args.get("supervised") or "", patch=args.get("patch") or "",
                seen=args.get("seen") or "", status=args.get("status") or "",
                deadline=args.get("deadline") or "")
        f.group = _int(args.get("group"), f.errors, "group")
        f.policy = _int(args.get("policy"), f.errors, "policy")
        f.page = max(1, _int(args.get("page"), f.errors, "page") or 1)
        f.per_page = min(MAX_PAGE_SIZE, max(1, _int(args.get("per_page"), f.errors, "per_page") or PAGE_SIZE))
        if f.supervised not in ("", "yes", "no"):
            f.errors.append("supervised: yes or no")
        if f.seen not in ("", "7", "30", "never"):
            f.errors.append("seen: 7, 30 or never")
        if f.status not in ("", "enrolled", "unenrolled", "authenticated"):
            f.errors.append("status: enrolled, unenrolled or authenticated")
        if f.deadline not in ("", "7"):
            f.errors.append("deadline: 7")
        if f.patch not in ("", "below", *PATCH_STATES):
            f.errors.append(f"patch: one of below, {', '.join(PATCH_STATES)}")
        return f

    def as_args(self, **changes) -> dict:
        """Query-string arguments for links (pagination keeps the filters)."""
        values = {"q": self.q, "os": self.os, "model": self.model, "platform": self.platform,
                  "supervised": self.supervised, "group": self.group, "patch": self.patch,
                  "policy": self.policy, "seen": self.seen, "status": self.status, "deadline": self.deadline,
                  "page": self.page}
        values.update(changes)
        return {k: v for k, v in values.items() if v not in (None, "", 1) or (k == "page" and v != 1)}


def _int(value, errors: list, name: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        errors.append(f"{name}: a number")
        return None


_PLATFORM_PREFIXES = {"iOS": ("iPhone", "iPod"), "iPadOS": ("iPad",), "macOS": ("Mac", "iMac", "VMware"),
                      "tvOS": ("AppleTV",), "watchOS": ("Watch",), "visionOS": ("RealityDevice",)}


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def filtered_select(f: DeviceFilters):
    stmt = select(Device)
    if f.q:
        prefix = _like_prefix(f.q)
        stmt = stmt.where(or_(Device.device_name.like(prefix, escape="\\"),
                              Device.serial_number.like(prefix, escape="\\"),
                              Device.udid.like(prefix, escape="\\")))
    if f.os:
        stmt = stmt.where(or_(Device.os_version == f.os, Device.os_version.like(_like_prefix(f.os + "."), escape="\\")))
    if f.model:
        stmt = stmt.where(Device.product_name == f.model)
    if f.platform in _PLATFORM_PREFIXES:
        stmt = stmt.where(or_(*[Device.product_name.like(p + "%") for p in _PLATFORM_PREFIXES[f.platform]]))
    if f.supervised == "yes":
        stmt = stmt.where(Device.is_supervised.is_(True))
    elif f.supervised == "no":
        stmt = stmt.where(or_(Device.is_supervised.is_(False), Device.is_supervised.is_(None)))
    if f.group is not None:
        stmt = stmt.where(Device.id.in_(select(group_members.c.device_id).where(group_members.c.group_id == f.group)))
    if f.status:
        stmt = stmt.where(Device.enrollment_status == f.status)
    if f.seen in ("7", "30"):
        cutoff = utcnow() - timedelta(days=int(f.seen))
        stmt = stmt.where(Device.enrollment_status == "enrolled",
                          or_(Device.last_seen_at < cutoff, Device.last_seen_at.is_(None)))
    elif f.seen == "never":
        stmt = stmt.where(Device.last_seen_at.is_(None))
    if f.patch or f.deadline:
        stmt = _patch_filter(stmt, f)
    return stmt


def _patch_filter(stmt, f: DeviceFilters):
    try:
        from ..ddm.state_models import PolicyResult
    except ImportError:
        return stmt.where(False)
    sub = select(PolicyResult.device_id)
    if f.patch:
        sub = sub.where(PolicyResult.state.in_(BELOW_TARGET_STATES if f.patch == "below" else (f.patch,)))
    if f.deadline:
        from ..ddm.results import deadline_within     # the dashboard's window, device time zones included
        sub = sub.where(deadline_within(utcnow(), int(f.deadline)))
    if f.policy is not None:
        sub = sub.where(PolicyResult.policy_id == f.policy)
    return stmt.where(Device.id.in_(sub))


@dataclass
class DevicePage:
    devices: list
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def device_page(f: DeviceFilters) -> DevicePage:
    base = filtered_select(f)
    total = db.session.execute(select(db.func.count()).select_from(base.order_by(None).subquery())).scalar()
    page = min(f.page, max(1, -(-total // f.per_page)))
    stmt = (base.options(selectinload(Device.groups))
            .order_by(Device.device_name, Device.id)
            .limit(f.per_page).offset((page - 1) * f.per_page))
    return DevicePage(list(db.session.execute(stmt).scalars()), total, page, f.per_page)


def filter_choices() -> dict:
    """Distinct OS versions and models for the filter menus (small: a fleet has few of each)."""
    os_versions = [v for (v,) in db.session.execute(select(Device.os_version).distinct()
                                                    .where(Device.os_version.is_not(None))) if v]
    models = [v for (v,) in db.session.execute(select(Device.product_name).distinct()
                                               .where(Device.product_name.is_not(None))) if v]
    return {"os_versions": sorted(os_versions, key=_version_key, reverse=True), "models": sorted(models)}


def _version_key(v: str):
    return tuple(int(p) if p.isdigit() else 0 for p in v.split("."))
