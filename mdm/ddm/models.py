"""Policy-engine tables: patch policies and their bindings, policy groups (rings), Apple's release
catalog, and the computed per-device target (Fleet style: results and the UI read stored facts).

The DDM protocol's own tables (declaration sets, status, results) are in ``state_models.py``.
"""
from __future__ import annotations

from sqlalchemy import CheckConstraint, Index, UniqueConstraint

from ..extensions import db
from ..models import utcnow


class PolicyGroup(db.Model):
    """A deployment ring ("Vanguard", ...). Holds policies of any platform; today only iOS patch policies."""
    __tablename__ = "ddm_policy_groups"
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(255), unique=True, nullable=False)
    description = db.Column(db.String(1024), nullable=False, default="")
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)

    policies = db.relationship("PatchPolicy", back_populates="policy_group", order_by="PatchPolicy.id")


class PatchPolicy(db.Model):
    """An OS patch policy. Column names match ``policies.PolicySettings`` attribute names."""
    __tablename__ = "ddm_patch_policies"
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(255), unique=True, nullable=False)
    platform = db.Column(db.String(16), nullable=False, default="iOS")
    policy_group_id = db.Column(db.Integer, db.ForeignKey("ddm_policy_groups.id", ondelete="SET NULL"), index=True)

    deferral_days = db.Column(db.Integer, nullable=False, default=0)
    enforce = db.Column(db.Boolean, nullable=False, default=False)
    grace_days = db.Column(db.Integer, nullable=False, default=30)
    local_time = db.Column(db.String(5))                       # "HH:MM", device-local
    details_url = db.Column(db.String(1024))
    notifications_all = db.Column(db.Boolean, nullable=False, default=True)
    cadence = db.Column(db.String(16), nullable=False, default="All")
    auto_download = db.Column(db.String(16), nullable=False, default="Allowed")
    auto_install_os = db.Column(db.String(16), nullable=False, default="Allowed")
    auto_install_security = db.Column(db.String(16), nullable=False, default="Allowed")
    rsr_offer = db.Column(db.Boolean, nullable=False, default=True)
    rsr_rollback = db.Column(db.Boolean, nullable=False, default=True)
    beta_enrollment = db.Column(db.String(16), nullable=False, default="Allowed")
    beta_programs = db.Column(db.JSON, nullable=False, default=list)   # [[description, token], ...]
    stay_on_major = db.Column(db.Boolean, nullable=False, default=False)

    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    updated_at = db.Column(db.DateTime, nullable=False, default=utcnow)

    policy_group = db.relationship("PolicyGroup", back_populates="policies")
    bindings = db.relationship("PolicyBinding", back_populates="policy", cascade="all, delete-orphan",
                               passive_deletes=True, order_by="PolicyBinding.id")

    def __repr__(self):
        return f"<PatchPolicy {self.id} {self.name!r}>"


class PolicyBinding(db.Model):
    """A policy bound to one device or to one device group (exactly one of the two)."""
    __tablename__ = "ddm_policy_bindings"
    id = db.Column(db.Integer, primary_key=True)
    policy_id = db.Column(db.Integer, db.ForeignKey("ddm_patch_policies.id", ondelete="CASCADE"), nullable=False,
                          index=True)
    device_id = db.Column(db.Integer, db.ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    group_id = db.Column(db.Integer, db.ForeignKey("device_groups.id", ondelete="CASCADE"), index=True)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)

    policy = db.relationship("PatchPolicy", back_populates="bindings")
    device = db.relationship("Device")
    group = db.relationship("DeviceGroup")

    __table_args__ = (
        CheckConstraint("(device_id IS NULL) <> (group_id IS NULL)", name="one_target"),
        UniqueConstraint("policy_id", "device_id", name="uq_ddm_policy_bindings_policy_device"),
        UniqueConstraint("policy_id", "group_id", name="uq_ddm_policy_bindings_policy_group"),
    )


