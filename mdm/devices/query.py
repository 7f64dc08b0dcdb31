"""The devices list: search, filters, sorting and pagination in SQL, shared by the UI and the API.

Stays fast with 10,000+ devices: one COUNT and one LIMIT/OFFSET query per page; group memberships and
the patch columns (status, target, deadline of the policy that won for the device) loaded in one extra
query each for the page only. Search matches any part of the name, serial number or UDID (case-
insensitive): a substring match no index serves, so the COUNT and the page query each scan the devices
table (a few milliseconds on 10,000 devices, see docs/ui.md). Sorting is ``ORDER BY`` on a
whitelisted column (``SORTS``), ascending or descending (``-name``), empty values last, the device id
breaking ties; the patch columns join the stored plan and result only when sorting by them.

Why in the devices room: the UI's lists (devices, group and policy pickers) and the API's
``GET /api/v1/devices`` page through the same query; it reads the DDM room's plan and result tables
for the patch columns, never the other way round.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import selectinload

from ..ddm.models import DevicePatchTarget
from ..ddm.results import deadline_within
from ..ddm.state_models import PolicyResult
from ..extensions import db
from ..models import Device, group_members, utcnow

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
PATCH_STATES = ("Compliant", "Scheduled", "Downloading", "Prepared", "Installing", "Overdue", "Failed",
                "Not applicable", "Pending", "Unknown")
# "Below target" on the dashboard: every state that is neither done nor out of scope.
BELOW_TARGET_STATES = ("Scheduled", "Downloading", "Prepared", "Installing", "Overdue", "Failed", "Pending",
                       "Unknown")


# The sortable columns: ?sort=<key> ascending, ?sort=-<key> descending. Nothing else reaches ORDER BY.
SORTS = {"name": Device.device_name, "serial": Device.serial_number, "model": Device.product_name,
         "os": Device.os_version, "supervised": Device.is_supervised, "enrollment": Device.enrollment_status,
         "last_seen": Device.last_seen_at, "patch": PolicyResult.state, "target": DevicePatchTarget.target_version,
         "deadline": DevicePatchTarget.deadline_local}
PATCH_SORTS = ("patch", "target", "deadline")
DEFAULT_SORT = "name"
# Platforms as the UI names them: iPhone and iPad are one platform ("iOS,iPadOS").
PLATFORM_CHOICES = (("iOS,iPadOS", "iOS & iPadOS"), ("macOS", "macOS"), ("tvOS", "tvOS"), ("watchOS", "watchOS"),
                    ("visionOS", "visionOS"))


@dataclass
class DeviceFilters:
    q: str = ""             # any part of device name, serial number or UDID
    os: str = ""            # "17.5" exact, or "17" for every 17.x
    model: str = ""         # product name, e.g. iPhone15,2
    platform: str = ""      # iOS, iPadOS, macOS, ... or several, comma-separated ("iOS,iPadOS")
    supervised: str = ""    # "yes" | "no"
    group: int | None = None
    patch: str = ""         # a PATCH_STATES value, or "below" for any below-target state
    policy: int | None = None  # restricts the patch filter to one policy
    seen: str = ""          # "7" / "30": not seen for that many days; "never"
    status: str = ""        # enrollment status: enrolled | unenrolled | authenticated
    deadline: str = ""      # "7": a patch deadline within the next 7 days, not yet compliant
    sort: str = DEFAULT_SORT  # a SORTS key, "-" first for descending
    page: int = 1
    per_page: int = PAGE_SIZE
    errors: list = field(default_factory=list)

    @classmethod
    def from_args(cls, args) -> "DeviceFilters":
        f = cls(q=(args.get("q") or "").strip()[:255], os=(args.get("os") or "").strip()[:32],
                model=(args.get("model") or "").strip()[:64], platform=(args.get("platform") or "").strip(),
                supervised=args.get("supervised") or "", patch=args.get("patch") or "",
                seen=args.get("seen") or "", status=args.get("status") or "",
                deadline=args.get("deadline") or "", sort=(args.get("sort") or DEFAULT_SORT).strip())
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
        if f.platform and any(p not in _PLATFORM_PREFIXES for p in f.platforms):
            f.errors.append(f"platform: one or more of {', '.join(_PLATFORM_PREFIXES)}, comma-separated")
        if f.sort_key not in SORTS:
            f.errors.append(f"sort: one of {', '.join(SORTS)}, with - in front for descending")
            f.sort = DEFAULT_SORT
        return f

    @property
    def platforms(self) -> list[str]:
        return [p.strip() for p in self.platform.split(",") if p.strip()]

    @property
    def sort_key(self) -> str:
        return self.sort.lstrip("-")

    @property
    def descending(self) -> bool:
        return self.sort.startswith("-")

    def sort_link(self, key: str) -> str:
        """The sort value a column header links to: ascending first, then flips."""
        return f"-{key}" if self.sort == key else key

    def aria_sort(self, key: str) -> str | None:
        if self.sort_key != key:
            return None
        return "descending" if self.descending else "ascending"

    def as_args(self, **changes) -> dict:
        """Query-string arguments for links (pagination keeps the filters)."""
        values = {"q": self.q, "os": self.os, "model": self.model, "platform": self.platform,
                  "supervised": self.supervised, "group": self.group, "patch": self.patch,
                  "policy": self.policy, "seen": self.seen, "status": self.status, "deadline": self.deadline,
                  "sort": self.sort, "page": self.page}
        values.update(changes)
        if values.get("sort") == DEFAULT_SORT:
            values["sort"] = ""
        # Page 1 is the default; any other argument is dropped only when empty (group or policy 1 is a real id).
        return {k: v for k, v in values.items() if v not in (None, "") and not (k == "page" and v == 1)}

    def chips(self, group_names: dict | None = None, policy_names: dict | None = None) -> list["FilterChip"]:
        """The active filters, each with the query-string arguments that remove it (back to page 1)."""
        chips = []
        for name, label in _FILTER_LABELS.items():
            value = getattr(self, name)
            if value in (None, ""):
                continue
            shown = _filter_value(name, value, group_names or {}, policy_names or {})
            chips.append(FilterChip(name, f"{label}: {shown}", self.as_args(**{name: None, "page": 1})))
        return chips


@dataclass
class FilterChip:
    name: str          # the query argument it stands for
    label: str         # "Platform: iOS & iPadOS"
    remove_args: dict  # query-string arguments without it


_FILTER_LABELS = {"q": "Search", "platform": "Platform", "os": "OS version", "model": "Model",
                  "supervised": "Supervised", "group": "Group", "patch": "Patch status", "policy": "Policy",
                  "seen": "Last seen", "status": "Enrollment", "deadline": "Deadline"}
_VALUE_WORDS = {"supervised": {"yes": "Yes", "no": "No"}, "patch": {"below": "Below target"},
                "seen": {"7": "not for 7 days", "30": "not for 30 days", "never": "never"},
                "deadline": {"7": "within 7 days"}, "platform": dict(PLATFORM_CHOICES)}


def _filter_value(name: str, value, group_names: dict, policy_names: dict) -> str:
    if name == "group":
        return group_names.get(value, f"#{value}")
    if name == "policy":
        return policy_names.get(value, f"#{value}")
    if name == "q":
        return f"“{value}”"
    return _VALUE_WORDS.get(name, {}).get(value, str(value))


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


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _like_prefix(text: str) -> str:
    return _like_escape(text) + "%"


def _matches(column, pattern: str):
    """Case-insensitive LIKE. SQLite's LIKE already ignores ASCII case, and its plain LIKE scans about
    three times faster than ILIKE's lower(column) LIKE lower(pattern); PostgreSQL needs ILIKE."""
    if db.session.get_bind().dialect.name == "sqlite":
        return column.like(pattern, escape="\\")
    return column.ilike(pattern, escape="\\")


