"""The push certificate in Settings, through the Flask test client: the four steps in order for both
routes (own vendor .p12; CSR-signing service with its e-mailed reply), roles and CSRF on every
form, the topic guard on install, and the dashboard's renewal warning from 30 days before expiry."""
from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from mdm.push import cert as pushcert
from mdm.accounts import Role
from mdm.pki import create_ca, new_key
from mdm.extensions import db
from mdm.models import AuditEvent
from mdm.push.cert_request import parse_push_request
from ui_support import signed_in
from pushcert_kit import SigningService, apple_push_certificate, csr_of_request, make_vendor, pem

FORMS = ["/settings/push/vendor-request", "/settings/push/submit", "/settings/push/decrypt",
         "/settings/push/certificate", "/settings/push/csr"]


@pytest.fixture(scope="module")
def apple_ca():
    return create_ca("Fake Apple Application Integration")


def upload(data: bytes, name: str):
    return (BytesIO(data), name)


def post_files(browser, path, fields):
    return browser.post(path, fields, content_type="multipart/form-data")


def audit_actions(app, actor):
    with app.app_context():
        return [e.action for e in db.session.scalars(db.select(AuditEvent).where(
            AuditEvent.actor == actor, AuditEvent.action.like("push_certificate.%")).order_by(AuditEvent.id))]


def install_for(browser, apple_ca, request_b64: bytes, topic=None, **form):
    cert = apple_push_certificate(apple_ca, csr_of_request(request_b64).public_key(), topic)
    return cert, post_files(browser, "/settings/push/certificate",
                            {"certificate": upload(pem(cert), "MDM_Test_Certificate.pem"), **form})


def test_settings_walks_the_steps_in_order_and_only_administrators_get_the_forms(app):
    admin = signed_in(app, Role.Administrator, "boss")
    page = admin.get("/settings").text
    steps = [page.index(f'id="push-step-{n}"') for n in (1, 2, 3, 4)]
    assert steps == sorted(steps)
    assert '<li class="current" id="push-step-1">' in page
    assert "identity.apple.com" in page and 'id="vendor-form"' in page
    assert "No signing service configured" in page and "PUSH_SIGNING_SERVICE_URL" in page
    with app.app_context():
        topic, days_left = pushcert.current_topic(), pushcert.status()["days_left"]
    assert topic in page and f'<span id="push-days-left">{days_left}</span> days left' in page

    reader = signed_in(app, Role.ReadOnly, "reader")
    page = reader.get("/settings").text
    assert topic in page and "days left" in page
    assert 'id="push-steps"' not in page and 'id="vendor-form"' not in page and 'id="install-form"' not in page


def test_push_forms_refuse_other_roles_and_posts_without_the_csrf_token(app):
    certs = Path(app.config["CERTS_DIR"])
    manager = signed_in(app, Role.Manager, "worker")
    for path in FORMS:
        assert manager.post(path, {}).status_code == 403, path
    assert manager.get("/settings/push/request").status_code == 403
    admin = signed_in(app, Role.Administrator, "boss")
    for path in FORMS:
        assert admin.post(path, {}, csrf=False).status_code == 400, path
    assert not (certs / "push.key.pending").exists()
    assert audit_actions(app, "worker") == [] and audit_actions(app, "boss") == []
    assert admin.get("/settings/push/request").status_code == 404   # nothing to download yet


def test_own_vendor_route_in_settings(app, apple_ca, apple_chain):
    admin = signed_in(app, Role.Administrator, "boss")
    admin.get("/settings")
    vendor = make_vendor(apple_chain)
    p12 = vendor.p12(b"vendor pw", None)                            # without Apple's chain inside

    missing = post_files(admin, "/settings/push/vendor-request", {"vendor_p12": upload(p12, "vendor.p12"),
                                                                   "vendor_password": "vendor pw"})
    assert missing.status_code == 422 and 'role="alert"' in missing.text and "AppleWWDRCAG3.cer" in missing.text
    wrong = post_files(admin, "/settings/push/vendor-request", {"vendor_p12": upload(p12, "vendor.p12"),
                                                                 "vendor_password": "nope",
                                                                 "apple_chain": upload(apple_chain.pem(), "apple.pem")})
    assert wrong.status_code == 422 and "wrong password" in wrong.text
    assert post_files(admin, "/settings/push/vendor-request", {}).status_code == 422

    made = post_files(admin, "/settings/push/vendor-request", {"vendor_p12": upload(p12, "vendor.p12"),
                                                                "vendor_password": "vendor pw",
                                                                "apple_chain": upload(apple_chain.pem(), "apple.pem")})
    assert made.status_code == 200 and "attachment; filename=push-request.b64" in made.headers["Content-Disposition"]
    request = parse_push_request(made.data)                          # the signature verifies over the CSR
    assert request.chain == (vendor.cert, apple_chain.wwdr, apple_chain.root)
    page = admin.get("/settings").text
    assert '<li class="current" id="push-step-3">' in page and '<li class="done" id="push-step-1">' in page
    assert "signed with your vendor certificate" in page
    assert admin.get("/settings/push/request").data == made.data.strip() + b"\n"

    cert, installed = install_for(admin, apple_ca, made.data)
    assert installed.status_code == 303
    page = admin.get("/settings").text
    assert pushcert.topic_of(cert) in page and "Apple push certificate" in page and "Push certificate installed" in page
    assert '<li class="current" id="push-step-1">' in page           # back to the start for the next renewal
    assert audit_actions(app, "boss") == ["push_certificate.request", "push_certificate.install"]


