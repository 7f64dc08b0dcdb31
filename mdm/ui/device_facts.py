"""What the DDM room stored about one device, shaped for display: declarations with the status the
device reported, and per-policy results with their history. Read-only.

Countdowns run to ``deadline_utc``, the instant the device-local deadline falls on in the device's own
time zone; without a known zone there is no instant and the countdown says "device time zone unknown"
(or, once the wall time has passed in every zone, "overdue in every time zone")."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from ..ddm.results import declaration_report, results_for_device
from ..ddm.targets import ZONE_UNKNOWN, deadline_passed_everywhere, zone_named
from ..models import utcnow


@dataclass
class DeclarationRow:
    identifier: str
    type: str
    server_token: str
    active: bool | None = None
    valid: str | None = None       # "valid" | "invalid" | "unknown" as the device reported
    reasons: list = field(default_factory=list)
    current: bool | None = None    # the device's server token matches what we serve


@dataclass
class ResultRow:
    policy_id: int
    policy_name: str
    state: str
    detail: str | None
    target_version: str | None
    target_build: str | None
    deadline_local: str | None
    deadline_utc: datetime | None
    state_since: datetime | None
    updated_at: datetime | None
    reasons: list = field(default_factory=list)    # Apple's reason codes when Failed
    history: list = field(default_factory=list)    # newest first
    time_zone: str | None = None                   # the device's IANA zone, None when unknown
    deadline_note: str | None = None               # "deadline counted from iOS 18.1 (first release ...)"

    @property
    def zone_unknown(self) -> bool:
        """A device-local deadline with no instant: the device has not told us a valid time zone."""
        return bool(self.deadline_local and not self.deadline_utc)

    @property
    def countdown(self) -> str | None:
        return self.countdown_at(utcnow())

    def countdown_at(self, now: datetime) -> str | None:
        """"3d 4h" until the deadline, "overdue 2h" after it, None without a deadline; with the zone
        unknown, say so instead of counting down to a guess."""
        if self.zone_unknown:
            if deadline_passed_everywhere(self.deadline_local, now):
                return f"overdue in every time zone ({ZONE_UNKNOWN})"
            return ZONE_UNKNOWN
        if not self.deadline_utc:
            return None
        seconds = int((self.deadline_utc - now).total_seconds())
        text = _span(abs(seconds))
        return text if seconds >= 0 else f"overdue {text}"

    @property
    def badge(self) -> str:
        return state_badge(self.state)


def state_badge(state: str | None) -> str:
    if state == "Compliant":
        return "ok"
    if state in ("Overdue", "Failed"):
        return "bad"
    if state in ("Scheduled", "Downloading", "Prepared", "Installing", "Pending"):
        return "info"
    if state == "Unknown":
        return "warn"
    return ""


def _span(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m"


def time_zone_of(device) -> str | None:
    """The device's IANA zone when it reported a valid one, else None ("device time zone unknown")."""
    return device.time_zone if zone_named(device.time_zone) else None


def declarations_for(device) -> list[DeclarationRow]:
    rows = []
    for decl, seen in declaration_report(device):
        ident = decl.get("Identifier", "")
        rows.append(DeclarationRow(identifier=ident, type=decl.get("Type", ""),
                                   server_token=decl.get("ServerToken", ""),
                                   active=seen.get("active"), valid=seen.get("valid"),
                                   reasons=seen.get("reasons") or [], current=seen.get("current")))
    return rows


def policy_results_for(device) -> list[ResultRow]:
    """Results through the DDM results service (mdm/ddm/results.py, recomputed now), shaped for display."""
    rows = []
    for r in results_for_device(device):
        row = _row_from(r)
        row.reasons = list(getattr(r, "reasons", None) or [])
        row.history = list(reversed(getattr(r, "history", None) or []))
        rows.append(row)
    return rows


def _row_from(r) -> ResultRow:
    get = (lambda name: r.get(name)) if isinstance(r, dict) else (lambda name: getattr(r, name, None))
    return ResultRow(policy_id=get("policy_id"), policy_name=get("policy_name") or "", state=get("state") or "Unknown",
                     detail=get("detail"), target_version=get("target_version"), target_build=get("target_build"),
                     deadline_local=get("deadline_local"), deadline_utc=get("deadline_utc"),
                     state_since=get("state_since"), updated_at=get("updated_at"), time_zone=get("time_zone"),
                     deadline_note=get("deadline_note"))
