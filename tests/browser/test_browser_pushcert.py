"""The push certificate steps in real Chromium against the real TLS server: a first certificate through
the own-vendor route (upload the .p12, download the request, install Apple's answer), then a renewal
through the CSR-signing service (send the CSR, upload its e-mailed reply, download, install with the
same topic), and a certificate with another topic refused with the reason on the page.

``UPDATE_SCREENSHOTS=1`` writes docs/screenshots/push-certificate.png.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from browser_pages import shot, sign_in
from mdm.push import cert as pushcert
from mdm.pki import create_ca
from pushcert_kit import SigningService, apple_push_certificate, csr_of_request, make_vendor, pem


def download(page, button_selector: str, tmp_path: Path, name: str) -> bytes:
    with page.expect_download() as info:
        page.click(button_selector)
    path = tmp_path / name
    info.value.save_as(path)
    assert info.value.suggested_filename == "push-request.b64"
    return path.read_bytes()


@pytest.fixture
def signing_service(tmp_path, apple_chain):
    with SigningService(tmp_path / "service", make_vendor(apple_chain, "Community vendor"), apple_chain) as service:
        yield service


def test_push_certificate_steps_in_chromium(live_server_factory, signing_service, apple_chain, browser, tmp_path):
    # The shop's settings name the CSR-signing service (a local stand-in) before the server starts.
    live_server = live_server_factory(PUSH_SIGNING_SERVICE_URL=signing_service.url,
                                      PUSH_SIGNING_SERVICE_API_KEY=signing_service.api_key)
    base = live_server.url
    apple_ca, chain = create_ca("Fake Apple Application Integration"), apple_chain
    vendor = make_vendor(chain)
    (tmp_path / "vendor.p12").write_bytes(vendor.p12(b"vendor pw", chain))
    password = (Path(live_server.app.instance_path) / "initial-admin-password").read_text().split("password: ")[1].strip()

    context = browser.new_context(ignore_https_errors=True, accept_downloads=True, viewport={"width": 1360, "height": 900})
    page = context.new_page()
    sign_in(page, base, "admin", password)
    page.goto(base + "/settings")
    expect(page.locator("#push")).to_contain_text("No Apple push certificate installed")
    expect(page.locator("#push-step-1")).to_have_class("current")

    # Step 1, route A, and step 2: the vendor .p12 in, Apple's request out.
    page.set_input_files("#vendor-form input[name=vendor_p12]", str(tmp_path / "vendor.p12"))
    page.fill("#vendor-form input[name=vendor_password]", "vendor pw")
    request_b64 = download(page, "#vendor-form button", tmp_path, "vendor-request.b64")
    page.goto(base + "/settings")
    expect(page.locator("#push-step-1")).to_have_class("done")
    expect(page.locator("#push-step-3")).to_have_class("current")
    expect(page.locator("#push-step-3 a[href='https://identity.apple.com/pushcert/']")).to_be_visible()
    expect(page.locator("#push-request-link")).to_be_visible()

    # Steps 3 and 4: "Apple" answers the request; the certificate is installed.
    first = apple_push_certificate((apple_ca[0], apple_ca[1]), csr_of_request(request_b64).public_key())
    topic = pushcert.topic_of(first)
    (tmp_path / "MDM_First.pem").write_bytes(pem(first))
    page.set_input_files("#install-form input[name=certificate]", str(tmp_path / "MDM_First.pem"))
    page.click("#install-form button")
    expect(page.locator(".flash")).to_contain_text(f"Push certificate installed: topic {topic}")
    expect(page.locator("#push-status")).to_contain_text(topic)
    expect(page.locator("#push-days-left")).to_have_text(re.compile(r"36[45]"))
    expect(page.locator("#push-step-3")).to_contain_text("Renew")

    # A renewal through the CSR-signing service: send, upload the e-mailed reply, download, install.
    service = signing_service
    page.goto(base + "/settings")
    page.fill("#service-form input[name=email]", "it@shop.example")
    page.click("#service-form button")
    expect(page.locator(".flash")).to_contain_text("Request sent to")
    [mail] = service.outbox
    expect(page.locator("#push-step-2")).to_have_class("current")
    (tmp_path / mail.filename).write_bytes(mail.attachment)
    page.set_input_files("#decrypt-form input[name=reply]", str(tmp_path / mail.filename))
    renewal_request = download(page, "#decrypt-form button", tmp_path, "service-request.b64")
    page.goto(base + "/settings")
    expect(page.locator("#push-step-3")).to_have_class("current")

    # Apple's "Create a Certificate" (new topic) is refused with the reason; "Renew" (same topic) installs.
    renewal_key = csr_of_request(renewal_request).public_key()
    (tmp_path / "MDM_Other.pem").write_bytes(pem(apple_push_certificate((apple_ca[0], apple_ca[1]), renewal_key)))
    page.set_input_files("#install-form input[name=certificate]", str(tmp_path / "MDM_Other.pem"))
    page.click("#install-form button")
    expect(page.locator("#push [role=alert]")).to_contain_text("differs from the installed")
    expect(page.locator("#push-status")).to_contain_text(topic)
    (tmp_path / "MDM_Renewed.pem").write_bytes(pem(apple_push_certificate((apple_ca[0], apple_ca[1]), renewal_key, topic)))
    page.set_input_files("#install-form input[name=certificate]", str(tmp_path / "MDM_Renewed.pem"))
    page.click("#install-form button")
    expect(page.locator(".flash")).to_contain_text(f"Push certificate installed: topic {topic}")
    expect(page.locator("#push-step-1")).to_have_class("current")
    page.locator("#push").scroll_into_view_if_needed()
    shot(page, "push-certificate", tmp_path, full_page=True)
    context.close()
