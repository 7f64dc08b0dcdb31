"""Core tables: devices and their certificates, enrollment, the command queue, pushes, audit.

Times are stored in UTC (naive datetimes that mean UTC, the same on SQLite and PostgreSQL).
"""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

from sqlalchemy import Index

from .extensions import db
from .secrets import SealedBytes


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Device(db.Model):
    __tablename__ = "devices"
    id = db.Column(db.Integer, primary_key=True)
    udid = db.Column(db.String(64), unique=True, nullable=False)
    serial_number = db.Column(db.String(64), index=True)
    product_name = db.Column(db.String(64))          # e.g. iPhone15,2
    model = db.Column(db.String(64))                 # e.g. MQ0G3
    model_name = db.Column(db.String(64))            # e.g. iPhone
    device_name = db.Column(db.String(255))
    os_version = db.Column(db.String(32))
    build_version = db.Column(db.String(32))
    software_update_device_id = db.Column(db.String(64))  # e.g. iPhone15,2 or D73AP
    is_supervised = db.Column(db.Boolean)
    # IANA zone name as the device reported it (DeviceInformation TimeZone, iOS 14+); may be missing or
    # invalid, so read it through ``mdm.ddm.targets.zone_named``. Deadlines are wall time in this zone.
    time_zone = db.Column(db.String(64))
    topic = db.Column(db.String(255))
    # authenticated -> enrolled (first TokenUpdate) -> unenrolled (CheckOut); history is kept.
    enrollment_status = db.Column(db.String(16), nullable=False, default="authenticated", index=True)
    push_token = db.Column(db.String(128))           # hex
    push_magic = db.Column(db.String(128))
    push_token_invalid = db.Column(db.Boolean, nullable=False, default=False)
    unlock_token = db.Column(SealedBytes)            # device secrets: sealed with the secrets key
    bootstrap_token = db.Column(SealedBytes)
    inventory = db.Column(db.JSON, nullable=False, default=dict)  # latest query responses
    enrolled_at = db.Column(db.DateTime)
    unenrolled_at = db.Column(db.DateTime)
    last_seen_at = db.Column(db.DateTime, index=True)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)

    # A device polls often; "last seen" to the minute is all the UI needs, and skipping the write
    # keeps an idle poll from appending to the database at all.
    LAST_SEEN_RESOLUTION_SECONDS = 60

    def mark_seen(self, now: datetime | None = None) -> None:
        now = now or utcnow()
        if self.seen_is_due(self.last_seen_at, now):
            self.last_seen_at = now

    @classmethod
    def seen_is_due(cls, last_seen_at: datetime | None, now: datetime) -> bool:
        """Whether ``mark_seen`` at ``now`` would write ``last_seen_at`` (at most once a minute)."""
        return last_seen_at is None or (now - last_seen_at).total_seconds() >= cls.LAST_SEEN_RESOLUTION_SECONDS

    @property
    def platform(self) -> str:
        """iOS, iPadOS, macOS, tvOS, watchOS or visionOS, from the model identifier."""
        name = (self.product_name or self.model_name or "").lower()
        if name.startswith("iphone") or name.startswith("ipod"):
            return "iOS"
        if name.startswith("ipad"):
            return "iPadOS"
        if name.startswith("appletv"):
            return "tvOS"
        if name.startswith("watch"):
            return "watchOS"
        if name.startswith("realitydevice"):
            return "visionOS"
        if name.startswith("mac") or name.startswith("imac") or name.startswith("vmware"):
            return "macOS"
        return "unknown"

    @property
    def runs_ios(self) -> bool:
        """iPhone, iPod and iPad all take iOS declarations (iPadOS is iOS to the DDM schema)."""
        return self.platform in ("iOS", "iPadOS")

    def __repr__(self):
        return f"<Device {self.udid}>"


