"""Apple's release catalog: parsing the real gdmf feeds, the packaged snapshot, refresh over real HTTPS.

A refresh is served by a real TLS server (http.server + ssl with the test CA); a failed refresh keeps
the cached catalog; rows Apple stopped listing go only after a successful one.
"""
from __future__ import annotations

import datetime as dt
import http.server
import json
import ssl
import threading
from pathlib import Path

import pytest

from apps import FEEDS, plain_key_file
from mdm.extensions import db

FEED_2024 = json.loads((FEEDS / "gdmf-pmv-2024-09-20-sample.json").read_text())
FEED_2026 = json.loads((FEEDS / "gdmf-pmv-sample.json").read_text())
APPLE_ROOT_SHA256 = "B0B1730ECBC7FF4505142C49F1295E6EDA6BCAED7E2C68C5BE91B5A11001F024"


def rows():
    from mdm.ddm.models import CatalogRelease
    return {(r.product_version, r.build): r for r in CatalogRelease.query.all()}


# ---- parsing the real feeds -------------------------------------------------------------------------

def test_only_iphone_ipad_ipod_releases_are_kept():
    from mdm.ddm.catalog import parse_feed
    releases, skipped = parse_feed(FEED_2026)
    builds = {r.build for r in releases}
    # watchOS 26.6 (23U67), tvOS/HomePod 26.6 (23L773) sit under the "iOS" key: not ours.
    assert not builds & {"23U67", "23U6067", "23L773", "22U95", "16U711"}
    assert all(d.startswith(("iPhone", "iPad", "iPod")) for r in releases for d in r.supported_devices)
    assert skipped == 0
    releases_2024, _ = parse_feed(FEED_2024)
    assert not {r.build for r in releases_2024} & {"21O589", "22J357", "21M71"}   # visionOS, tvOS, HomePod


def test_build_twins_and_security_responses_are_kept_as_rows():
    from mdm.ddm.catalog import parse_feed
    releases = {(r.product_version, r.build): r for r in parse_feed(FEED_2026)[0]}
    assert ("26.6.1", "23G83") in releases and ("26.6.1", "23G6083") in releases
    bsi = releases[("26.3.1", "23D771330a")]      # PublicBackgroundSecurityImprovements
    assert (bsi.kind, bsi.product_version_extra, bsi.prerequisite_build) == ("security-response", "(a)", "23D8133")
    assert releases[("26.6.1", "23G83")].sections == {"PublicAssetSets", "AssetSets"}


def test_not_a_pmv_document_is_refused():
    from mdm.ddm.catalog import CatalogError, parse_feed
    for bad in ([], {"hello": 1}, {"PublicAssetSets": []}):
        with pytest.raises(CatalogError):
            parse_feed(bad)


def test_malformed_entries_are_skipped_and_counted():
    from mdm.ddm.catalog import parse_feed
    feed = {"AssetSets": {"iOS": [{"ProductVersion": "18.1", "Build": "22B83", "PostingDate": "yesterday",
                                   "SupportedDevices": ["iPhone15,2"]},
                                  {"Build": "22B83"},
                                  {"ProductVersion": "18.1", "Build": "22B83", "PostingDate": "2024-10-28",
                                   "ExpirationDate": "2025-01-01", "SupportedDevices": ["iPhone15,2"]}]}}
    releases, skipped = parse_feed(feed)
    assert skipped == 2 and [r.build for r in releases] == ["22B83"]


def test_shift_feed_moves_dates_only():
    from mdm.ddm.catalog import shift_feed
    shifted = shift_feed(FEED_2024, 10)
    before, after = FEED_2024["AssetSets"]["iOS"][0], shifted["AssetSets"]["iOS"][0]
    assert after["PostingDate"] == (dt.date.fromisoformat(before["PostingDate"]) + dt.timedelta(days=10)).isoformat()
    assert after["SupportedDevices"] == before["SupportedDevices"] and after["Build"] == before["Build"]
    assert FEED_2024["AssetSets"]["iOS"][0] is before          # the original is untouched


# ---- storing ----------------------------------------------------------------------------------------

