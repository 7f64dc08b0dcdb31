"""Default deployment rings: four policy groups, each holding its iOS ring policy.

``load_default_rings`` is idempotent: a second run creates nothing and reports what exists. A ring
whose iOS policy was deleted gets it back; a ring policy an admin edited is left as it is.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..extensions import db
from ..models import audit
from ..unit_of_work import finish
from .models import PatchPolicy, PolicyGroup
from .policies import create_policy

# (ring, deferral days, grace days before the enforced install). Enforcement on; the rest at Apple's
# defaults (softwareupdate.settings.yaml: Notifications true, AutomaticActions Allowed, RSR enabled).
DEFAULT_RINGS = (
    ("Vanguard", 1, 3),
    ("Early Adoption", 7, 7),
    ("General Adoption", 15, 10),
    ("Late Adoption", 30, 10),
)
DEFAULT_LOCAL_TIME = "18:00"      # end of the working day, device-local


@dataclass(frozen=True)
class RingResult:
    ring: str
    policy: str
    policy_id: int
    created_group: bool
    created_policy: bool

    def as_dict(self) -> dict:
        return {"ring": self.ring, "policy": self.policy, "policy_id": self.policy_id,
                "created_group": self.created_group, "created_policy": self.created_policy}


def ring_policy_name(ring: str) -> str:
    return f"{ring} (iOS)"


def load_default_rings(*, actor: str = "system", source: str | None = None) -> list[RingResult]:
    results = []
    for ring, deferral_days, grace_days in DEFAULT_RINGS:
        group = PolicyGroup.query.filter(db.func.lower(PolicyGroup.name) == ring.lower()).first()
        created_group = group is None
        if created_group:
            group = PolicyGroup(name=ring, description=f"Deployment ring: {deferral_days}-day deferral, "
                                                       f"{grace_days}-day deadline")
            db.session.add(group)
            db.session.flush()
            audit("policy_group.create", actor=actor, source=source, object_type="policy_group",
                  object_id=group.id, after={"name": ring})
            finish()
        policy = next((p for p in group.policies if p.platform == "iOS"), None)
        if policy is None:
            policy = PatchPolicy.query.filter(db.func.lower(PatchPolicy.name) == ring_policy_name(ring).lower()).first()
            if policy is not None and policy.policy_group_id is None:
                policy.policy_group = group          # an orphaned ring policy goes back to its ring
                finish()
        created_policy = policy is None
        if created_policy:
            policy = create_policy({"name": ring_policy_name(ring), "deferral_days": deferral_days,
                                    "enforce": True, "grace_days": grace_days, "local_time": DEFAULT_LOCAL_TIME},
                                   policy_group=group, actor=actor, source=source)
        results.append(RingResult(ring, policy.name, policy.id, created_group, created_policy))
    return results


def list_rings() -> list[PolicyGroup]:
    """Every policy group (deployment ring), oldest first."""
    return PolicyGroup.query.order_by(PolicyGroup.id).all()


def get_ring(ring_id: int) -> PolicyGroup | None:
    return db.session.get(PolicyGroup, ring_id)
