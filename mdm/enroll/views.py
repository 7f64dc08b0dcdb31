"""Enrollment and SCEP HTTP endpoints. Thin: parse the request, call the service, serialise the answer.

Device-facing: never 401 or 500 for bad input; a refusal is 400/403/404/413 with a plain-text reason.
Failed token lookups and refused SCEP requests are throttled per address (mdm/accounts/throttle.py): 429.
"""
from __future__ import annotations

import base64
import binascii
import logging

from flask import Blueprint, Response, current_app, request

from ..extensions import db
from ..models import audit
from ..accounts.throttle import client_address, enrollment_throttle
from . import scep
from ..pki import get_pki
from .profile import ProfileUnavailable, download_enrollment_profile
from .tokens import TokenError

log = logging.getLogger(__name__)

bp = Blueprint("enroll", __name__)

PROFILE_MIMETYPE = "application/x-apple-aspen-config"
CA_MIMETYPE = "application/x-x509-ca-cert"
PKI_MESSAGE_MIMETYPE = "application/x-pki-message"


def _refuse(status: int, reason: str) -> Response:
    # Log the route pattern, not the path: /enroll/<token> must not put the token in the log.
    route = request.url_rule.rule if request.url_rule is not None else "?"
    log.warning("%s %s -> %s: %s", request.method, route, status, reason)
    return Response(reason + "\n", status=status, mimetype="text/plain")


def _throttled() -> Response | None:
    """429 when this address has failed too often within the last minute."""
    wait = enrollment_throttle().retry_after(client_address(request, current_app.config))
    if wait is None:
        return None
    response = _refuse(429, f"too many failed enrollment attempts; retry in {wait} s")
    response.headers["Retry-After"] = str(wait)
    return response


def _failed() -> None:
    """Count a failed token lookup or refused SCEP request; audit when the address becomes throttled."""
    address = client_address(request, current_app.config)
    throttle = enrollment_throttle()
    if throttle.record_failure(address):
        route = request.url_rule.rule if request.url_rule is not None else "?"
        log.warning("throttling %s: %d failed enrollment attempts within a minute", address, throttle.limit)
        db.session.rollback()
        audit("enroll.throttled", actor="device", source=address,
              detail=f"{throttle.limit} failed attempts within a minute; last on {route}")
        db.session.commit()


@bp.get("/enroll/<token>")
def enrollment_profile(token: str):
    """The enrollment profile, signed (or plain XML with ?unsigned=1 for tools that cannot read CMS)."""
    throttled = _throttled()
    if throttled is not None:
        return throttled
    unsigned = request.args.get("unsigned", "").lower() in ("1", "true", "yes")
    try:
        data = download_enrollment_profile(token, signed=not unsigned, source=request.remote_addr)
    except TokenError as exc:
        _failed()
        return _refuse(exc.status_code, exc.reason)
    except ProfileUnavailable as exc:
        return _refuse(exc.status_code, exc.reason)
    response = Response(data, mimetype=PROFILE_MIMETYPE)
    response.headers["Content-Disposition"] = 'attachment; filename="enroll.mobileconfig"'
    response.headers["Cache-Control"] = "no-store"   # every download carries its own one-time challenge
    return response


@bp.get("/ca.pem")
def ca_certificate():
    """Our CA in PEM, for admins and browsers that need to trust the server."""
    return Response(get_pki().ca_pem, mimetype=CA_MIMETYPE,
                    headers={"Content-Disposition": 'inline; filename="ca.pem"'})


@bp.route("/scep", methods=["GET", "POST"])
def scep_endpoint():
    operation = request.args.get("operation", "")
    if operation == "GetCACaps":
        return Response(scep.ca_caps(), mimetype="text/plain")
    if operation == "GetCACert":
        return Response(scep.ca_cert_der(), mimetype=CA_MIMETYPE)
    if operation != "PKIOperation":
        return _refuse(400, f"unsupported SCEP operation {operation[:40]!r}")
    throttled = _throttled()
    if throttled is not None:
        return throttled
    response, refused = _pki_operation()
    if refused:
        _failed()
    return response


def _pki_operation() -> tuple[Response, bool]:
    """The answer, and whether the request was refused (an HTTP refusal or a CertRep FAILURE)."""
    if request.method == "POST":
        if (request.content_length or 0) > scep.MAX_MESSAGE_BYTES:
            return _refuse(413, f"PKIOperation body over {scep.MAX_MESSAGE_BYTES} bytes"), True
        message = request.stream.read(scep.MAX_MESSAGE_BYTES + 1)
        if len(message) > scep.MAX_MESSAGE_BYTES:
            return _refuse(413, f"PKIOperation body over {scep.MAX_MESSAGE_BYTES} bytes"), True
    else:
        encoded = request.args.get("message", "")
        if len(encoded) > scep.MAX_MESSAGE_BYTES * 4 // 3 + 4:
            return _refuse(413, f"PKIOperation message over {scep.MAX_MESSAGE_BYTES} bytes"), True
        try:
            message = _decode_base64(encoded)
        except (binascii.Error, ValueError):
            return _refuse(400, "the message parameter is not base64"), True
    try:
        result = scep.handle_pki_operation(message, source=request.remote_addr)
    except scep.ScepRequestError as exc:
        return _refuse(400, str(exc)), True
    return Response(result.response, mimetype=PKI_MESSAGE_MIMETYPE), result.status != scep.PKIStatus.SUCCESS


def _decode_base64(value: str) -> bytes:
    # A '+' left unescaped in the query string arrives as a space; some clients use the URL-safe alphabet.
    value = value.strip().replace(" ", "+").replace("\n", "").replace("\r", "")
    if "-" in value or "_" in value:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    return base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
