"""Patch Management pages: default rings, the policy form with inline validation, save, bind, preview,
results, delete, and Read Only refused."""
from __future__ import annotations

import json
import re

from mdm.accounts import Role
from mdm.extensions import db
from mdm.models import AuditEvent, DeviceGroup
from ui_support import VALID_POLICY_FORM as VALID
from ui_support import add_devices, iphone, load_current_catalog, signed_in


def error_slot(page: str, field: str) -> str:
    match = re.search(rf'<div id="err-{field}"[^>]*>(.*?)</div>\s*(?=<|$)', page, re.S)
    return match.group(1) if match else ""


def policy_id_of(app, name: str) -> int:
    from mdm.ddm.models import PatchPolicy
    with app.app_context():
        return PatchPolicy.query.filter_by(name=name).one().id


def test_load_defaults_button_only_when_empty_and_idempotent(app):
    manager = signed_in(app, Role.Manager, "mgr")
    page = manager.get("/patch-management").text
    assert "Load Default Policies &amp; Policy Groups" in page
    assert manager.post("/patch-management/load-defaults").status_code == 303
    assert "4 policy group(s) and 4 policy(ies) created" in manager.get("/patch-management").text
    page = manager.get("/patch-management").text
    assert "Load Default Policies" not in page
    for ring in ("Vanguard (iOS)", "Early Adoption (iOS)", "General Adoption (iOS)", "Late Adoption (iOS)"):
        assert ring in page
    manager.post("/patch-management/load-defaults")
    assert "already exist; nothing was created" in manager.get("/patch-management").text
    rings = manager.get("/policy-groups").text
    assert "Vanguard" in rings and "1 days / 3 days" in rings and "30 days / 10 days" in rings


def test_platform_chooser_offers_ios_only(app):
    manager = signed_in(app, Role.Manager, "mgr")
    chooser = manager.get("/patch-management/new").text
    assert 'href="/patch-management/new/iOS"' in chooser
    assert "macOS" in chooser and "Not available yet" in chooser and 'href="/patch-management/new/macOS"' not in chooser
    assert manager.get("/patch-management/new/macOS").status_code == 404


def test_invalid_combination_is_explained_in_place_then_fixed_and_saved(app):
    manager = signed_in(app, Role.Manager, "mgr")
    form = manager.get("/patch-management/new/iOS").text
    assert 'value="iOS patch policy"' in form  # a sensible default name
    bad = dict(VALID, auto_download="Allowed", auto_install_os="AlwaysOn")
    # As the admin types: the validation endpoint answers out-of-band swaps for every field's slot.
    live = manager.post("/patch-management/validate", bad, htmx=True)
    assert live.status_code == 200 and 'hx-swap-oob="true"' in live.text
    assert "Invalid global settings declaration" in error_slot(live.text, "auto_install_os")
    assert error_slot(live.text, "name") == ""
    # Saving anyway re-shows the form with the reason next to the field and nothing stored.
    refused = manager.post("/patch-management", bad)
    assert refused.status_code == 422
    assert "Invalid global settings declaration" in error_slot(refused.text, "auto_install_os")
    assert 'value="Pilot iPhones"' in refused.text  # what the admin typed is kept
    from mdm.ddm.models import PatchPolicy
    with app.app_context():
        assert PatchPolicy.query.count() == 0
    ok = manager.post("/patch-management/validate", VALID, htmx=True)
    assert "Invalid global" not in ok.text
    saved = manager.post("/patch-management", VALID)
    assert saved.status_code == 303
    policy_id = policy_id_of(app, "Pilot iPhones")
    assert saved.headers["Location"] == f"/patch-management/{policy_id}?tab=groups"
    with app.app_context():
        policy = db.session.get(PatchPolicy, policy_id)
        assert (policy.deferral_days, policy.enforce, policy.grace_days, policy.local_time, policy.details_url,
                policy.auto_download, policy.auto_install_os, policy.rsr_offer, policy.rsr_rollback,
                policy.beta_enrollment) == (5, True, 7, "18:30", "https://intranet.example.com/ios", "AlwaysOn",
                                            "AlwaysOn", True, False, "AlwaysOff")
        created = AuditEvent.query.filter_by(action="patch_policy.create").one()
        assert created.actor == "mgr" and created.after["deferral_days"] == 5


def test_field_errors_name_the_field(app):
    manager = signed_in(app, Role.Manager, "mgr")
    bad = dict(VALID, deferral_days="91", grace_days="400", local_time="25:00", details_url="ftp://x",
               beta_enrollment="AlwaysOff", beta_description="Seed", beta_token="tok")
    page = manager.post("/patch-management", bad).text
    assert "between 1 and 90" in error_slot(page, "deferral_days")
    assert "between 0 and 365" in error_slot(page, "grace_days")
    assert "HH:MM" in error_slot(page, "local_time")
    assert "http:// or https://" in error_slot(page, "details_url")
    assert "AlwaysOff" in error_slot(page, "beta_programs")
    no_time = dict(VALID, local_time="")
    assert "required when enforcement is on" in error_slot(manager.post("/patch-management", no_time).text,
                                                           "local_time")


