"""Enrollment tokens and the enrollment profile: Apple's schema, CMS signature (checked by openssl),
one-time challenges, refusals that leave nothing behind, and the CLI."""
from __future__ import annotations

import plistlib
import re
import ssl
import subprocess
import threading
from datetime import timedelta

import httpx
import pytest
from cryptography import x509
from sqlalchemy import func, select

from mdm.enroll import tokens
from mdm.enroll.profile import hash_challenge
from mdm.extensions import db
from mdm.models import AuditEvent, EnrollmentToken, ScepChallenge, utcnow

from appleschema import Context, validate_profile
from refusals import assert_refused

PROFILE_MIMETYPE = "application/x-apple-aspen-config"


def new_token(app, **kwargs) -> str:
    with app.app_context():
        return tokens.create_token(**{"description": "test", **kwargs}).token


def download(client, token: str, unsigned=True):
    return client.get(f"/enroll/{token}" + ("?unsigned=1" if unsigned else ""))


def payloads(profile: dict) -> dict:
    return {p["PayloadType"]: p for p in profile["PayloadContent"]}


def count(app, model) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model))


# ------------------------------------------------------------------ profile content


def test_profile_validates_against_apple_schema_and_points_at_this_server(app, client):
    token = new_token(app)
    response = download(client, token)
    assert response.status_code == 200
    assert response.mimetype == PROFILE_MIMETYPE
    profile = plistlib.loads(response.data)

    for ctx in (Context("iOS", "18.0", supervised=False), Context("iOS", "17.0", supervised=True),
                Context("macOS", "14.0")):
        assert validate_profile(profile, ctx) == [], ctx.os_name

    by_type = payloads(profile)
    assert set(by_type) == {"com.apple.security.root", "com.apple.security.scep", "com.apple.mdm"}
    url = app.config["SERVER_URL"]
    with app.app_context():
        from mdm.pki import get_pki
        from mdm.push.cert import current_topic
        ca_der, topic = get_pki().ca_der, current_topic()

    assert by_type["com.apple.security.root"]["PayloadContent"] == ca_der
    scep = by_type["com.apple.security.scep"]
    scep_content = scep["PayloadContent"]
    assert scep_content["URL"] == f"{url}/scep"
    assert scep_content["Keysize"] == 2048 and scep_content["Key Type"] == "RSA"
    assert scep_content["Key Usage"] == 5
    assert scep_content["Subject"][0] == [["O", "Test Org"]]
    assert re.fullmatch(r"mdm-device-[0-9a-f-]{36}", scep_content["Subject"][1][0][1])

    mdm = by_type["com.apple.mdm"]
    assert mdm["ServerURL"] == f"{url}/mdm/connect"
    assert mdm["CheckInURL"] == f"{url}/mdm/checkin"
    assert mdm["Topic"] == topic and topic.startswith("com.apple.mgmt.")
    assert mdm["IdentityCertificateUUID"] == scep["PayloadUUID"]
    assert mdm["SignMessage"] is True and mdm["CheckOutWhenRemoved"] is True
    assert mdm["AccessRights"] == 8191
    assert mdm["ServerCapabilities"] == ["com.apple.mdm.per-user-connections", "com.apple.mdm.bootstraptoken"]
    # Identifiers unique within the profile (CommonPayloadKeys.yaml: "must be unique within the profile").
    identifiers = [p["PayloadIdentifier"] for p in profile["PayloadContent"]] + [profile["PayloadIdentifier"]]
    assert len(set(identifiers)) == len(identifiers)


