"""Structured logs: one JSON object per line with request context, and secrets redacted even when
careless code logs whole requests and responses."""
from __future__ import annotations

import base64
import io
import json
import logging
import os
import plistlib
from pathlib import Path

import httpx
import pytest

from mdm.ops import logs
from mdm.pki import read_private_key_pem
from mdm.extensions import db
from mdm.simulator import SimulatedDevice
from mdm.simulator.device import verify_signed_profile


@pytest.fixture
def logged_server(live_server_factory):
    """The production server with JSON logs, serving the app with careless logging hooks
    (tests/support/serving_apps.py: every request and response logged in full)."""
    return live_server_factory(serve="careless", LOG_FORMAT="json")


def test_secrets_never_reach_the_log_even_when_code_logs_them(logged_server):
    app = logged_server.app
    from mdm.enroll.tokens import create_token, enrollment_url
    with app.app_context():
        token = create_token(description="log", expires_in_days=1, max_uses=5, created_by="test")
        url = enrollment_url(token)
        key_pem = read_private_key_pem(Path(app.config["CERTS_DIR"]) / "tls.key").decode()
    secret_token = url.rsplit("/", 1)[1]

    # A profile download: its SCEP challenge goes out in the (logged) response.
    profile_bytes = httpx.get(url, verify=logged_server.ca_file).content
    profile = plistlib.loads(verify_signed_profile(profile_bytes, logged_server.ca_file))
    challenge = next(p for p in profile["PayloadContent"]
                     if p["PayloadType"] == "com.apple.security.scep")["PayloadContent"]["Challenge"]

    device = SimulatedDevice(logged_server.url, logged_server.ca_file)
    signatures = []
    sign = device.sign
    device.sign = lambda body: signatures.append(sign(body)) or signatures[-1]
    device.enroll(url)
    device.connect()
    # Careless code in this process too (a CLI command, a job), logging through the same set-up.
    stream = io.StringIO()
    logs.configure({"LOG_FORMAT": "json", "LOG_LEVEL": "INFO"}, stream=stream)
    logging.getLogger("careless").error("loaded key %s", key_pem)
    try:
        raise RuntimeError(f"failed with token={secret_token}")
    except RuntimeError:
        logging.getLogger("careless").exception("oops")
    finally:
        logs.configure({})
    device.close()

    assert logged_server.stop() == 0
    raw = logged_server.log(tail=None) + "\n" + stream.getvalue()   # everything, JSON or not
    output = "\n".join(line for line in raw.splitlines() if line.startswith("{"))
    secrets = {
        "enrollment token": secret_token,
        "SCEP challenge": challenge,
        "push token (hex)": device.push_token.hex(),
        "push token (base64)": base64.b64encode(device.push_token).decode(),
        "PushMagic": device.push_magic,
        "UnlockToken (base64 start)": base64.b64encode(device.unlock_token).decode()[:40],
        "private key body": key_pem.splitlines()[1],
        "PEM header": "BEGIN PRIVATE KEY",
    }
    assert len(signatures) >= 5
    for i, signature in enumerate(signatures):
        secrets[f"Mdm-Signature #{i}"] = signature[:80]
    leaked = {name for name, value in secrets.items() if value in raw}
    assert leaked == set()

    # The log is real and complete: JSON lines with request context for every request.
    entries = [json.loads(line) for line in output.splitlines()]
    careless_requests = [e for e in entries if e["logger"] == "careless" and e["message"].startswith("request")]
    assert len(careless_requests) >= 2 + len(signatures)   # profile x2, SCEP, check-ins, connects
    assert all(e["request_id"] and e["remote_addr"] == "127.0.0.1" and e["path"] for e in careless_requests)
    assert any("[REDACTED]" in e["message"] and "Mdm-Signature" in e["message"] for e in careless_requests)
    assert any(e["path"] == "/enroll/[REDACTED]" for e in entries if e["logger"] == "mdm.access")
    assert any("[REDACTED PRIVATE KEY]" in e["message"] for e in entries)
    oops = next(e for e in entries if e["message"] == "oops")
    assert "RuntimeError" in oops["exception"] and secret_token not in oops["exception"]
    access = [e for e in entries if e["logger"] == "mdm.access"]
    assert {e["status"] for e in access} <= {200} and all(isinstance(e["duration_ms"], float) for e in access)


@pytest.mark.parametrize("text, secret", [
    ("key=-----BEGIN RSA PRIVATE KEY-----\nMIIEabc\n-----END RSA PRIVATE KEY-----", "MIIEabc"),
    ("truncated -----BEGIN EC PRIVATE KEY-----\nMHcCAQEEI", "MHcCAQEEI"),
    ("token 0f" + "a1" * 31 + " rejected", "a1" * 31),
    ("{'PushMagic': 'A1B2-C3', 'UDID': 'X'}", "A1B2-C3"),
    ('{"challenge": "letmein"}', "letmein"),
    ("Authorization: Bearer mdm_abcdef123", "mdm_abcdef123"),
    ("GET /scep?operation=PKIOperation&message=MIIBxyz%2B", "MIIBxyz"),
])
def test_redaction_patterns(text, secret):
    assert secret not in logs.redact(text)


def test_redaction_keeps_ordinary_messages():
    message = "4F1C2A3B-1111-2222-3333-444455556666 enrolled; DeviceInformation acknowledged (token 3, use 2)"
    assert logs.redact(message) == message


def test_text_format_is_the_default_and_json_is_one_object_per_line():
    stream = io.StringIO()
    logs.configure({"LOG_FORMAT": "json"}, stream=stream)
    try:
        logging.getLogger("mdm.test").info("two\nlines %s", "x")
    finally:
        logs.configure({})
    (line,) = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["message"] == "two\nlines x" and entry["level"] == "INFO" and entry["logger"] == "mdm.test"
    assert entry["time"].endswith("Z")
    with pytest.raises(ValueError, match="MDM_LOG_FORMAT"):
        logs.configure({"LOG_FORMAT": "xml"})


def test_a_handler_added_later_gets_redacted_records_too():
    logs.configure({})
    seen = []

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append(self.format(record))

    handler = Collect()
    logging.getLogger().addHandler(handler)
    try:
        logging.getLogger("late").warning("PushMagic=%s", "SECRET-MAGIC-1")
        try:
            raise ValueError("password=hunter22")
        except ValueError:
            logging.getLogger("late").exception("failed")
    finally:
        logging.getLogger().removeHandler(handler)
    assert seen and not any("SECRET-MAGIC-1" in s or "hunter22" in s for s in seen)
    assert "ValueError" in seen[-1]
