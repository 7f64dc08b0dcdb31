"""The push-outage banner every signed-in page shows: APNs unreachable or refusing, or a push certificate
that cannot work (expired, placeholder). Commands stay queued meanwhile; the banner says so."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from flask import current_app

from ..push import apns as push
from ..extensions import db
from ..models import PushRequest, utcnow
from .banners import register_banner

# Failures that only say one device's token is dead are not an outage.
_DEVICE_REASONS = ("BadDeviceToken", "Unregistered", "DeviceTokenNotForTopic")
RECENT = dt.timedelta(hours=24)


@dataclass
class PushBanner:
    problem: str | None          # why no push can work at all (certificate, gateway setting)
    retrying: int                # pushes that failed and wait for their next attempt
    failed_recently: int         # pushes given up in the last 24 h
    last_reason: str | None      # the latest failure's reason (APNs' reason or the connection error)

    @property
    def shown(self) -> bool:
        return bool(self.problem or self.retrying or self.failed_recently)


def push_banner() -> PushBanner | None:
    problem = push._identity_problem(current_app)
    outage = db.and_(PushRequest.last_reason.is_not(None), PushRequest.last_reason.not_in(_DEVICE_REASONS),
                     db.or_(PushRequest.last_status_code.is_(None), PushRequest.last_status_code != 410))
    retrying = db.session.scalar(db.select(db.func.count()).select_from(PushRequest).where(
        PushRequest.status == "pending", PushRequest.attempts > 0, outage)) or 0
    failed = db.session.scalar(db.select(db.func.count()).select_from(PushRequest).where(
        PushRequest.status == "failed", PushRequest.requested_at >= utcnow() - RECENT, outage)) or 0
    last_reason = None
    if retrying or failed:
        last_reason = db.session.scalar(db.select(PushRequest.last_reason).where(
            PushRequest.status.in_(("pending", "failed")), outage).order_by(PushRequest.requested_at.desc()).limit(1))
    banner = PushBanner(problem, retrying, failed, last_reason)
    return banner if banner.shown else None


def init_push_banner(app) -> None:
    register_banner(app, "push_banner", push_banner)