def filtered_select(f: DeviceFilters):
    stmt = select(Device)
    if f.q:
        anywhere = "%" + _like_escape(f.q) + "%"
        stmt = stmt.where(or_(*[_matches(column, anywhere) for column in
                                (Device.device_name, Device.serial_number, Device.udid)]))
    if f.os:
        stmt = stmt.where(or_(Device.os_version == f.os, Device.os_version.like(_like_prefix(f.os + "."), escape="\\")))
    if f.model:
        stmt = stmt.where(Device.product_name == f.model)
    prefixes = [p for name in f.platforms for p in _PLATFORM_PREFIXES.get(name, ())]
    if prefixes:
        stmt = stmt.where(or_(*[Device.product_name.like(p + "%") for p in prefixes]))
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
    sub = select(PolicyResult.device_id)
    if f.patch:
        sub = sub.where(PolicyResult.state.in_(BELOW_TARGET_STATES if f.patch == "below" else (f.patch,)))
    if f.deadline:
        sub = sub.where(deadline_within(utcnow(), int(f.deadline)))
    if f.policy is not None:
        sub = sub.where(PolicyResult.policy_id == f.policy)
    return stmt.where(Device.id.in_(sub))


@dataclass
class PatchColumns:
    """The device list's patch columns: the result of the policy that won for the device."""
    state: str | None
    target_version: str | None
    deadline_local: str | None
    reason: str | None


