"""The audit log: every admin change and every device authentication failure, filterable.

An update entry (action ``*.update``) shows the object's name and each changed field as
"label: before → after" (the policy form's labels for patch policies). Entries are written that way
(``mdm.models.audit_update``: changed fields only, the name in ``detail``); older entries that stored
the whole object are diffed here, so they read the same.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import Blueprint, render_template, request
from sqlalchemy import func, select

from ..accounts import Role
from ..accounts.access import is_htmx, requires
from ..ddm.policies import FIELD_LABELS
from ..extensions import db
from ..models import AuditEvent

bp = Blueprint("audit_log", __name__, url_prefix="/audit")
PAGE_SIZE = 100


@dataclass
class FieldChange:
    field: str
    label: str
    before: object
    after: object


def is_update(event: AuditEvent) -> bool:
    return event.action.endswith(".update") and isinstance(event.before, dict) and isinstance(event.after, dict)


def changes_of(event: AuditEvent) -> list[FieldChange]:
    """The fields an update changed, in the words of the object's form."""
    labels = _labels_for(event.object_type)
    before, after = event.before or {}, event.after or {}
    keys = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    return [FieldChange(k, labels.get(k, k.replace("_", " ")), before.get(k), after.get(k)) for k in keys]


def name_of(event: AuditEvent) -> str | None:
    """The object's name: ``detail`` for entries written by ``audit_update``, else the stored object's name."""
    if event.detail:
        return event.detail
    for data in (event.after, event.before):
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            return data["name"]
    return None


def _labels_for(object_type: str | None) -> dict:
    if object_type == "patch_policy":
        return FIELD_LABELS
    return {}


def shown(value) -> str:
    """A changed value as text: JSON for lists and mappings, "—" for nothing."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


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
               "actions": actions, "args": args, "errors": errors, "is_update": is_update,
               "changes_of": changes_of, "name_of": name_of, "shown": shown}
    if is_htmx() and request.headers.get("HX-Target") == "audit-table":
        return render_template("ui/_audit_table.html", **context)
    return render_template("ui/audit.html", **context)
