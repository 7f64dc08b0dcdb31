"""Settings: server URL, push certificate (CSR, upload, expiry), CA, Apple release feed with "Sync
now", and the recomputation schedule. Changes here are Administrator-only."""
from __future__ import annotations

import threading

from flask import Blueprint, Response, current_app, flash, render_template, request, url_for
from cryptography.hazmat.primitives import hashes

from ..accounts import Role
from ..models import utcnow
from . import current_actor
from .access import is_htmx, redirect_after_change, requires
from .rooms import service

bp = Blueprint("settings", __name__, url_prefix="/settings")

PUSH_WARNING_DAYS = 30

# One catalog sync at a time per app; its progress is what the "Sync now" fragment polls.
_sync_lock = threading.Lock()


def _sync_state(app=None) -> dict:
    app = app or current_app._get_current_object()
    return app.extensions.setdefault("mdm_ui_catalog_sync", {
        "running": False, "started_at": None, "finished_at": None, "result": None, "error": None, "actor": None})


def _ca_details() -> dict:
    from ..enroll.pki import get_pki
    cert = get_pki().ca_cert
    return {"subject": cert.subject.rfc4514_string(), "not_after": cert.not_valid_after_utc.replace(tzinfo=None),
            "sha256": cert.fingerprint(hashes.SHA256()).hex(":").upper()}


def _catalog_status() -> dict | None:
    status = service("mdm.ddm.catalog", "catalog_status")
    return status() if status else None


def _schedule() -> list[tuple[str, str]]:
    from .. import scheduler
    jobs = []
    for func, trigger, args in getattr(scheduler, "_JOBS", []):
        every = ", ".join(f"{v} {k}" for k, v in args.items() if k in ("hours", "minutes", "days", "seconds"))
        jobs.append((f"{func.__module__}.{func.__name__}", f"{trigger} {every}".strip()))
    return jobs


def _push_status() -> dict | None:
    status = service("mdm.pushcert", "status")
    if status is None:
        return None
    try:
        return status()
    except Exception as exc:
        return {"error": str(exc)}


@bp.route("")
@requires(Role.ReadOnly)
def index(push_error: str | None = None, status_code: int = 200):
    return render_template("ui/settings.html", push=_push_status(), push_warning_days=PUSH_WARNING_DAYS,
                           push_error=push_error, ca=_ca_details(), catalog=_catalog_status(),
                           sync=dict(_sync_state()), schedule=_schedule(),
                           feed_url=current_app.config.get("CATALOG_URL") or _default_feed_url(),
                           scheduler_enabled=current_app.config.get("SCHEDULER_ENABLED")), status_code


def _default_feed_url() -> str:
    try:
        from ..ddm.catalog import DEFAULT_URL
        return DEFAULT_URL
    except ImportError:
        return "https://gdmf.apple.com/v2/pmv"


@bp.route("/push/csr", methods=["POST"])
@requires(Role.Administrator)
def push_csr():
    """A new push key and its CSR, to upload to Apple (via your vendor signing) for the certificate."""
    from ..pushcert import generate_csr
    csr = generate_csr(actor=current_actor())
    return Response(csr, mimetype="application/pkcs10",
                    headers={"Content-Disposition": "attachment; filename=mdm-push.csr"})


@bp.route("/push/certificate", methods=["POST"])
@requires(Role.Administrator)
def push_upload():
    from ..pushcert import PushCertError, install_certificate
    upload = request.files.get("certificate")
    if upload is None or not upload.filename:
        return index(push_error="Choose the certificate file (PEM, DER or .p12) to upload.", status_code=422)
    data = upload.read(1024 * 1024 + 1)
    if len(data) > 1024 * 1024:
        return index(push_error="That file is too large for a certificate.", status_code=413)
    try:
        status = install_certificate(data, request.form.get("password") or None,
                                     allow_topic_change=request.form.get("allow_topic_change") == "yes",
                                     actor=current_actor())
    except PushCertError as exc:
        return index(push_error=str(exc), status_code=422)
    flash(f"Push certificate installed: topic {status['topic']}, valid until {status['not_after']:%Y-%m-%d}.")
    return redirect_after_change(url_for("settings.index"))


@bp.route("/catalog/sync", methods=["POST"])
@requires(Role.Administrator)
def catalog_sync():
    """Start a catalog refresh in the background; the page polls its progress."""
    app = current_app._get_current_object()
    actor = current_actor()
    with _sync_lock:
        state = _sync_state(app)
        if not state["running"]:
            state.update(running=True, started_at=utcnow(), finished_at=None, result=None, error=None, actor=actor)
            threading.Thread(target=_run_sync, args=(app, actor), daemon=True, name="catalog-sync").start()
    return _sync_fragment()


def _run_sync(app, actor: str) -> None:
    with app.app_context():
        result, error = None, None
        try:
            from ..ddm.catalog import sync_catalog
            result = sync_catalog(actor=actor).as_dict()
        except Exception as exc:  # recorded for the page; the catalog keeps its cache on failure
            error = str(exc) or type(exc).__name__
        finally:
            from ..extensions import db
            db.session.remove()
        with _sync_lock:
            _sync_state(app).update(running=False, finished_at=utcnow(), result=result, error=error)


@bp.route("/catalog/sync")
@requires(Role.ReadOnly)
def catalog_sync_status():
    return _sync_fragment()


def _sync_fragment():
    html = render_template("ui/_sync_status.html", sync=dict(_sync_state()), catalog=_catalog_status())
    return html if is_htmx() else redirect_after_change(url_for("settings.index"))