def test_dependent_fields_are_ignored_while_enforcement_is_off(app):
    manager = signed_in(app, Role.Manager, "mgr")
    off = dict(VALID, enforce=["false"], local_time="not a time", grace_days="999")
    assert manager.post("/patch-management", off).status_code == 303
    from mdm.ddm.models import PatchPolicy
    with app.app_context():
        policy = PatchPolicy.query.one()
        assert (policy.enforce, policy.local_time, policy.grace_days) == (False, None, 30)
    page = manager.get(f"/patch-management/{policy.id}").text
    assert 'class="enforce-only"' in page  # hidden by CSS while the checkbox is off


def test_edit_bind_group_results_preview_and_delete(app):
    load_current_catalog(app)
    ids = add_devices(app, [iphone("Ring phone", "R1", os_version="17.5"),
                            {"device_name": "Office Mac", "serial_number": "R2", "product_name": "Mac14,2",
                             "os_version": "14.5"}])
    with app.app_context():
        group = DeviceGroup(name="Pilot group")
        db.session.add(group)
        db.session.commit()
        group_id = group.id
    manager = signed_in(app, Role.Manager, "mgr")
    manager.post("/patch-management", VALID)
    policy_id = policy_id_of(app, "Pilot iPhones")
    from mdm.ddm.group_admin import add_members
    with app.app_context():
        add_members(db.session.get(DeviceGroup, group_id), ids, actor="test")
    assert manager.post(f"/patch-management/{policy_id}/bindings", {"group_id": str(group_id)}).status_code == 303
    groups_tab = manager.get(f"/patch-management/{policy_id}?tab=groups").text
    assert "Pilot group" in groups_tab.split("Device groups bound")[1].split("</table>")[0]

    results = manager.get(f"/devices/{ids[0]}/results", htmx=True).text
    assert "Pilot iPhones" in results and "No patch policy reaches this device" not in results
    assert "No patch policy reaches this device" in manager.get(f"/devices/{ids[1]}/results", htmx=True).text
    listing = manager.get("/patch-management").text
    assert re.search(r"Pilot iPhones</a>.*?1 device\(s\)", listing, re.S)  # the Mac is not in scope

    preview = manager.post("/patch-management/preview", dict(VALID, policy_id=str(policy_id),
                                                             preview_device_id=str(ids[0])), htmx=True)
    assert preview.status_code == 200
    assert "com.apple.configuration.softwareupdate.enforcement.specific" in preview.text
    target = re.search(r"<dt>Target</dt><dd>([^<]+)</dd>", preview.text).group(1).strip()
    assert target.split(".")[0] in ("17", "18", "26")
    declaration = json.loads(re.search(r'<pre class="declaration">(.*?)</pre>', preview.text, re.S).group(1)
                             .replace("&#34;", '"').replace("&quot;", '"'))
    assert declaration["Payload"]["TargetLocalDateTime"].endswith("T18:30:00")
    assert declaration["Payload"]["DetailsURL"] == "https://intranet.example.com/ios"

    edited = manager.post(f"/patch-management/{policy_id}", dict(VALID, deferral_days="0", policy_id=str(policy_id)))
    assert edited.status_code == 303
    with app.app_context():
        change = AuditEvent.query.filter_by(action="patch_policy.update").one()
        assert (change.before["deferral_days"], change.after["deferral_days"]) == (5, 0)
    deleted = manager.delete(f"/patch-management/{policy_id}")
    assert deleted.headers["HX-Redirect"] == "/patch-management"
    assert manager.get(f"/patch-management/{policy_id}").status_code == 404


def test_read_only_sees_the_policy_but_cannot_change_it(app):
    manager = signed_in(app, Role.Manager, "mgr")
    manager.post("/patch-management", dict(VALID, beta_enrollment="Allowed", beta_description="Seed",
                                           beta_token="secret-token"))
    policy_id = policy_id_of(app, "Pilot iPhones")
    reader = signed_in(app, Role.ReadOnly, "reader")
    page = reader.get(f"/patch-management/{policy_id}").text
    assert "<fieldset disabled" in page and 'id="save-policy"' not in page and 'id="delete-policy"' not in page
    assert "secret-token" not in page
    refused = reader.post(f"/patch-management/{policy_id}", dict(VALID, name="Hijacked"))
    assert refused.status_code == 403 and "Manager role or higher" in refused.text
    assert reader.delete(f"/patch-management/{policy_id}").status_code == 403
    assert reader.post("/patch-management/load-defaults").status_code == 403
    assert policy_id_of(app, "Pilot iPhones") == policy_id