class CatalogRelease(db.Model):
    """One (version, build) Apple publishes in gdmf v2/pmv for iPhone/iPad/iPod, merged over sections.

    ``first_posting_date`` is the earliest PostingDate we ever saw for it: Apple re-posts entries with
    newer dates, and a re-post must not restart deferral clocks (feeds/SOURCES.md, trap 3).
    """
    __tablename__ = "ddm_catalog_releases"
    id = db.Column(db.Integer, primary_key=True)
    product_version = db.Column(db.String(32), nullable=False)
    build = db.Column(db.String(32), nullable=False)
    # "os" for PublicAssetSets/AssetSets; "security-response" for Rapid Security Responses /
    # Background Security Improvements (never a patch-policy target).
    kind = db.Column(db.String(24), nullable=False, default="os")
    product_version_extra = db.Column(db.String(16))         # "(a)" for security responses
    prerequisite_build = db.Column(db.String(32))
    sections = db.Column(db.JSON, nullable=False, default=list)           # gdmf sections it appeared in
    supported_devices = db.Column(db.JSON, nullable=False, default=list)  # sorted product types
    # Only devices whose entry expires before ``expiration_date`` (the same build listed twice with
    # different device subsets and dates, trap 4): {"iPhone18,1": "2026-08-30"}.
    expiration_by_device = db.Column(db.JSON, nullable=False, default=dict)
    posting_date = db.Column(db.Date, nullable=False)          # as in the latest feed
    first_posting_date = db.Column(db.Date, nullable=False)    # earliest ever seen: the deferral clock
    expiration_date = db.Column(db.Date)
    first_seen_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    last_seen_at = db.Column(db.DateTime, nullable=False, default=utcnow)

    __table_args__ = (UniqueConstraint("product_version", "build", name="uq_ddm_catalog_releases_version_build"),
                      Index("ix_ddm_catalog_releases_kind", "kind"))


class CatalogState(db.Model):
    """A single row (id 1): where the catalog came from and how its last refresh went."""
    __tablename__ = "ddm_catalog_state"
    id = db.Column(db.Integer, primary_key=True)
    source = db.Column(db.String(1024))                 # URL, file path or "snapshot"
    last_attempt_at = db.Column(db.DateTime)
    last_success_at = db.Column(db.DateTime)
    last_error = db.Column(db.Text)
    # Bumped whenever rows change, so in-process caches of the candidate index know to rebuild.
    generation = db.Column(db.Integer, nullable=False, default=0)


class DevicePatchTarget(db.Model):
    """The computed patch plan of one device: which policy won, the target and the deadline, or why none.

    ``applied_at`` is when this policy started applying to the device; it resets when another policy
    takes over. Grace periods count from max(end of deferral, applied_at).
    """
    __tablename__ = "ddm_device_patch_targets"
    device_id = db.Column(db.Integer, db.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    # SET NULL (not CASCADE) so deleting a policy leaves a row the next recompute sees as changed.
    policy_id = db.Column(db.Integer, db.ForeignKey("ddm_patch_policies.id", ondelete="SET NULL"), index=True)
    binding = db.Column(db.String(300))                 # "device" or "group:<name>"
    applied_at = db.Column(db.DateTime)
    target_version = db.Column(db.String(32))
    target_build = db.Column(db.String(32))
    deadline_local = db.Column(db.String(19))           # "yyyy-mm-ddThh:mm:ss", no offset
    deadline_utc = db.Column(db.DateTime)
    reason = db.Column(db.String(255))
    compliant = db.Column(db.Boolean, nullable=False, default=False)
    conflicts = db.Column(db.JSON, nullable=False, default=list)
    settings_digest = db.Column(db.String(16))          # policy settings fingerprint: edits count as changes
    changed_at = db.Column(db.DateTime, nullable=False, default=utcnow)


class RecomputeRequest(db.Model):
    """A device whose plan must be recomputed, recorded inside the transaction that changed its facts."""
    __tablename__ = "ddm_recompute_queue"
    device_id = db.Column(db.Integer, db.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    queued_at = db.Column(db.DateTime, nullable=False, default=utcnow)


# Models are imported by create_app, so the room's scheduler jobs and signal receivers ride along here.
from . import jobs  # noqa: E402,F401
from . import enforcement_models  # noqa: E402,F401  (Software Update Enforcement policies)