def test_signed_profile_verifies_with_openssl_and_contains_the_plist(app, client, tmp_path):
    token = new_token(app)
    response = download(client, token, unsigned=False)
    assert response.status_code == 200 and response.mimetype == PROFILE_MIMETYPE
    signed = tmp_path / "enroll.mobileconfig"
    signed.write_bytes(response.data)
    ca_file = f"{app.config['CERTS_DIR']}/ca.pem"
    content, signer = tmp_path / "content.plist", tmp_path / "signer.pem"
    result = subprocess.run(["openssl", "cms", "-verify", "-inform", "DER", "-in", str(signed), "-CAfile", ca_file,
                             "-purpose", "any", "-out", str(content), "-signer", str(signer)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    profile = plistlib.loads(content.read_bytes())
    assert validate_profile(profile) == []
    signer_cert = x509.load_pem_x509_certificate(signer.read_bytes())
    with app.app_context():
        from mdm.pki import get_pki
        assert signer_cert == get_pki().signing_cert

    # The check is real: one changed byte in the signed content and openssl refuses it.
    data = bytearray(response.data)
    at = data.index(b"<plist") + 1
    data[at] ^= 0x01
    signed.write_bytes(bytes(data))
    tampered = subprocess.run(["openssl", "cms", "-verify", "-inform", "DER", "-in", str(signed),
                               "-CAfile", ca_file, "-purpose", "any", "-out", str(content)],
                              capture_output=True, text=True, timeout=30)
    assert tampered.returncode != 0


def test_each_download_has_its_own_one_time_challenge_and_subject(app, client):
    token = new_token(app)
    profiles = [plistlib.loads(download(client, token).data) for _ in range(3)]
    scep = [payloads(p)["com.apple.security.scep"]["PayloadContent"] for p in profiles]
    challenges = [s["Challenge"] for s in scep]
    common_names = [s["Subject"][1][0][1] for s in scep]
    assert len(set(challenges)) == 3 and len(set(common_names)) == 3
    assert len({p["PayloadUUID"] for p in profiles}) == 3

    with app.app_context():
        rows = db.session.scalars(select(ScepChallenge)).all()
        token_row = db.session.scalar(select(EnrollmentToken).where(EnrollmentToken.token == token))
        assert token_row.uses == 3
        # Stored hashed, never in clear, with the configured lifetime.
        assert {r.challenge_sha256 for r in rows} == {hash_challenge(c) for c in challenges}
        assert all(r.enrollment_token_id == token_row.id and r.used_at is None for r in rows)
        lifetime = timedelta(minutes=app.config["SCEP_CHALLENGE_MINUTES"])
        for r in rows:
            assert abs((r.expires_at - utcnow()) - lifetime) < timedelta(minutes=1)
        stored = " ".join(str(v) for r in rows for v in (r.challenge_sha256, r.expires_at))
        assert not any(c in stored for c in challenges)


def test_ca_certificate_is_published_as_pem(app, client):
    response = client.get("/ca.pem")
    assert response.status_code == 200
    assert response.mimetype == "application/x-x509-ca-cert"
    with app.app_context():
        from mdm.pki import get_pki
        assert x509.load_pem_x509_certificate(response.data) == get_pki().ca_cert


# ------------------------------------------------------------------ refusals


def assert_refused_without_profile(app, response, status: int):
    """``assert_refused`` with no challenge stored, and no profile in a plain-text answer."""
    assert_refused(app, response, status, before={"scep_challenges": 0})
    assert response.mimetype == "text/plain"
    assert b"<plist" not in response.data and b"PayloadContent" not in response.data


def test_unknown_token_is_404_and_stores_nothing(app, client):
    new_token(app)
    assert_refused_without_profile(app, download(client, "no-such-token"), 404)
    assert_refused_without_profile(app, download(client, "x" * 200, unsigned=False), 404)


def test_expired_token_is_403(app, client):
    token = new_token(app)
    with app.app_context():
        row = db.session.scalar(select(EnrollmentToken).where(EnrollmentToken.token == token))
        row.expires_at = utcnow() - timedelta(seconds=1)
        db.session.commit()
    response = download(client, token)
    assert_refused_without_profile(app, response, 403)
    assert b"expired" in response.data


def test_revoked_token_is_403_and_revocation_is_audited(app, client):
    token = new_token(app)
    with app.app_context():
        tokens.revoke_token(token, revoked_by="admin")
        tokens.revoke_token(token, revoked_by="admin")      # idempotent: one audit event
        actions = db.session.scalars(select(AuditEvent.action)).all()
        assert actions.count("enrollment_token.revoke") == 1
    response = download(client, token, unsigned=False)
    assert_refused_without_profile(app, response, 403)
    assert b"revoked" in response.data
    with app.app_context():
        refused = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "enrollment_token.refused")).all()
        assert len(refused) == 1 and refused[0].actor == "device"


