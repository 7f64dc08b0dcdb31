"""The SOFA vulnerability feed: parsing SOFA's real v2 iOS feed, the packaged snapshot, the cache, a fetch
over HTTP, failures that keep what is stored, staleness reported like a stale catalog (banner), the
daily job, the CLI, and the catalog page showing each release's CVE count and exploited flag."""
from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from apps import FEEDS
from mdm.accounts import Role
from mdm.extensions import db
from ui_support import signed_in

SOFA_RAW = (FEEDS / "sofa-ios-sample.json").read_bytes()
SOFA = json.loads(SOFA_RAW)
HISTORY = json.loads((FEEDS / "gdmf-pmv-ios-history.json").read_text())
D = dt.datetime


# ---- parsing the real feed ----------------------------------------------------------------------------

# version -> (CVEs fixed, actively exploited CVEs), as SOFA's 2026-08-22 feed lists them
REAL_RELEASES = [
    ("26.3", 46, ["CVE-2025-14174", "CVE-2025-43529", "CVE-2026-20700"]),
    ("26.6.1", 29, []),
    ("18.7.10", 122, []),
    ("18.6.2", 1, ["CVE-2025-43300"]),
    ("18.1.1", 2, ["CVE-2024-44308", "CVE-2024-44309"]),
    ("18", 48, []),                     # "18.0", keyed like version_key
    ("18.7.7", 26, []),                 # listed twice in SecurityReleases: merged
    ("17.0.2", 0, []),                  # listed twice too
    ("17.0.1", 3, ["CVE-2023-41991", "CVE-2023-41992", "CVE-2023-41993"]),
]


@pytest.mark.parametrize("version,cves,exploited", REAL_RELEASES)
def test_the_real_feed_gives_cve_counts_and_exploited_cves_per_release(version, cves, exploited):
    from mdm.ddm.sofa import parse_feed
    releases, checked = parse_feed(SOFA)
    assert (releases[version]["cves"], releases[version]["exploited"]) == (cves, exploited)
    assert checked == D(2026, 8, 22, 18, 45, 3)


def test_stats_exploited_zero_does_not_hide_the_exploited_list():
    """SOFA's UpdateSummary.Stats.Exploited is 0 for every release, also where ActivelyExploitedCVEs is not
    empty (feeds/SOURCES.md): the list and the per-CVE flags count."""
    from mdm.ddm.sofa import parse_feed
    flagged = [r for o in SOFA["OSVersions"] for r in o["SecurityReleases"] if r["ActivelyExploitedCVEs"]]
    assert flagged and all(r["UpdateSummary"]["Stats"]["Exploited"] == 0 for r in flagged)
    releases, _ = parse_feed(SOFA)
    assert sum(1 for r in releases.values() if r["exploited"]) == len({r["ProductVersion"] for r in flagged})
    only_flags = json.loads(json.dumps(SOFA))
    for o in only_flags["OSVersions"]:
        for r in o["SecurityReleases"]:
            r["ActivelyExploitedCVEs"] = []
    assert parse_feed(only_flags)[0]["26.3"]["exploited"] == ["CVE-2025-14174", "CVE-2025-43529", "CVE-2026-20700"]


@pytest.mark.parametrize("document", [None, [], {}, {"OSVersions": "no"}, {"OSVersions": []},
                                      {"OSVersions": [{"SecurityReleases": [{"ProductVersion": 18}]}]}])
def test_a_document_that_is_not_a_sofa_feed_is_refused(document):
    from mdm.ddm.sofa import SofaError, parse_feed
    with pytest.raises(SofaError):
        parse_feed(document)


def test_the_packaged_snapshot_is_the_newest_real_feed():
    from mdm.ddm.sofa import SNAPSHOT_PATH
    assert SNAPSHOT_PATH.read_bytes() == SOFA_RAW


# ---- storing, fetching, failing -----------------------------------------------------------------------

def test_without_a_stored_feed_the_snapshot_is_read_and_nothing_is_written(ctx):
    from mdm.ddm import sofa
    from mdm.ddm.models import SofaFeed
    releases, origin = sofa.releases_in_use()
    assert origin == sofa.ORIGIN_SNAPSHOT and releases["18.1.1"]["cves"] == 2
    health = sofa.sofa_health()
    assert (health.problem, health.origin_text) == (None, "packaged snapshot (SOFA data of 2026-08-22); no sync "
                                                          "has succeeded")
    assert db.session.get(SofaFeed, 1) is None


def test_a_sync_from_a_file_is_stored_audited_and_bumps_the_generation_once(ctx, tmp_path):
    from mdm.ddm import plan, sofa
    from mdm.models import AuditEvent
    trimmed = json.loads(SOFA_RAW)
    trimmed["OSVersions"] = trimmed["OSVersions"][:1]          # iOS 26 only
    path = tmp_path / "sofa.json"
    path.write_text(json.dumps(trimmed))
    result = sofa.sync_sofa(file=str(path), now=D(2026, 8, 23))
    assert result.changed and result.releases == 15
    assert sofa.generation() == 1 and sofa.releases_in_use()[1] == sofa.ORIGIN_SYNC
    assert plan.release_index().security.get((18, 1, 1)) is None       # iOS 18 releases are not in this feed
    assert not sofa.sync_sofa(file=str(path), now=D(2026, 8, 24)).changed
    assert sofa.generation() == 1
    assert AuditEvent.query.filter_by(action="sofa.sync").count() == 1


class _FeedHandler(BaseHTTPRequestHandler):
    body = SOFA_RAW
    status = 200

    def do_GET(self):
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def feed_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FeedHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}/v2/ios_data_feed.json"
    server.shutdown()
    server.server_close()


