"""Settings: server URL, push certificate, CA, Apple release feed with "Sync now" (and the catalog's
releases with their CVE counts from the SOFA feed), and the recomputation schedule. Changes here are Administrator-only and audited (by the services they call).

The push certificate card walks through the four steps of ``mdm.push.cert`` in order: choose a route
(own vendor .p12, or the configured CSR-signing service), get the request for Apple (downloaded, or
decrypted from the service's e-mailed reply), upload it at identity.apple.com, install the returned
certificate (a different topic is refused unless explicitly allowed). It shows topic, expiry and days left."""
from __future__ import annotations

import threading

from cryptography.hazmat.primitives import hashes
from flask import Blueprint, Response, current_app, flash, render_template, request, url_for

from ..push import cert as pushcert
from ..accounts import Role
from ..accounts.access import is_htmx, requires
from ..accounts.actor import current_actor
from ..ddm.catalog import DEFAULT_URL, catalog_status, sync_catalog
from ..ddm.sofa import releases_with_security, sofa_status
from ..pki import get_pki
from ..extensions import db
from ..models import utcnow
from ..push.cert_request import APPLE_PORTAL_URL, APPLE_ROOT_URL, APPLE_WWDR_URL
from ..push.cert import (PushCertError, create_vendor_request, generate_csr, install_certificate,
                         open_signing_service_reply, pending_request, submit_to_signing_service)
from ..scheduler import registered_jobs
from ..unit_of_work import edge
from .responses import redirect_after_change

bp = Blueprint("settings", __name__, url_prefix="/settings")

MAX_UPLOAD_BYTES = 1024 * 1024
REQUEST_DOWNLOAD_NAME = "push-request.b64"

# One catalog sync at a time per app; its progress is what the "Sync now" fragment polls.
_sync_lock = threading.Lock()


def _sync_state(app=None) -> dict:
    app = app or current_app._get_current_object()
    return app.extensions.setdefault("mdm_ui_catalog_sync", {
        "running": False, "started_at": None, "finished_at": None, "result": None, "error": None, "actor": None})


def _ca_details() -> dict:
    cert = get_pki().ca_cert
    return {"subject": cert.subject.rfc4514_string(), "not_after": cert.not_valid_after_utc.replace(tzinfo=None),
            "sha256": cert.fingerprint(hashes.SHA256()).hex(":").upper()}


def _catalog_status() -> dict | None:
    return catalog_status()


def _schedule() -> list[tuple[str, str]]:
    jobs = []
    for func, trigger, args in registered_jobs():
        every = ", ".join(f"{v} {k}" for k, v in args.items() if k in ("hours", "minutes", "days", "seconds"))
        jobs.append((f"{func.__module__}.{func.__name__}", f"{trigger} {every}".strip()))
    return jobs


def _push_status() -> dict | None:
    try:
        return pushcert.status()
    except Exception as exc:
        return {"error": str(exc)}


def _push_step(push: dict | None) -> int:
    """The step the operator is at: 1 choose a route, 2 wait for the service's reply, 3 upload at Apple
    and install the certificate it returns."""
    pending = (push or {}).get("pending")
    if not pending:
        return 1
    return 3 if pending["request_ready"] else 2


@bp.route("")
@requires(Role.ReadOnly)
def index(push_error: str | None = None, status_code: int = 200):
    push = _push_status()
    return render_template("ui/settings.html", push=push, push_warning_days=pushcert.RENEW_WARNING_DAYS,
                           push_step=_push_step(push), signing_service=pushcert.signing_service_settings(),
                           apple_portal_url=APPLE_PORTAL_URL, apple_wwdr_url=APPLE_WWDR_URL,
                           apple_root_url=APPLE_ROOT_URL, push_error=push_error, ca=_ca_details(), catalog=_catalog_status(),
                           sync=dict(_sync_state()), schedule=_schedule(), sofa=sofa_status(),
                           feed_url=current_app.config.get("CATALOG_URL") or _default_feed_url(),
                           scheduler_enabled=current_app.config.get("SCHEDULER_ENABLED")), status_code


def _default_feed_url() -> str:
    return DEFAULT_URL


