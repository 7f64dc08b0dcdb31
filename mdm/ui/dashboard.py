"""Dashboard: fleet figures, patch compliance per policy with a chart, deadlines, push certificate (with a
warning from ``pushcert.RENEW_WARNING_DAYS`` days before it expires), and the devices left without a patch
target by a stale catalog or an unknown model."""
from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, render_template
from sqlalchemy import func, or_, select

from ..push import cert as pushcert
from ..accounts import Role
from ..accounts.access import requires
from ..ddm.catalog import devices_without_target
from ..ddm.policies import list_policies
from ..extensions import db
from ..models import Device, utcnow
from .charts import compliance_line
from .policy_stats import compliance_by_policy, compliance_history, scope_by_policy, upcoming_deadline_count, \
    upcoming_deadlines

bp = Blueprint("dashboard", __name__)


def fleet_counts() -> dict:
    now = utcnow()
    enrolled = Device.enrollment_status == "enrolled"

    def count(*where):
        return db.session.execute(select(func.count(Device.id)).where(*where)).scalar()

    return {
        "enrolled": count(enrolled),
        "supervised": count(enrolled, Device.is_supervised.is_(True)),
        "unseen_7": count(enrolled, or_(Device.last_seen_at < now - timedelta(days=7), Device.last_seen_at.is_(None))),
        "unseen_30": count(enrolled, or_(Device.last_seen_at < now - timedelta(days=30), Device.last_seen_at.is_(None))),
    }


def untargeted_counts() -> dict[str, int]:
    """{"catalog": n, "model_unknown": m}: devices a policy reaches that have no target because every
    release for their model expired (stale catalog) or because the catalog does not know their model."""
    return devices_without_target()


def push_certificate_status() -> dict | None:
    try:
        return pushcert.status()
    except Exception as exc:  # a broken push identity must not take the dashboard down
        return {"error": str(exc)}


@bp.route("/")
@requires(Role.ReadOnly)
def index():
    policies = list_policies()
    compliance = compliance_by_policy()
    charts = {p.id: compliance_line(compliance_history(p.id), title=f"{p.name}: percent compliant per day")
              for p in policies}
    below = sum(c.below_target for c in compliance.values())
    overdue = sum(c.overdue for c in compliance.values())
    upcoming = upcoming_deadlines()
    names = dict(db.session.execute(select(Device.id, Device.device_name)
                                    .where(Device.id.in_([r.device_id for r in upcoming]))).all()) if upcoming else {}
    return render_template("ui/dashboard.html", fleet=fleet_counts(), policies=policies, compliance=compliance,
                           scope=scope_by_policy(), charts=charts, below=below, overdue=overdue,
                           upcoming=upcoming, names=names, upcoming_count=upcoming_deadline_count(),
                           push=push_certificate_status(), untargeted=untargeted_counts())
