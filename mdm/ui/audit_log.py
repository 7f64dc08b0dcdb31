"""The audit log: every admin change and every device authentication failure, filterable."""
from __future__ import annotations

from datetime import datetime, timedelta

from flask import Blueprint, render_template, request
from sqlalchemy import func, select

from ..accounts import Role
from ..extensions import db
from ..models import AuditEvent
from .access import is_htmx, requires

bp = Blueprint("audit_log", __name__, url_prefix="/audit")
PAGE_SIZE = 100


def _date(raw: str | None, errors: list, name: str) -> datetime | None:
    if not raw:
        return None
    try:
        return datetime.strptime(raw, "%Y-%m-%d")
    except ValueError:
        errors.append(f"{name}: a date as YYYY-MM-DD")
        return None


@bp.route("")
@requires(Role.ReadOnly)
def index():
    args, errors = request.args, []
    stmt = select(AuditEvent)
    if args.get("actor"):
        stmt = stmt.where(AuditEvent.actor == args["actor"].strip())
    if args.get("action"):
        action = args["action"].strip()
        # "admin." lists every admin action; a full name matches exactly (index-friendly prefix match).
        stmt = stmt.where(AuditEvent.action.like(action.replace("%", "") + "%") if action.endswith(".")
                          else AuditEvent.action == action)
    if args.get("object_type"):
        stmt = stmt.where(AuditEvent.object_type == args["object_type"].strip())
    if args.get("object_id"):
        stmt = stmt.where(AuditEvent.object_id == args["object_id"].strip())
    if args.get("source"):
        stmt = stmt.where(AuditEvent.source == args["source"].strip())
    since, until = _date(args.get("since"), errors, "since"), _date(args.get("until"), errors, "until")
    if since:
        stmt = stmt.where(AuditEvent.created_at >= since)
    if until:
        stmt = stmt.where(AuditEvent.created_at < until + timedelta(days=1))
    page = max(1, args.get("page", 1, type=int) or 1)
    total = db.session.execute(select(func.count()).select_from(stmt.subquery())).scalar()
    events = db.session.execute(stmt.order_by(AuditEvent.id.desc()).limit(PAGE_SIZE)
                                .offset((page - 1) * PAGE_SIZE)).scalars().all()
    actions = [a for (a,) in db.session.execute(select(AuditEvent.action).distinct().order_by(AuditEvent.action))]
    context = {"events": events, "total": total, "page": page, "pages": max(1, -(-total // PAGE_SIZE)),
               "actions": actions, "args": args, "errors": errors}
    if is_htmx() and request.headers.get("HX-Target") == "audit-table":
        return render_template("ui/_audit_table.html", **context)
    return render_template("ui/audit.html", **context)