def test_rows_merge_sections_and_keep_per_device_expirations(ctx):
    from mdm.ddm.catalog import apply_feed
    result = apply_feed(FEED_2026, "feed", now=dt.datetime(2026, 8, 22))
    assert result.added == len(rows()) and result.removed == 0
    row = rows()[("26.5", "23F77")]
    assert row.expiration_date == dt.date(2026, 9, 27) and len(row.supported_devices) == 95
    assert row.expiration_by_device == {f"iPhone18,{i}": "2026-08-30" for i in range(1, 6)}
    assert rows()[("18.7.8", "22H352")].first_posting_date == dt.date(2026, 4, 22)


def test_snapshot_ships_in_the_package_and_loads_on_first_use(ctx):
    from mdm.ddm import catalog
    assert json.loads(catalog.SNAPSHOT_PATH.read_text()) == FEED_2026
    assert rows() == {}
    catalog.ensure_catalog()
    assert ("26.6.1", "23G83") in rows()
    status = catalog.catalog_status(now=dt.datetime(2026, 11, 27))
    assert status["source"] == "snapshot:gdmf-pmv.json" and status["stale"]
    # Every entry of the 2026-08-22 snapshot expired on 2026-11-20: the operator is told plainly.
    assert any("expired" in w for w in status["warnings"])
    assert any("snapshot" in w for w in status["warnings"])
    # Never reloaded over a refreshed catalog.
    catalog.apply_feed(FEED_2024, "refresh", now=dt.datetime(2024, 9, 20))
    catalog.ensure_catalog()
    assert ("26.6.1", "23G83") not in rows()


def test_apple_root_ca_is_apples():
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from mdm.ddm.catalog import APPLE_ROOT_CA
    cert = x509.load_pem_x509_certificate(Path(APPLE_ROOT_CA).read_bytes())
    assert cert.fingerprint(hashes.SHA256()).hex().upper() == APPLE_ROOT_SHA256


# ---- refresh over real HTTPS ------------------------------------------------------------------------

class FeedServer:
    """A real HTTPS server with the test CA's TLS certificate; ``respond`` sets the next answer."""

    def __init__(self, certs: Path, key_file: str):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests += 1
                status, body = server.answer
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.requests = 0
        self.answer = (200, b"{}")
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(certs / "tls.pem"), key_file)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://localhost:{self.httpd.server_address[1]}/v2/pmv"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def respond(self, status: int, body) -> None:
        self.answer = (status, body if isinstance(body, bytes) else json.dumps(body).encode())

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def feed_server(app, tmp_path):
    server = FeedServer(Path(app.config["CERTS_DIR"]), plain_key_file(app, "tls.key", tmp_path))
    app.config["CATALOG_URL"] = server.url
    app.config["CATALOG_CA_FILE"] = str(Path(app.config["CERTS_DIR"]) / "ca.pem")
    yield server
    server.close()


def test_refresh_failures_keep_the_cache_and_stale_rows_go_only_after_success(ctx, feed_server):
    from mdm.ddm import catalog
    from mdm.ddm.models import CatalogState
    feed_server.respond(200, FEED_2024)
    first = catalog.sync_catalog(now=dt.datetime(2024, 9, 20))
    assert first.added == len(rows()) and ("17.6", "21G80") in rows()
    assert db.session.get(CatalogState, 1).source == feed_server.url

    for status, body, why in [(500, b"oops", "HTTP 500"), (200, b"<html>", "not JSON"),
                              (200, {"PublicAssetSets": {"iOS": [], "watchOS": []}, "AssetSets": {}},
                               "no iPhone/iPad")]:
        feed_server.respond(status, body)
        with pytest.raises(catalog.CatalogError, match=why):
            catalog.sync_catalog(now=dt.datetime(2024, 9, 21))
        assert ("17.6", "21G80") in rows() and len(rows()) == first.added
        state = db.session.get(CatalogState, 1)
        assert why in state.last_error and state.last_success_at == dt.datetime(2024, 9, 20)

    # Apple stops signing 17.6 (21G80/21G6080): it goes after the next successful refresh.
    trimmed = json.loads(json.dumps(FEED_2024))
    trimmed["AssetSets"]["iOS"] = [e for e in trimmed["AssetSets"]["iOS"] if e["ProductVersion"] != "17.6"]
    feed_server.respond(200, trimmed)
    result = catalog.sync_catalog(now=dt.datetime(2024, 9, 22))
    assert result.removed == 2 and ("17.6", "21G80") not in rows()
    assert db.session.get(CatalogState, 1).last_error is None
    assert feed_server.requests == 5


