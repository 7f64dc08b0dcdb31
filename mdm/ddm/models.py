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
    # "first_missed" (new policies) or "newest"; rows from before anchoring were migrated to "newest".
    deadline_anchor = db.Column(db.String(16), nullable=False, default="first_missed")
    exploited_grace_days = db.Column(db.Integer)               # None = off

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


class SofaFeed(db.Model):
    """A single row (id 1): the SOFA iOS feed in use (``sofa.py``), reduced to what the engine reads, and
    how its last refresh went. No row (or no releases) means the packaged snapshot is in use."""
    __tablename__ = "ddm_sofa_feed"
    id = db.Column(db.Integer, primary_key=True)
    source = db.Column(db.String(1024))
    feed_checked_at = db.Column(db.DateTime)            # SOFA's own LastCheck (UTC)
    releases = db.Column(db.JSON)                       # {"18.1.1": {"cves": 2, "exploited": [...], ...}}
    last_attempt_at = db.Column(db.DateTime)
    last_success_at = db.Column(db.DateTime)
    last_error = db.Column(db.Text)
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
    deadline_anchor_version = db.Column(db.String(32))  # the release the deadline counts from
    deadline_note = db.Column(db.String(512))           # "deadline counted from iOS 18.1 (first release ...)"
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