@dataclass
class DevicePage:
    devices: list
    total: int
    page: int
    per_page: int
    patch: dict = field(default_factory=dict)    # device id -> PatchColumns (devices with a plan only)

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def device_page(f: DeviceFilters, *, with_patch: bool = False) -> DevicePage:
    """One page of devices; ``with_patch`` also loads the patch columns for that page."""
    base = filtered_select(f)
    total = db.session.execute(select(db.func.count()).select_from(base.order_by(None).subquery())).scalar()
    page = min(f.page, max(1, -(-total // f.per_page)))
    stmt = (_ordered(base, f).options(selectinload(Device.groups))
            .limit(f.per_page).offset((page - 1) * f.per_page))
    devices = list(db.session.execute(stmt).scalars())
    return DevicePage(devices, total, page, f.per_page, patch_columns([d.id for d in devices]) if with_patch else {})


def _with_plan(stmt):
    """Outer-join the stored plan and the result of the policy that won (one row per device at most)."""
    return (stmt.outerjoin(DevicePatchTarget, DevicePatchTarget.device_id == Device.id)
            .outerjoin(PolicyResult, and_(PolicyResult.device_id == Device.id,
                                          PolicyResult.policy_id == DevicePatchTarget.policy_id)))


def _ordered(stmt, f: DeviceFilters):
    key = f.sort_key if f.sort_key in SORTS else DEFAULT_SORT
    if key in PATCH_SORTS:
        stmt = _with_plan(stmt)
    column = SORTS[key]
    order = column.desc() if f.descending else column.asc()
    return stmt.order_by(order.nulls_last(), Device.id.desc() if f.descending else Device.id)


def patch_columns(device_ids: list[int]) -> dict[int, PatchColumns]:
    if not device_ids:
        return {}
    rows = db.session.execute(
        select(DevicePatchTarget.device_id, PolicyResult.state, DevicePatchTarget.target_version,
               DevicePatchTarget.deadline_local, DevicePatchTarget.reason)
        .outerjoin(PolicyResult, and_(PolicyResult.device_id == DevicePatchTarget.device_id,
                                      PolicyResult.policy_id == DevicePatchTarget.policy_id))
        .where(DevicePatchTarget.device_id.in_(device_ids)))
    return {device_id: PatchColumns(state, target, deadline, reason)
            for device_id, state, target, deadline, reason in rows}


def filter_choices() -> dict:
    """Distinct OS versions and models for the filter menus (small: a fleet has few of each)."""
    os_versions = [v for (v,) in db.session.execute(select(Device.os_version).distinct()
                                                    .where(Device.os_version.is_not(None))) if v]
    models = [v for (v,) in db.session.execute(select(Device.product_name).distinct()
                                               .where(Device.product_name.is_not(None))) if v]
    return {"os_versions": sorted(os_versions, key=_version_key, reverse=True), "models": sorted(models)}


def _version_key(v: str):
    return tuple(int(p) if p.isdigit() else 0 for p in v.split("."))
