"""DDM protocol state per device: the declaration set we serve, the status the device reports, and
per-(policy, device) results with their history.

Policy tables live in ``mdm/ddm/models.py`` (the policy engine's room); these are the protocol's own.
"""
from __future__ import annotations

from sqlalchemy import Index

from ..extensions import db
from ..models import utcnow


class DeclarationSet(db.Model):
    """The declarations one device should have, exactly as served, and the token over them."""
    __tablename__ = "ddm_declaration_sets"
    device_id = db.Column(db.Integer, db.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    declarations_token = db.Column(db.String(64), nullable=False)
    # Full declaration dicts (Type, Identifier, ServerToken, Payload), sorted by identifier.
    declarations = db.Column(db.JSON, nullable=False, default=list)
    # Why a declaration or a setting was left out of this set ("enforcement: no candidate release", ...).
    notes = db.Column(db.JSON, nullable=False, default=list)
    # Days of the iOS 17 restrictions-profile deferral currently installed by command (None = not installed).
    restrictions_delay_days = db.Column(db.Integer)
    changed_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    # The token carried by the last DeclarativeManagement command we queued for this device.
    command_token = db.Column(db.String(64))
    command_queued_at = db.Column(db.DateTime)
    # Identifiers of the last declaration-items manifest the device fetched: what it holds (or held, when the
    # set has changed since), so a status report about them is the device's own (mdm/ddm/status.py).
    served_identifiers = db.Column(db.JSON)


class DeviceStatus(db.Model):
    """The device's merged DDM status: the StatusItems tree as of its latest reports, plus flattened facts."""
    __tablename__ = "ddm_device_status"
    device_id = db.Column(db.Integer, db.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    items = db.Column(db.JSON, nullable=False, default=dict)        # merged StatusItems tree
    errors = db.Column(db.JSON, nullable=False, default=list)       # Errors array of the latest report
    # identifier -> {kind, server_token, active, valid, reasons, current}; current = token matches our set.
    declarations = db.Column(db.JSON, nullable=False, default=dict)
    last_report_at = db.Column(db.DateTime, index=True)
    last_full_report_at = db.Column(db.DateTime)
    report_count = db.Column(db.Integer, nullable=False, default=0)


class StatusReport(db.Model):
    """A raw status report as received (bounded: the newest few per device are kept)."""
    __tablename__ = "ddm_status_reports"
    id = db.Column(db.Integer, primary_key=True)
    device_id = db.Column(db.Integer, db.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False)
    received_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    full_report = db.Column(db.Boolean, nullable=False, default=False)
    body = db.Column(db.Text, nullable=False)

    __table_args__ = (Index("ix_ddm_status_reports_device_id_id", "device_id", "id"),)


class PolicyResult(db.Model):
    """The last computed result of one patch policy on one device (Fleet-style stored status)."""
    __tablename__ = "ddm_policy_results"
    id = db.Column(db.Integer, primary_key=True)
    policy_id = db.Column(db.Integer, nullable=False, index=True)   # no FK: results outlive a deleted policy
    device_id = db.Column(db.Integer, db.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False, index=True)
    policy_name = db.Column(db.String(255))
    state = db.Column(db.String(32), nullable=False)
    detail = db.Column(db.Text)
    target_version = db.Column(db.String(32))
    target_build = db.Column(db.String(32))
    deadline_local = db.Column(db.String(19))
    deadline_utc = db.Column(db.DateTime)
    deadline_note = db.Column(db.String(512))   # why the deadline falls there (the plan's, targets.Deadline.note)
    state_since = db.Column(db.DateTime, nullable=False, default=utcnow)
    updated_at = db.Column(db.DateTime, nullable=False, default=utcnow)

    __table_args__ = (db.UniqueConstraint("policy_id", "device_id", name="uq_ddm_policy_results_policy_device"),)


class PolicyResultChange(db.Model):
    """History: one row each time a (policy, device) result changes state, target or deadline."""
    __tablename__ = "ddm_policy_result_changes"
    id = db.Column(db.Integer, primary_key=True)
    policy_id = db.Column(db.Integer, nullable=False)
    device_id = db.Column(db.Integer, db.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False)
    changed_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    state = db.Column(db.String(32), nullable=False)
    previous_state = db.Column(db.String(32))
    detail = db.Column(db.Text)
    target_version = db.Column(db.String(32))
    deadline_local = db.Column(db.String(19))

    __table_args__ = (Index("ix_ddm_policy_result_changes_policy_device", "policy_id", "device_id", "id"),)