class DeviceCertificate(db.Model):
    """Binds an identity certificate (by SHA-256 fingerprint) to one device."""
    __tablename__ = "device_certificates"
    id = db.Column(db.Integer, primary_key=True)
    device_id = db.Column(db.Integer, db.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False, index=True)
    sha256 = db.Column(db.String(64), unique=True, nullable=False)
    serial = db.Column(db.String(64))
    subject = db.Column(db.String(255))
    not_after = db.Column(db.DateTime)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    # Set when a newer certificate took over (Authenticate of a re-enrollment, or a bound renewal): the
    # certificate is refused from then on, and can never be bound again.
    retired_at = db.Column(db.DateTime)


class IssuedCertificate(db.Model):
    """Every certificate our SCEP CA issued, so a renewal can be tied back to its device."""
    __tablename__ = "issued_certificates"
    id = db.Column(db.Integer, primary_key=True)
    serial = db.Column(db.String(64), unique=True, nullable=False)
    sha256 = db.Column(db.String(64), unique=True, nullable=False)
    subject = db.Column(db.String(255))
    enrollment_token_id = db.Column(db.Integer, db.ForeignKey("enrollment_tokens.id", ondelete="SET NULL"))
    # Set when issued for a SCEP RenewalReq: the SHA-256 of the certificate that signed the renewal.
    renewed_from_sha256 = db.Column(db.String(64), index=True)
    not_after = db.Column(db.DateTime)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)


class EnrollmentToken(db.Model):
    __tablename__ = "enrollment_tokens"
    id = db.Column(db.Integer, primary_key=True)
    token = db.Column(db.String(64), unique=True, nullable=False)
    description = db.Column(db.String(255), nullable=False, default="")
    expires_at = db.Column(db.DateTime)
    max_uses = db.Column(db.Integer)                  # None = unlimited
    uses = db.Column(db.Integer, nullable=False, default=0)
    revoked_at = db.Column(db.DateTime)
    created_by = db.Column(db.String(255))
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)


class ScepChallenge(db.Model):
    """A one-time SCEP challenge handed out in one profile download. Stored hashed."""
    __tablename__ = "scep_challenges"
    id = db.Column(db.Integer, primary_key=True)
    challenge_sha256 = db.Column(db.String(64), unique=True, nullable=False)
    enrollment_token_id = db.Column(db.Integer, db.ForeignKey("enrollment_tokens.id", ondelete="CASCADE"))
    expires_at = db.Column(db.DateTime, nullable=False)
    used_at = db.Column(db.DateTime)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)


class Command(db.Model):
    """One MDM command for one device. Delivered at least once: it stays queued until a final status."""
    __tablename__ = "commands"
    id = db.Column(db.Integer, primary_key=True)
    uuid = db.Column(db.String(64), unique=True, nullable=False, default=lambda: str(uuid.uuid4()).upper())
    device_id = db.Column(db.Integer, db.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False)
    request_type = db.Column(db.String(64), nullable=False)
    payload = db.Column(db.LargeBinary, nullable=False)   # the full command plist (XML)
    # queued -> sent -> Acknowledged | Error | CommandFormatError ; NotNow puts it back to queued
    # queued | sent -> cancelled when a new enrollment (Authenticate) clears the queue (mdm/protocol/queue.py)
    status = db.Column(db.String(32), nullable=False, default="queued")
    not_now_count = db.Column(db.Integer, nullable=False, default=0)
    response = db.Column(db.LargeBinary)                  # full response plist as received
    error_chain = db.Column(db.JSON)
    queued_by = db.Column(db.String(255))
    queued_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    sent_at = db.Column(db.DateTime)
    last_not_now_at = db.Column(db.DateTime)
    completed_at = db.Column(db.DateTime)

    device = db.relationship("Device", backref=db.backref("commands", lazy="dynamic", passive_deletes=True))

    FINAL_STATUSES = ("Acknowledged", "Error", "CommandFormatError")

    __table_args__ = (Index("ix_commands_device_status", "device_id", "status", "id"),)