def test_the_feed_is_fetched_over_http_from_the_configured_url(ctx, feed_server):
    from mdm.ddm import sofa
    _server, url = feed_server
    ctx.config["SOFA_URL"] = url
    result = sofa.sync_sofa(now=D(2026, 8, 23))
    assert (result.source, result.releases) == (url, 70)     # 72 entries, 17.0.2 and 18.7.7 twice
    health = sofa.sofa_health(now=D(2026, 8, 23, 1))
    assert health.problem is None and health.origin_text.startswith("SOFA data of 2026-08-22, synced from")


def test_a_failed_fetch_keeps_the_stored_feed_and_the_banner_says_enforcement_is_not_held_back(ctx, feed_server):
    from mdm.ddm import sofa
    server, url = feed_server
    sofa.sync_sofa(url=url, now=D(2026, 8, 23))
    handler = type("Broken", (_FeedHandler,), {"status": 503, "body": b"unavailable"})
    server.RequestHandlerClass = handler
    with pytest.raises(sofa.SofaError, match="HTTP 503"):
        sofa.sync_sofa(url=url, now=D(2026, 8, 24))
    assert sofa.releases_in_use()[0]["18.1.1"]["exploited"] == ["CVE-2024-44308", "CVE-2024-44309"]
    problem = sofa.sofa_health(now=D(2026, 8, 24, 1)).problem
    assert problem.startswith("The SOFA vulnerability feed is unreachable: data of 2026-08-22 is in use")
    assert "normal grace period (enforcement is not held back)" in problem and "HTTP 503" in problem
    # The daily job records the failure and never raises.
    ctx.config["SOFA_URL"] = url
    sofa.refresh_job()


def test_staleness_is_reported_after_a_week(ctx):
    from mdm.ddm import sofa
    sofa.apply_feed(SOFA, "sample", now=D(2026, 8, 23))
    assert sofa.sofa_health(now=D(2026, 8, 30)).problem is None
    stale = sofa.sofa_health(now=D(2026, 9, 1)).problem
    assert stale.startswith("The SOFA vulnerability feed has not been refreshed for 9 days (since 2026-08-23)")
    # Synced just now, but SOFA itself stopped updating (its LastCheck is old): also stale.
    sofa.apply_feed(SOFA, "sample", now=D(2026, 12, 1))
    assert "The SOFA feed itself was last updated on 2026-08-22" in sofa.sofa_health(now=D(2026, 12, 1)).problem


def test_the_daily_job_is_registered_next_to_the_catalog_job():
    from mdm import scheduler
    jobs = {f"{func.__module__}.{func.__name__}": args for func, _trigger, args in scheduler._JOBS}
    assert jobs["mdm.ddm.jobs.refresh_sofa"]["hours"] == 24
    assert "mdm.ddm.jobs.refresh_catalog" in jobs


# ---- CLI ----------------------------------------------------------------------------------------------

def test_cli_syncs_sofa_and_lists_cve_counts(app, tmp_path):
    path = tmp_path / "sofa.json"
    path.write_bytes(SOFA_RAW)
    history = tmp_path / "history.json"
    history.write_text(json.dumps(HISTORY))
    runner = app.test_cli_runner()
    out = runner.invoke(args=["mdm", "catalog", "sofa-sync", "--file", str(path), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["sync"]["releases"] == 70
    assert runner.invoke(args=["mdm", "catalog", "sync", "--file", str(history)]).exit_code == 0
    listed = json.loads(runner.invoke(args=["mdm", "catalog", "list", "--model", "iPhone15,2", "--json"]).output)
    row = next(r for r in listed["releases"] if r["version"] == "18.1.1")
    assert (row["cves"], row["exploited_cves"]) == (2, ["CVE-2024-44308", "CVE-2024-44309"])
    text = runner.invoke(args=["mdm", "catalog", "list", "--model", "iPhone15,2"]).output
    assert "2 CVEs, 2 actively exploited" in text
    bad = runner.invoke(args=["mdm", "catalog", "sofa-sync", "--file", str(tmp_path / "missing.json"), "--json"])
    assert bad.exit_code == 1 and json.loads(bad.output)["errors"][0]["field"] == "sofa"


# ---- the catalog page and the banner ------------------------------------------------------------------

def test_the_catalog_page_shows_each_releases_cve_count_and_exploited_flag(app):
    from mdm.ddm import catalog, sofa
    with app.app_context():
        catalog.apply_feed(HISTORY, "history")
        sofa.apply_feed(SOFA, "sample")
    reader = signed_in(app, Role.ReadOnly, "reader")
    assert 'id="catalog-releases-link"' in reader.get("/settings").text
    page = reader.get("/settings/catalog/releases?model=iPhone15,2").text
    row = page.split('data-version="18.1.1" data-build="22B91"')[1].split("</tr>")[0]
    assert '<td class="cves">2</td>' in row
    assert "2 exploited" in row and "CVE-2024-44308, CVE-2024-44309" in row
    quiet = page.split('data-version="18.2" data-build="22C152"')[1].split("</tr>")[0]
    assert '<td class="cves">41</td>' in quiet and "none" in quiet
    # Releases SOFA does not describe (before iOS 17 in this feed) say so instead of "0".
    older = reader.get("/settings/catalog/releases").text.split('data-version="16.7.9" data-build="20H348"')[1]
    assert '<td class="cves">—</td>' in older.split("</tr>")[0] and "not in SOFA" in older.split("</tr>")[0]


def test_a_stale_sofa_feed_shows_a_banner_on_every_page(app):
    from mdm.ddm import sofa
    with app.app_context():
        sofa.apply_feed(SOFA, "sample", now=D(2026, 1, 1))
    page = signed_in(app, Role.ReadOnly, "reader").get("/devices").text
    assert 'id="sofa-banner"' in page and "The vulnerability feed is stale." in page
    assert "normal grace period" in page