def test_refresh_verifies_tls(ctx, feed_server, app):
    from mdm.ddm import catalog
    app.config["CATALOG_CA_FILE"] = None          # our test CA is not trusted by default: refused
    feed_server.respond(200, FEED_2024)
    with pytest.raises(catalog.CatalogError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        catalog.sync_catalog()
    assert rows() == {}


def test_a_catalog_change_recomputes_targets(ctx, feed_server):
    from mdm.ddm import catalog
    from mdm.ddm.models import PolicyBinding
    from mdm.ddm.plan import patch_plan_for_device, recompute
    from mdm.ddm.policies import create_policy
    from mdm.models import Device
    now = dt.datetime(2024, 9, 20, 12)
    trimmed = json.loads(json.dumps(FEED_2024))
    for section in ("PublicAssetSets", "AssetSets"):
        trimmed[section]["iOS"] = [e for e in trimmed[section]["iOS"] if e["ProductVersion"] != "18.0"]
    feed_server.respond(200, trimmed)
    catalog.sync_catalog(now=now)
    phone = Device(udid="p", product_name="iPhone15,2", os_version="17.6.1", enrollment_status="enrolled")
    db.session.add(phone)
    db.session.commit()
    policy = create_policy({"name": "p"})
    db.session.add(PolicyBinding(policy_id=policy.id, device_id=phone.id))
    db.session.commit()
    recompute(now=now)
    assert patch_plan_for_device(phone).target_version == "17.7"
    feed_server.respond(200, FEED_2024)                   # 18.0 appears
    catalog.sync_catalog(now=now)
    assert patch_plan_for_device(phone).target_version == "18.0"


def test_cli_sync_from_file_and_list(app, tmp_path):
    runner = app.test_cli_runner()
    wrapped = tmp_path / "gdmf_cached.json"       # SOFA's wrapper {"etag", "data"} is accepted too
    wrapped.write_text(json.dumps({"etag": "x", "data": FEED_2024}))
    out = runner.invoke(args=["mdm", "catalog", "sync", "--file", str(wrapped), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["sync"]["added"] == 25
    out = runner.invoke(args=["mdm", "catalog", "list", "--model", "iPad7,5", "--json"])
    versions = {r["version"] for r in json.loads(out.output)["releases"]}
    assert "17.7" in versions and "18.0" not in versions
    out = runner.invoke(args=["mdm", "catalog", "sync", "--file", str(tmp_path / "missing.json"), "--json"])
    assert out.exit_code == 1 and json.loads(out.output)["errors"][0]["field"] == "catalog"


@pytest.mark.parametrize("source, origin, text", [
    ("snapshot:gdmf-pmv.json", "snapshot", "packaged snapshot loaded at 2026-11-01 09:30 UTC (no sync from Apple "
                                           "has succeeded)"),
    ("https://gdmf.apple.com/v2/pmv", "apple", "synced from Apple at 2026-11-01 09:30 UTC"),
    ("https://mirror.example/pmv", "url", "synced from https://mirror.example/pmv at 2026-11-01 09:30 UTC"),
    ("/srv/pmv.json", "file", "loaded from the file /srv/pmv.json at 2026-11-01 09:30 UTC"),
])
def test_catalog_health_names_where_the_catalog_came_from(ctx, source, origin, text):
    from mdm.ddm import catalog
    loaded = dt.datetime(2026, 11, 1, 9, 30)
    catalog.apply_feed(FEED_2026, source, now=loaded)
    health = catalog.catalog_health(now=loaded + dt.timedelta(days=1))
    assert (health.origin, health.origin_text, health.problem) == (origin, text, None)
    # The 2026-08-22 feed's releases expire on 2026-11-20: after that nobody gets a target.
    expired = catalog.catalog_health(now=dt.datetime(2026, 11, 21)).problem
    assert expired.startswith("Every release in the catalog has expired (latest expiration 2026-11-20)")
    # Not refreshed for more than a week (and not expired yet): stale.
    assert "for 8 days (since 2026-11-01)" in catalog.catalog_health(now=dt.datetime(2026, 11, 9, 10)).problem
