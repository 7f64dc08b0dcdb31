"""Per-policy figures for lists, the dashboard and charts, shaped for display from the DDM room's read
side (``mdm.ddm.results``: stored results and their history; ``mdm.ddm.plan.governed_counts``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ..ddm import results
from ..ddm.plan import governed_counts
from ..models import utcnow


@dataclass
class Compliance:
    by_state: dict = field(default_factory=dict)

    @property
    def in_scope(self) -> int:
        return sum(n for s, n in self.by_state.items() if s != "Not applicable")

    @property
    def compliant(self) -> int:
        return self.by_state.get("Compliant", 0)

    @property
    def below_target(self) -> int:
        return self.in_scope - self.compliant

    @property
    def overdue(self) -> int:
        return self.by_state.get("Overdue", 0)

    @property
    def percent(self) -> int | None:
        return round(100 * self.compliant / self.in_scope) if self.in_scope else None


def compliance_by_policy() -> dict[int, Compliance]:
    return {policy_id: Compliance(counts) for policy_id, counts in results.state_counts_by_policy().items()}


def scope_by_policy() -> dict[int, int]:
    """Devices whose stored plan names each policy (the devices it actually governs)."""
    return governed_counts()


def upcoming_deadlines(days: int = 7, limit: int = 10) -> list:
    """Results not yet compliant whose deadline falls in the next ``days``, soonest first."""
    return results.upcoming_deadlines(utcnow(), days, limit)


def upcoming_deadline_count(days: int = 7) -> int:
    return results.upcoming_deadline_count(utcnow(), days)


def compliance_history(policy_id: int, days: int = 30) -> list[tuple[datetime, int | None]]:
    """(day, percent compliant at the end of that day) for the last ``days`` days, replayed from the
    result change history: one pass over the changes, counters updated as states change."""
    today = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    ends = [today - timedelta(days=days - 1 - i) + timedelta(days=1) for i in range(days)]
    changes = results.state_changes(policy_id)
    state: dict[int, str] = {}
    in_scope = compliant = 0
    points, i = [], 0
    for device_id, new, at in changes:
        while i < len(ends) and at >= ends[i]:
            points.append((ends[i] - timedelta(days=1), _pct(compliant, in_scope)))
            i += 1
        old = state.get(device_id)
        in_scope -= old is not None and old != "Not applicable"
        compliant -= old == "Compliant"
        state[device_id] = new
        in_scope += new != "Not applicable"
        compliant += new == "Compliant"
    while i < len(ends):
        points.append((ends[i] - timedelta(days=1), _pct(compliant, in_scope)))
        i += 1
    return points


def _pct(compliant: int, in_scope: int) -> int | None:
    return round(100 * compliant / in_scope) if in_scope else None