def test_used_up_token_is_403_after_its_last_download(app, client):
    token = new_token(app, max_uses=2)
    assert download(client, token).status_code == 200
    assert download(client, token, unsigned=False).status_code == 200
    response = download(client, token)
    assert response.status_code == 403 and b"used up" in response.data
    assert count(app, ScepChallenge) == 2          # the refused download stored no challenge
    with app.app_context():
        assert db.session.scalar(select(EnrollmentToken.uses).where(EnrollmentToken.token == token)) == 2


def test_concurrent_downloads_cannot_exceed_max_uses(live_server):
    with live_server.app.app_context():
        token = tokens.create_token("race", max_uses=1).token
    statuses = []

    def fetch():
        with httpx.Client(verify=ssl.create_default_context(cafile=live_server.ca_file), timeout=30) as http:
            statuses.append(http.get(f"{live_server.url}/enroll/{token}").status_code)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200, 403, 403, 403]


# ------------------------------------------------------------------ token service and CLI


def test_token_defaults_and_validation(app):
    with app.app_context():
        default = tokens.create_token("default")
        expected = utcnow() + timedelta(days=app.config["ENROLLMENT_DEFAULT_DAYS"])
        assert abs(default.expires_at - expected) < timedelta(minutes=1)
        assert default.max_uses is None and tokens.token_state(default) == "active"
        forever = tokens.create_token("forever", expires_in_days=0)
        assert forever.expires_at is None
        assert default.token != forever.token and len(default.token) >= 32
        assert tokens.enrollment_url(default) == f"{app.config['SERVER_URL']}/enroll/{default.token}"
        with pytest.raises(ValueError):
            tokens.create_token("bad", max_uses=0)
        with pytest.raises(ValueError):
            tokens.create_token("bad", expires_in_days=-1)
        with pytest.raises(tokens.TokenNotFound):
            tokens.revoke_token("nope")
        created = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "enrollment_token.create")).all()
        assert len(created) == 2 and created[0].after["description"] == "default"
        # The audit trail never holds the secret token itself.
        assert all(default.token not in str(e.after) for e in created)


def test_cli_create_list_revoke(app, client):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["mdm", "enrollment", "create", "--days", "2", "--uses", "1",
                                 "--description", "Lab iPads"])
    assert result.exit_code == 0, result.output
    url = result.output.strip()
    assert url.startswith(f"{app.config['SERVER_URL']}/enroll/")
    token = url.rsplit("/", 1)[1]

    listing = runner.invoke(args=["mdm", "enrollment", "list"])
    assert listing.exit_code == 0 and "Lab iPads" in listing.output and "active" in listing.output
    assert "uses 0/1" in listing.output

    assert download(client, token).status_code == 200
    listing = runner.invoke(args=["mdm", "enrollment", "list", "--active"])
    assert "Lab iPads" not in listing.output      # used up

    revoked = runner.invoke(args=["mdm", "enrollment", "revoke", url])
    assert revoked.exit_code == 0, revoked.output
    assert "revoked" in runner.invoke(args=["mdm", "enrollment", "list"]).output
    missing = runner.invoke(args=["mdm", "enrollment", "revoke", "nope"])
    assert missing.exit_code != 0 and "unknown enrollment token" in missing.output
    with app.app_context():
        actions = db.session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
        assert "enrollment_token.create" in actions and "enrollment_token.revoke" in actions
        actor = db.session.scalar(select(AuditEvent.actor).where(AuditEvent.action == "enrollment_token.create"))
        assert actor.startswith("cli")

