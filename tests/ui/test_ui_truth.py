"""Status that tells the truth, through the Flask test client: iOS & iPadOS as one platform, the macOS-only
security-response setting refused for iOS, errors in the form's words (form and API), beta programs as
Description + Token rows, the styled 404/500 pages and the favicon, device search anywhere / sorting /
patch columns / filter chips, and update audit entries holding only the changed fields and the name."""
from __future__ import annotations

import html
import re

import pytest

from mdm.accounts import Role
from mdm.extensions import db
from mdm.models import AuditEvent, DeviceGroup
from ui_support import add_devices, iphone, load_current_catalog, make_token, signed_in

VALID = {"name": "Pilot iPhones", "deferral_days": "5", "enforce": ["false", "true"], "grace_days": "7",
         "local_time": "18:30", "details_url": "", "notifications_all": "true", "cadence": "All",
         "auto_download": "AlwaysOn", "auto_install_os": "AlwaysOn", "rsr_offer": ["false", "true"],
         "rsr_rollback": ["false"], "beta_enrollment": "Allowed", "beta_rows": "1", "stay_on_major": "false"}


def error_slot(page: str, field: str) -> str:
    match = re.search(rf'<div id="err-{field}"[^>]*>(.*?)</div>\s*(?=<|$)', page, re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", match.group(1))).strip() if match else ""


def policy(app, name: str):
    from mdm.ddm.models import PatchPolicy
    with app.app_context():
        p = PatchPolicy.query.filter_by(name=name).one()
        db.session.expunge(p)
        return p


def api_client(app, role=Role.Manager):
    token = make_token(app, "truth-api", role)
    client = app.test_client()

    def call(method, path, body=None):
        return client.open("/api/v1" + path, method=method, json=body, base_url="https://localhost",
                           headers={"Authorization": f"Bearer {token}"})
    return call


# ---- iOS & iPadOS: one platform ---------------------------------------------------------------------

def test_patch_management_names_one_ios_and_ipados_platform(app):
    manager = signed_in(app, Role.Manager, "mgr")
    chooser = manager.get("/patch-management/new").text
    assert "<strong>iOS &amp; iPadOS</strong>" in chooser and ">iPadOS<" not in chooser
    tabs = manager.get("/patch-management").text
    assert ">iOS &amp; iPadOS</a>" in tabs and "OS · iOS" not in tabs and ">iPadOS<" not in tabs
    form = manager.get("/patch-management/new/iOS").text
    assert "<h1>New iOS &amp; iPadOS patch policy</h1>" in form
    # An old link to the iPadOS tab shows the one platform.
    assert "No iOS &amp; iPadOS patch policies." in manager.get("/patch-management?platform=iPadOS").text


def test_the_macos_only_security_action_is_not_offered_for_ios(app):
    manager = signed_in(app, Role.Manager, "mgr")
    form = manager.get("/patch-management/new/iOS").text
    control = re.search(r'<label class="macos-only">(.*?)</label>', form, re.S).group(1)
    assert "macOS only" in control and "disabled" in control and 'name="auto_install_security"' not in control
    assert manager.post("/patch-management", VALID).status_code == 303
    assert policy(app, "Pilot iPhones").auto_install_security == "Allowed"


def test_the_server_refuses_the_macos_only_action_for_ios_everywhere(app):
    manager = signed_in(app, Role.Manager, "mgr")
    posted = manager.post("/patch-management", dict(VALID, auto_install_security="AlwaysOn"))
    assert posted.status_code == 422
    assert ("Install security responses and system files is macOS only"
            in error_slot(posted.text, "auto_install_security"))
    live = manager.post("/patch-management/validate", dict(VALID, auto_install_security="AlwaysOff"), htmx=True)
    assert "macOS only" in error_slot(live.text, "auto_install_security")
    api = api_client(app)
    refused = api("POST", "/policies", {"name": "API", "auto_install_security": "AlwaysOn"})
    assert refused.status_code == 400
    assert refused.json["errors"] == [{"field": "auto_install_security", "message": refused.json["errors"][0]["message"]}]
    assert refused.json["error"].startswith("Install security responses and system files is macOS only")
    # Apple's default (User Controlled) is accepted, so a read-modify-write round trip works.
    created = api("POST", "/policies", {"name": "API", "auto_install_security": "Allowed"})
    assert created.status_code == 201
    body = {k: v for k, v in created.json.items() if k in (
        "name", "deferral_days", "auto_download", "auto_install_os", "auto_install_security", "beta_programs")}
    assert api("PATCH", f"/policies/{created.json['id']}", body).status_code == 200


def test_the_device_platform_filter_takes_iphone_and_ipad_together(app):
    add_devices(app, [iphone("Desk phone", "P1"),
                      {"device_name": "Desk tablet", "serial_number": "P2", "product_name": "iPad13,4", "os_version": "17.5"},
                      {"device_name": "Desk Mac", "serial_number": "P3", "product_name": "Mac14,2", "os_version": "14.5"}])
    reader = signed_in(app, Role.ReadOnly, "reader")
    page = reader.get("/devices?platform=iOS,iPadOS").text
    assert "Desk phone" in page and "Desk tablet" in page and "Desk Mac" not in page
    assert '<option value="iOS,iPadOS" selected>iOS &amp; iPadOS</option>' in page
    assert ">iPadOS</option>" not in page
    # The single-platform values still work (links and API callers use them).
    only_ipads = reader.get("/devices?platform=iPadOS").text
    assert "Desk tablet" in only_ipads and "Desk phone" not in only_ipads
    assert "platform: one or more of" in reader.get("/devices?platform=Android").text


# ---- errors in the form's words -----------------------------------------------------------------------

def test_form_errors_use_the_forms_words_not_field_ids(app):
    manager = signed_in(app, Role.Manager, "mgr")
    bad = dict(VALID, auto_download="Allowed", auto_install_os="AlwaysOn", deferral_days="91")
    page = manager.post("/patch-management", bad).text
    message = error_slot(page, "auto_install_os")
    assert message.startswith("Install OS updates can't be Always On while Download is User Controlled")
    assert "Set Download to Always On" in message
    assert error_slot(page, "deferral_days").startswith("Defer OS updates must be 0 (no deferral) or between 1 and 90")
    for slot in (message, error_slot(page, "deferral_days")):
        assert "auto_download" not in slot and "auto_install_os" not in slot and "deferral_days" not in slot


def test_api_errors_keep_the_field_id_with_a_human_message(app):
    api = api_client(app)
    bad = api("POST", "/policies", {"name": "API", "auto_download": "AlwaysOff", "auto_install_os": "AlwaysOn",
                                    "grace_days": 400})
    assert bad.status_code == 400
    by_field = {e["field"]: e["message"] for e in bad.json["errors"]}
    assert by_field["auto_install_os"].startswith("Install OS updates can't be Always On while Download is Always Off")
    assert by_field["grace_days"] == "Grace period must be between 0 and 365 days, got 400"
    assert "auto_install_os:" not in bad.json["error"] and "Grace period must be" in bad.json["error"]
    choice = api("POST", "/policies", {"name": "API", "auto_download": "Never"}).json["errors"][0]
    assert choice == {"field": "auto_download", "message": "Download must be User Controlled, Always On or Always "
                                                          "Off (Allowed, AlwaysOn, AlwaysOff), got 'Never'"}
    platform = api("POST", "/policies", {"name": "API", "platform": "macOS"})
    assert platform.status_code == 400 and platform.json["errors"][0]["field"] == "platform"
    assert "iOS & iPadOS" in platform.json["error"]


# ---- beta programs as rows ------------------------------------------------------------------------

def test_beta_programs_are_description_and_token_rows(app):
    manager = signed_in(app, Role.Manager, "mgr")
    form = manager.get("/patch-management/new/iOS").text
    assert 'id="add-beta-program"' in form and 'id="beta-row-template"' in form and "<textarea" not in form
    rows = dict(VALID, beta_description=["AppleSeed for IT", "", "Pilot"], beta_token=["tok-1", "", "tok-2"])
    assert manager.post("/patch-management", rows).status_code == 303
    saved = policy(app, "Pilot iPhones")
    assert saved.beta_programs == [["AppleSeed for IT", "tok-1"], ["Pilot", "tok-2"]]   # the blank row is ignored
    page = manager.get(f"/patch-management/{saved.id}").text
    assert page.count('class="beta-row"') == 2 + 1  # two programs and the template row
    assert 'value="AppleSeed for IT"' in page and 'value="tok-2"' in page
    # A half-filled row is refused by its number, in words; removing every row clears the programs.
    half = manager.post(f"/patch-management/{saved.id}", dict(VALID, policy_id=str(saved.id),
                                                             beta_description=["AppleSeed for IT", "Pilot"],
                                                             beta_token=["tok-1", ""]))
    assert half.status_code == 422
    assert error_slot(half.text, "beta_programs") == "Beta program 2 (Pilot) needs a seeding-service token"
    assert 'value="Pilot"' in half.text  # what was typed is kept
    cleared = manager.post(f"/patch-management/{saved.id}", dict(VALID, policy_id=str(saved.id)))
    assert cleared.status_code == 303 and policy(app, "Pilot iPhones").beta_programs == []
    # Read Only sees the descriptions, never the tokens.
    manager.post(f"/patch-management/{saved.id}", dict(rows, policy_id=str(saved.id)))
    reader_page = signed_in(app, Role.ReadOnly, "reader").get(f"/patch-management/{saved.id}").text
    assert 'value="AppleSeed for IT"' in reader_page and "tok-1" not in reader_page


# ---- error pages and favicon ------------------------------------------------------------------------

def test_404_is_a_styled_page_in_the_app_frame(app):
    reader = signed_in(app, Role.ReadOnly, "reader")
    for path in ("/no-such-page", "/patch-management/424242", "/devices/424242"):
        missing = reader.get(path)
        assert missing.status_code == 404 and missing.mimetype == "text/html"
        assert '<div class="error-page" id="error-page">' in missing.text and "Page not found" in missing.text
        assert 'class="sidenav"' in missing.text and "reader" in missing.text  # inside the frame, signed in
    fragment = reader.get("/devices/424242/results", htmx=True)
    assert fragment.status_code == 404 and "<html" not in fragment.text and "Page not found" in fragment.text
    anonymous = app.test_client().get("/no-such-page", base_url="https://localhost")
    assert anonymous.status_code == 404 and "Page not found" in anonymous.text and 'class="sidenav"' not in anonymous.text


def test_500_is_a_styled_page_without_the_exception(app):
    reader = signed_in(app, Role.ReadOnly, "reader")

    def broken():
        raise RuntimeError("secret internals")
    broken.required_role = Role.ReadOnly
    app.config["PROPAGATE_EXCEPTIONS"] = False   # as in production: the error handler answers
    app.view_functions["audit_log.index"] = broken
    failed = reader.get("/audit")
    assert failed.status_code == 500 and "Something went wrong" in failed.text
    assert 'class="sidenav"' in failed.text and "secret internals" not in failed.text


def test_api_and_device_facing_errors_are_unchanged_in_kind(app):
    token = make_token(app, "reader-api", Role.ReadOnly)
    client = app.test_client()
    api_missing = client.get("/api/v1/no-such-thing", base_url="https://localhost",
                             headers={"Authorization": f"Bearer {token}"})
    assert api_missing.status_code == 404 and api_missing.is_json and "/api/v1/no-such-thing" in api_missing.json["error"]
    assert client.get("/api/v1/devices/424242", base_url="https://localhost",
                      headers={"Authorization": f"Bearer {token}"}).json == {"error": "no device 424242"}
    device_missing = client.get("/enroll/no-such-token", base_url="https://localhost")
    assert device_missing.status_code == 404 and "error-page" not in device_missing.text
    assert 'class="sidenav"' not in device_missing.text


def test_the_app_serves_its_favicon(app):
    client = app.test_client()
    icon = client.get("/favicon.ico", base_url="https://localhost")
    assert icon.status_code == 200 and icon.mimetype == "image/vnd.microsoft.icon"
    assert icon.data[:4] == b"\x00\x00\x01\x00" and b"\x89PNG" in icon.data   # an ICO holding a PNG
    svg = client.get("/static/ui/favicon.svg", base_url="https://localhost")
    assert svg.status_code == 200 and svg.mimetype == "image/svg+xml"
    login = client.get("/login", base_url="https://localhost").text
    assert 'rel="icon" href="/static/ui/favicon.svg"' in login


# ---- device list: search anywhere, sorting, patch columns, chips --------------------------------------

@pytest.fixture
def fleet(app):
    load_current_catalog(app)
    ids = add_devices(app, [iphone("Alpha front desk", "C0AAA111", os_version="17.5"),
                            iphone("Bravo warehouse", "C0BBB222", os_version="18.0"),
                            iphone("Charlie lobby", "C0CCC333", os_version="16.7.2", udid="UDID-XYZ-9F3E"),
                            {"device_name": "Delta Mac", "serial_number": "C0DDD444", "product_name": "Mac14,2",
                             "os_version": "14.5"}])
    from mdm.ddm.policies import bind_policy, create_policy
    with app.app_context():
        p = create_policy({"name": "Ring", "enforce": True, "local_time": "18:00", "grace_days": 3})
        bind_policy(p, devices=ids[:2])
    return ids


def names_in(page: str) -> list[str]:
    return re.findall(r'<td><a href="/devices/\d+">([^<]+)</a></td>', page)


def test_search_matches_any_part_of_name_serial_and_udid(app, fleet):
    reader = signed_in(app, Role.ReadOnly, "reader")
    assert names_in(reader.get("/devices?q=warehouse").text) == ["Bravo warehouse"]   # middle of the name
    assert names_in(reader.get("/devices?q=CCC3").text) == ["Charlie lobby"]          # middle of the serial
    assert names_in(reader.get("/devices?q=xyz-9f").text) == ["Charlie lobby"]        # UDID, any case
    assert names_in(reader.get("/devices?q=100%25").text) == []                       # % is literal


def test_the_device_list_sorts_by_its_columns(app, fleet):
    reader = signed_in(app, Role.ReadOnly, "reader")
    assert names_in(reader.get("/devices").text) == ["Alpha front desk", "Bravo warehouse", "Charlie lobby",
                                                     "Delta Mac"]
    by_name_desc = reader.get("/devices?sort=-name").text
    assert names_in(by_name_desc) == ["Delta Mac", "Charlie lobby", "Bravo warehouse", "Alpha front desk"]
    assert 'aria-sort="descending"' in by_name_desc
    assert names_in(reader.get("/devices?sort=serial").text)[0] == "Alpha front desk"
    assert names_in(reader.get("/devices?sort=-os").text)[0] == "Bravo warehouse"
    # Patch columns sort too; devices without a plan come last either way.
    assert names_in(reader.get("/devices?sort=target").text)[2:] == ["Charlie lobby", "Delta Mac"]
    assert set(names_in(reader.get("/devices?sort=-deadline").text)[2:]) == {"Charlie lobby", "Delta Mac"}
    header = re.search(r'<a class="sort" href="([^"]+)" data-sort="name">', by_name_desc).group(1)
    assert html.unescape(header) == "/devices"   # clicking the sorted column again flips back
    assert "sort: one of" in reader.get("/devices?sort=password_hash").text   # whitelist only
    assert names_in(reader.get("/devices?sort=name;drop").text)[0] == "Alpha front desk"


def test_the_device_list_shows_patch_status_target_and_deadline(app, fleet):
    from mdm.ddm.models import DevicePatchTarget
    reader = signed_in(app, Role.ReadOnly, "reader")
    page = reader.get("/devices").text
    assert "<th" in page and ">Patch status" in page and ">Target" in page and ">Deadline" in page
    with app.app_context():
        plan = db.session.get(DevicePatchTarget, fleet[0])
        target, deadline = plan.target_version, plan.deadline_local
    row = re.search(r'Alpha front desk</a></td>.*?</tr>', page, re.S).group(0)
    assert target and f"<td>{target}</td>" in row
    assert deadline and deadline.replace("T", " ") in row and "device time" in row
    assert re.search(r'<td class="patch-state"><span class="badge [a-z]*">(Pending|Scheduled|Unknown|Compliant)', row)
    mac_row = re.search(r'Delta Mac</a></td>.*?</tr>', page, re.S).group(0)
    assert '<td class="patch-state"><span class="muted">—</span></td>' in mac_row


def test_active_filters_show_as_removable_chips(app, fleet):
    with app.app_context():
        group = DeviceGroup(name="Front office")
        db.session.add(group)
        db.session.commit()
        group_id = group.id
    reader = signed_in(app, Role.ReadOnly, "reader")
    page = reader.get(f"/devices?q=desk&platform=iOS,iPadOS&group={group_id}&sort=-name").text
    chips = dict(re.findall(r'<span class="chip" data-filter="(\w+)">[^<]*<a class="remove" href="([^"]+)"', page))
    labels = re.findall(r'<span class="chip" data-filter="\w+">([^<]*)<a', page)
    assert labels == ["Search: “desk”", "Platform: iOS &amp; iPadOS", "Group: Front office"]
    assert html.unescape(chips["q"]) == f"/devices?platform=iOS,iPadOS&group={group_id}&sort=-name"
    assert html.unescape(chips["group"]) == "/devices?q=desk&platform=iOS,iPadOS&sort=-name"
    assert "Clear all" in page
    assert 'class="chips"' not in reader.get("/devices").text


# ---- audit: changed fields and the name ---------------------------------------------------------------

def test_update_audit_entries_hold_only_the_changed_fields_and_the_name(app):
    manager = signed_in(app, Role.Manager, "mgr")
    manager.post("/patch-management", VALID)
    saved = policy(app, "Pilot iPhones")
    manager.post(f"/patch-management/{saved.id}", dict(VALID, policy_id=str(saved.id), deferral_days="9",
                                                       name="Pilot phones"))
    manager.post(f"/patch-management/{saved.id}", dict(VALID, policy_id=str(saved.id), deferral_days="9",
                                                       name="Pilot phones"))    # no change: no entry
    with app.app_context():
        [event] = AuditEvent.query.filter_by(action="patch_policy.update").all()
        assert event.before == {"deferral_days": 5, "name": "Pilot iPhones"}
        assert event.after == {"deferral_days": 9, "name": "Pilot phones"}
        assert event.detail == "Pilot phones"
    log = manager.get("/audit?action=patch_policy.update").text
    assert '<strong class="object-name">Pilot phones</strong>' in log
    changes = [html.unescape(re.sub(r"<[^>]+>", "", c)).strip()
               for c in re.findall(r'<li data-field="\w+">(.*?)</li>', log, re.S)]
    assert changes == ["Defer OS updates: 5 → 9", "Name: Pilot iPhones → Pilot phones"]


def test_old_whole_object_update_entries_are_shown_as_changes(app):
    from mdm.models import audit
    with app.app_context():
        audit("patch_policy.update", actor="old", object_type="patch_policy", object_id=7,
              before={"name": "Legacy", "deferral_days": 1, "grace_days": 30},
              after={"name": "Legacy", "deferral_days": 1, "grace_days": 10})
        db.session.commit()
    log = signed_in(app, Role.ReadOnly, "reader").get("/audit?action=patch_policy.update").text
    assert '<strong class="object-name">Legacy</strong>' in log
    changes = re.findall(r'<li data-field="(\w+)">', log)
    assert changes == ["grace_days"] and "Grace period" in log