@bp.route("/catalog/releases")
@requires(Role.ReadOnly)
def catalog_releases():
    """The release catalog, newest first, with each release's CVE count and actively exploited CVEs (SOFA)."""
    model = (request.args.get("model") or "").strip() or None
    return render_template("ui/catalog_releases.html", releases=releases_with_security(model=model),
                           catalog=_catalog_status(), sofa=sofa_status(), model=model or "")


@bp.route("/push/csr", methods=["POST"])
@requires(Role.Administrator)
def push_csr():
    """A new push key and its CSR, to upload to Apple (via your vendor signing) for the certificate."""
    csr = generate_csr(actor=current_actor())
    return Response(csr, mimetype="application/pkcs10",
                    headers={"Content-Disposition": "attachment; filename=mdm-push.csr"})


@bp.route("/push/vendor-request", methods=["POST"])
@requires(Role.Administrator)
def push_vendor_request():
    """Route 1: a new push key, its CSR signed with the uploaded vendor .p12; downloads Apple's request."""
    p12, error = _uploaded("vendor_p12", "your vendor certificate (.p12)")
    if error:
        return error
    chain = None
    if request.files.get("apple_chain") and request.files["apple_chain"].filename:
        chain, error = _uploaded("apple_chain", "Apple's chain (PEM)")
        if error:
            return error
    try:
        data = create_vendor_request(p12, request.form.get("vendor_password") or None, chain, actor=current_actor())
    except PushCertError as exc:
        return index(push_error=str(exc), status_code=422)
    return _request_download(data)


@bp.route("/push/submit", methods=["POST"])
@requires(Role.Administrator)
def push_submit():
    """Route 2: send a new CSR and our encryption certificate to the configured signing service."""
    try:
        sent = submit_to_signing_service(request.form.get("email") or None, actor=current_actor())
    except PushCertError as exc:
        return index(push_error=str(exc), status_code=422)
    flash(f"Request sent to {sent['url']}. Upload the file its e-mail to {sent['email']} carries (step 2).")
    return redirect_after_change(url_for("settings.index", _anchor="push"))


@bp.route("/push/decrypt", methods=["POST"])
@requires(Role.Administrator)
def push_decrypt():
    """Route 2: open the service's e-mailed reply with the pending key; downloads Apple's request."""
    data, error = _uploaded("reply", "the file attached to the signing service's e-mail")
    if error:
        return error
    try:
        request_b64 = open_signing_service_reply(data, actor=current_actor())
    except PushCertError as exc:
        return index(push_error=str(exc), status_code=422)
    return _request_download(request_b64)


@bp.route("/push/request")
@requires(Role.Administrator)
def push_request_download():
    """The request made for the pending key, again (nothing secret in it)."""
    data = pending_request()
    if data is None:
        return index(push_error="No request for Apple is waiting: start at step 1.", status_code=404)
    return _request_download(data)


def _request_download(data: bytes) -> Response:
    return Response(data, mimetype="application/octet-stream",
                    headers={"Content-Disposition": f"attachment; filename={REQUEST_DOWNLOAD_NAME}"})


def _uploaded(field: str, what: str):
    """(bytes, None) or (None, the page with the reason)."""
    upload = request.files.get(field)
    if upload is None or not upload.filename:
        return None, index(push_error=f"Choose {what} to upload.", status_code=422)
    data = upload.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        return None, index(push_error=f"That file is too large for {what}.", status_code=413)
    return data, None


@bp.route("/push/certificate", methods=["POST"])
@requires(Role.Administrator)
def push_upload():
    data, error = _uploaded("certificate", "the certificate file (PEM, DER or .p12)")
    if error:
        return error
    try:
        status = install_certificate(data, request.form.get("password") or None,
                                     allow_topic_change=request.form.get("allow_topic_change") == "yes",
                                     actor=current_actor())
    except PushCertError as exc:
        return index(push_error=str(exc), status_code=422)
    flash(f"Push certificate installed: topic {status['topic']}, valid until {status['not_after']:%Y-%m-%d} "
          f"({status['days_left']} days).")
    return redirect_after_change(url_for("settings.index", _anchor="push"))


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
            with edge("catalog-sync"):      # this thread is the edge of its unit of work
                result = sync_catalog(actor=actor).as_dict()
        except Exception as exc:  # recorded for the page; the catalog keeps its cache on failure
            error = str(exc) or type(exc).__name__
        finally:
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