def test_signing_service_route_in_settings(app, apple_ca, apple_chain, tmp_path):
    admin = signed_in(app, Role.Administrator, "boss")
    with SigningService(tmp_path / "service", make_vendor(apple_chain, "Community vendor"), apple_chain) as service:
        app.config.update(PUSH_SIGNING_SERVICE_URL=service.url, PUSH_SIGNING_SERVICE_API_KEY=service.api_key)
        page = admin.get("/settings").text
        assert service.url in page and 'id="service-form"' in page and service.api_key not in page
        refused = admin.post("/settings/push/submit", {"email": "stranger@example.org"})
        assert refused.status_code == 422 and "Have you registered" in refused.text
        sent = admin.post("/settings/push/submit", {"email": "it@shop.example"})
        assert sent.status_code == 303
        [mail] = service.outbox
    page = admin.get("/settings").text
    assert "Request sent to" in page and '<li class="current" id="push-step-2">' in page
    assert 'id="decrypt-form"' in page and "it@shop.example" in page

    bad = post_files(admin, "/settings/push/decrypt", {"reply": upload(b"hello", "mail.txt")})
    assert bad.status_code == 422 and 'role="alert"' in bad.text
    opened = post_files(admin, "/settings/push/decrypt", {"reply": upload(mail.attachment, mail.filename)})
    assert opened.status_code == 200 and "push-request.b64" in opened.headers["Content-Disposition"]
    parse_push_request(opened.data)
    assert '<li class="current" id="push-step-3">' in admin.get("/settings").text

    cert, installed = install_for(admin, apple_ca, opened.data)
    assert installed.status_code == 303
    with app.app_context():
        assert pushcert.current_topic() == pushcert.topic_of(cert)
    assert audit_actions(app, "boss") == ["push_certificate.request", "push_certificate.request_decrypted",
                                          "push_certificate.install"]


def install_p12(browser, apple_ca, topic=None, days=365, **form):
    key = new_key()
    cert = apple_push_certificate(apple_ca, key.public_key(), topic, days=days)
    p12 = pkcs12.serialize_key_and_certificates(b"push", key, cert, None, serialization.BestAvailableEncryption(b"pw"))
    return cert, post_files(browser, "/settings/push/certificate",
                            {"certificate": upload(p12, "push.p12"), "password": "pw", **form})


def test_install_with_another_topic_is_refused_unless_explicitly_allowed(app, apple_ca):
    admin = signed_in(app, Role.Administrator, "boss")
    admin.get("/settings")
    first, response = install_p12(admin, apple_ca)
    assert response.status_code == 303
    _, refused = install_p12(admin, apple_ca)
    assert refused.status_code == 422 and "differs from the installed" in refused.text and "Renew" in refused.text
    with app.app_context():
        assert pushcert.current_topic() == pushcert.topic_of(first)
    renewed, response = install_p12(admin, apple_ca, topic=pushcert.topic_of(first))
    assert response.status_code == 303
    moved, response = install_p12(admin, apple_ca, allow_topic_change="yes")
    assert response.status_code == 303
    with app.app_context():
        assert pushcert.current_topic() == pushcert.topic_of(moved) != pushcert.topic_of(first)
        install = db.session.scalars(db.select(AuditEvent).where(AuditEvent.action == "push_certificate.install")
                                     .order_by(AuditEvent.id.desc())).first()
        assert install.before["topic"] == pushcert.topic_of(first) and install.after["topic"] == pushcert.topic_of(moved)


def test_dashboard_warns_from_30_days_before_expiry(app, apple_ca):
    admin = signed_in(app, Role.Administrator, "boss")
    admin.get("/settings")
    first, _ = install_p12(admin, apple_ca, days=31)
    assert 'id="push-expiry-warning"' not in admin.get("/").text
    assert 'id="push-renew"' not in admin.get("/settings").text

    install_p12(admin, apple_ca, topic=pushcert.topic_of(first), days=30)
    dashboard = admin.get("/").text
    assert 'id="push-expiry-warning"' in dashboard and "expires in 29 days" in dashboard
    assert pushcert.topic_of(first) in dashboard and "/settings#push" in dashboard
    assert 'id="push-renew"' in admin.get("/settings").text
    reader = signed_in(app, Role.ReadOnly, "reader")
    assert 'id="push-expiry-warning"' in reader.get("/").text
