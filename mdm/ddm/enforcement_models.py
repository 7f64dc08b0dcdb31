"""Software Update Enforcement policies: one specific iOS/iPadOS version by a set date and device-local
time, bound to devices and device groups, and their per-(policy, device) results.

Each policy reaching a device becomes one ``com.apple.configuration.softwareupdate.enforcement.specific``
declaration (Apple's schema: ``apply: multiple``), next to whatever a patch policy sends. The service
is ``mdm/ddm/enforcement.py``; which devices a policy applies to is ``mdm/ddm/enforcement_scope.py``.
"""
from __future__ import annotations

from sqlalchemy import CheckConstraint, UniqueConstraint

from ..extensions import db
from ..models import utcnow


class EnforcementPolicy(db.Model):
    """Install ``target_version`` (optionally ``target_build``) by ``enforce_at`` device-local time."""
    __tablename__ = "ddm_enforcement_policies"
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(255), unique=True, nullable=False)
    platform = db.Column(db.String(16), nullable=False, default="iOS")
    target_version = db.Column(db.String(32), nullable=False)
    target_build = db.Column(db.String(32))
    enforce_at = db.Column(db.String(16), nullable=False)      # "YYYY-MM-DDTHH:MM", device-local, no offset
    details_url = db.Column(db.String(1024))
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    updated_at = db.Column(db.DateTime, nullable=False, default=utcnow)

    bindings = db.relationship("EnforcementBinding", back_populates="policy", cascade="all, delete-orphan",
                               passive_deletes=True, order_by="EnforcementBinding.id")

    def __repr__(self):
        return f"<EnforcementPolicy {self.id} {self.name!r}>"


class EnforcementBinding(db.Model):
    """An enforcement policy bound to one device or to one device group (exactly one of the two)."""
    __tablename__ = "ddm_enforcement_bindings"
    id = db.Column(db.Integer, primary_key=True)
    policy_id = db.Column(db.Integer, db.ForeignKey("ddm_enforcement_policies.id", ondelete="CASCADE"),
                          nullable=False, index=True)
    device_id = db.Column(db.Integer, db.ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    group_id = db.Column(db.Integer, db.ForeignKey("device_groups.id", ondelete="CASCADE"), index=True)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)

    policy = db.relationship("EnforcementPolicy", back_populates="bindings")
    device = db.relationship("Device")
    group = db.relationship("DeviceGroup")

    __table_args__ = (
        CheckConstraint("(device_id IS NULL) <> (group_id IS NULL)", name="one_target"),
        UniqueConstraint("policy_id", "device_id", name="uq_ddm_enforcement_bindings_policy_device"),
        UniqueConstraint("policy_id", "group_id", name="uq_ddm_enforcement_bindings_policy_group"),
    )


class EnforcementResult(db.Model):
    """The last computed state of one enforcement policy on one device (kept when the policy is deleted)."""
    __tablename__ = "ddm_enforcement_results"
    id = db.Column(db.Integer, primary_key=True)
    policy_id = db.Column(db.Integer, nullable=False, index=True)   # no FK: results outlive a deleted policy
    device_id = db.Column(db.Integer, db.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False, index=True)
    state = db.Column(db.String(32), nullable=False)
    detail = db.Column(db.Text)
    effective = db.Column(db.String(300))     # which enforcement the device acts on first ("this policy", ...)
    state_since = db.Column(db.DateTime, nullable=False, default=utcnow)
    updated_at = db.Column(db.DateTime, nullable=False, default=utcnow)

    __table_args__ = (UniqueConstraint("policy_id", "device_id", name="uq_ddm_enforcement_results_policy_device"),)