class PushRequest(db.Model):
    """A pending or finished APNs push for one device, processed off the request path."""
    __tablename__ = "push_requests"
    # "This device's pending row" is the lookup of every push request, and "the next due pending rows, in
    # order" the sender's. With single-column indexes on device_id and status, SQLite answered both from
    # the status index: it scanned, or sorted, every pending row each time, which is quadratic when a
    # fleet-wide change asks for 100,000 pushes. These two answer each lookup directly.
    __table_args__ = (Index("ix_push_requests_device_status", "device_id", "status"),
                      Index("ix_push_requests_status_due", "status", "next_attempt_at"))
    id = db.Column(db.Integer, primary_key=True)
    device_id = db.Column(db.Integer, db.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False)
    status = db.Column(db.String(16), nullable=False, default="pending")  # pending|sent|failed|skipped
    attempts = db.Column(db.Integer, nullable=False, default=0)
    next_attempt_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    # Latest request folded into this row, and when a sender took it: a request that arrives while the
    # push is in flight (requested_at > claimed_at) sends it again, so no queued command waits unseen.
    requested_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    claimed_at = db.Column(db.DateTime)
    apns_id = db.Column(db.String(64))
    last_status_code = db.Column(db.Integer)
    last_reason = db.Column(db.String(255))
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    sent_at = db.Column(db.DateTime)


class AuditEvent(db.Model):
    """Every admin change and every device authentication failure."""
    __tablename__ = "audit_events"
    id = db.Column(db.Integer, primary_key=True)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow, index=True)
    actor = db.Column(db.String(255), nullable=False)      # admin username, "api:<token name>", "device", "system"
    source = db.Column(db.String(255))                     # remote address
    action = db.Column(db.String(64), nullable=False, index=True)
    object_type = db.Column(db.String(64))
    object_id = db.Column(db.String(255))
    before = db.Column(db.JSON)
    after = db.Column(db.JSON)
    detail = db.Column(db.Text)


def audit(action: str, *, actor: str = "system", source: str | None = None, object_type: str | None = None,
          object_id=None, before=None, after=None, detail: str | None = None) -> AuditEvent:
    """Record an audit event in the current transaction (the caller commits)."""
    event = AuditEvent(actor=actor, source=source, action=action, object_type=object_type,
                       object_id=None if object_id is None else str(object_id),
                       before=before, after=after, detail=detail)
    db.session.add(event)
    return event


def audit_update(action: str, *, name: str | None, before: dict, after: dict, **where) -> AuditEvent | None:
    """The one format of an update's audit entry: only the fields that changed (``before`` and ``after``
    hold those fields alone) and the object's name in ``detail``. Nothing is recorded when nothing changed.
    ``where`` takes ``audit``'s actor, source, object_type and object_id."""
    changed = sorted(key for key in set(before) | set(after) if before.get(key) != after.get(key))
    if not changed:
        return None
    return audit(action, before={k: before.get(k) for k in changed}, after={k: after.get(k) for k in changed},
                 detail=name, **where)


group_members = db.Table(
    "device_group_members",
    db.Column("group_id", db.Integer, db.ForeignKey("device_groups.id", ondelete="CASCADE"), primary_key=True),
    db.Column("device_id", db.Integer, db.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True, index=True),
)


class DeviceGroup(db.Model):
    """A static group of devices of any OS. Patch policies bind to groups and apply to the iOS members."""
    __tablename__ = "device_groups"
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(255), unique=True, nullable=False)
    description = db.Column(db.String(1024), nullable=False, default="")
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    devices = db.relationship("Device", secondary=group_members, lazy="dynamic",
                              backref=db.backref("groups", lazy="select"))


class SchedulerJobRun(db.Model):
    """When each scheduled job last ran, so a restarted scheduler catches up once instead of waiting a
    whole interval (or firing once per missed interval)."""
    __tablename__ = "scheduler_job_runs"
    job_id = db.Column(db.String(255), primary_key=True)     # "mdm.push.apns.process_due_pushes"
    last_run_at = db.Column(db.DateTime, nullable=False)     # UTC, when the last run started
