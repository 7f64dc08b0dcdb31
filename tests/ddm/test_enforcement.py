"""Software Update Enforcement policies (one specific version by a set date): validation on the real
feeds, the declaration each device gets (valid against Apple's schema) and how its set token moves,
compliance and "Not applicable", which enforcement wins next to a patch policy, results, preview,
audit, API and CLI."""
from __future__ import annotations

import datetime as dt
import json

import pytest

from appleschema import validate_declaration
from apps import FEEDS
from mdm.extensions import db
from mdm.models import AuditEvent, Device

FEED_2024 = json.loads((FEEDS / "gdmf-pmv-2024-09-20-sample.json").read_text())
NOW_2024 = dt.datetime(2024, 9, 20, 12)
TYPE = "com.apple.configuration.softwareupdate.enforcement.specific"


def in_days(days: int, time: str = "18:00") -> str:
    return (dt.date.today() + dt.timedelta(days=days)).isoformat() + "T" + time


@pytest.fixture
def feed2024(app):
    with app.app_context():
        from mdm.ddm import catalog
        catalog.apply_feed(FEED_2024, "test-feed", now=NOW_2024)
        db.session.commit()
        yield app


@pytest.fixture
def current(app):
    """The packaged catalog snapshot moved to today: iPhone15,2 can take 26.6.1 (23G83), iPhone10,3 cannot."""
    with app.app_context():
        from ddm_kit import load_snapshot_as_of_today as load_current_catalog
        load_current_catalog()
        yield app


def add_device(udid, product_name="iPhone15,2", os_version="18.0", **extra):
    device = Device(udid=udid, serial_number=f"SN-{udid}", product_name=product_name, os_version=os_version,
                    build_version="X", enrollment_status="enrolled", is_supervised=True, push_token="ab" * 32,
                    push_magic="MAGIC", topic="com.apple.mgmt.External.test", **extra)
    db.session.add(device)
    db.session.commit()
    return device


def errors_of(data, **kwargs):
    from mdm.ddm.enforcement import validate
    kwargs.setdefault("now", NOW_2024)
    _settings, errors, _warnings = validate(data, **kwargs)
    return {e.field: e.message for e in errors}


VALID_2024 = {"name": "iOS 18 by Christmas", "target_version": "18.0", "enforce_at": "2024-12-18T18:00"}


# ---- validation on the real 2024-09-20 feed ---------------------------------------------------------

@pytest.mark.parametrize("change,field,fragment", [
    ({"enforce_at": "2024-09-19T18:00"}, "enforce_at", "must be in the future"),
    ({"enforce_at": "2024-09-20T11:59"}, "enforce_at", "must be in the future"),
    ({"enforce_at": "2024-12-18"}, "enforce_at", "YYYY-MM-DDTHH:MM"),
    ({"enforce_at": "2024-02-30T10:00"}, "enforce_at", "YYYY-MM-DDTHH:MM"),
    ({"enforce_at": "2024-12-18T25:00"}, "enforce_at", "YYYY-MM-DDTHH:MM"),
    ({"enforce_at": None}, "enforce_at", "is required"),
    ({"target_version": "eighteen"}, "target_version", "version number"),
    ({"target_version": ""}, "target_version", "is required"),
    ({"target_version": "19.0"}, "target_version", "not in Apple's catalog"),
    ({"target_version": "17.5"}, "target_version", "not in Apple's catalog"),   # 21L569 is not an iPhone/iPad build
    ({"target_build": "22A9999"}, "target_build", "not in Apple's catalog"),
    ({"target_build": "not a build"}, "target_build", "Apple build number"),
    ({"details_url": "ftp://example.com"}, "details_url", "http:// or https://"),
    ({"name": " "}, "name", "is required"),
    ({"colour": "red"}, "colour", "unknown field"),
])
def test_invalid_fields_are_named_with_the_reason(feed2024, change, field, fragment):
    errors = errors_of({**VALID_2024, **change})
    assert field in errors and fragment in errors[field], errors


@pytest.mark.parametrize("change", [{}, {"target_build": "22A3354"}, {"target_version": "17.7"},
                                    {"target_version": "16.7.10"}, {"enforce_at": "2024-09-20 12:01"},
                                    {"details_url": "https://intranet.example/ios18"}])
def test_valid_policies_pass(feed2024, change):
    assert errors_of({**VALID_2024, **change}) == {}


def test_version_must_exist_for_a_model_in_scope_and_others_are_warned_per_model(feed2024):
    from mdm.ddm.enforcement import validate
    phone = add_device("phone", "iPhone15,2", "17.6")           # 2024 feed: 18.0 listed for iPhone15,2
    old = add_device("old", "iPhone10,3", "16.7.8")             # iPhone X: 16.7.x only
    old2 = add_device("old2", "iPhone10,3", "16.7.8")
    settings, errors, warnings = validate(VALID_2024, scope_device_ids=[phone.id, old.id, old2.id], now=NOW_2024)
    assert errors == [] and settings.target_version == "18.0"
    assert warnings == ["iPhone10,3: 18.0 is not in Apple's catalog for iPhone10,3; its 2 device(s) are "
                        "Not applicable"]
    _settings, errors, warnings = validate(VALID_2024, scope_device_ids=[old.id], now=NOW_2024)
    assert [e.field for e in errors] == ["target_version"] and "any model in scope (iPhone10,3)" in errors[0].message


def test_an_expired_release_is_not_enforceable(feed2024):
    # 18.0 (22A3354) expires 2024-12-19 in this feed: Apple only enforces what gdmf still lists.
    later = dt.datetime(2024, 12, 20, 9)
    errors = errors_of({**VALID_2024, "enforce_at": "2025-01-10T09:00"}, now=later)
    assert "for any iPhone or iPad model, or it has expired" in errors["target_version"]
    from mdm.ddm.enforcement_scope import availability
    from mdm.ddm.plan import release_index
    assert "expired for iPhone15,2 on 2024-12-19" in availability(release_index(), "iPhone15,2", "18.0", None, later)
    # Expired ON its ExpirationDate (docs/patch-policies.md): the day before it is still enforceable.
    assert availability(release_index(), "iPhone15,2", "18.0", None, dt.datetime(2024, 12, 18, 23)) is None
    assert "expired" in availability(release_index(), "iPhone15,2", "18.0", None, dt.datetime(2024, 12, 19, 0, 1))


# ---- the service, the declaration, the set token -----------------------------------------------------

def _set(device):
    from mdm.ddm.state_models import DeclarationSet
    db.session.expire_all()
    return db.session.get(DeclarationSet, device.id)


def _enforcement_declarations(device):
    row = _set(device)
    return [d for d in (row.declarations if row else []) if d["Type"] == TYPE]


def test_a_bound_device_gets_one_valid_declaration_and_the_token_moves_with_edits(current):
    from mdm.ddm import enforcement as svc
    from mdm.models import Command
    phone = add_device("phone", "iPhone15,2", "18.0")
    policy = svc.create_policy({"name": "26.6.1 now", "target_version": "26.6.1", "target_build": "23G83",
                                "enforce_at": in_days(14), "details_url": "https://intranet.example/ios"},
                               actor="alice")
    svc.bind_policy(policy, devices=[phone.udid], actor="alice")
    db.session.commit()
    [declaration] = _enforcement_declarations(phone)
    assert declaration["Identifier"] == f"mdm.enforce.{policy.id}"
    assert declaration["Payload"] == {"TargetOSVersion": "26.6.1", "TargetBuildVersion": "23G83",
                                      "TargetLocalDateTime": in_days(14) + ":00",
                                      "DetailsURL": "https://intranet.example/ios"}
    for os_version in ("17.0", "18.0"):
        assert validate_declaration(declaration, "iOS", os_version, supervised=True) == []
    assert validate_declaration(declaration, "iOS", "18.0", supervised=False) == []   # device enrollment too
    token = _set(phone).declarations_token
    activation = next(d for d in _set(phone).declarations if d["Type"] == "com.apple.activation.simple")
    assert declaration["Identifier"] in activation["Payload"]["StandardConfigurations"]
    queued = Command.query.filter_by(device_id=phone.id, request_type="DeclarativeManagement",
                                     status="queued").count()
    assert queued == 1

    svc.update_policy(policy, {"enforce_at": in_days(20)}, actor="bob")
    db.session.commit()
    assert _set(phone).declarations_token != token
    assert _enforcement_declarations(phone)[0]["Payload"]["TargetLocalDateTime"] == in_days(20) + ":00"
    token = _set(phone).declarations_token
    svc.update_policy(policy, {"enforce_at": in_days(20)}, actor="bob")      # no change: same token
    assert _set(phone).declarations_token == token

    svc.unbind_policy(policy, devices=[phone.udid], actor="bob")
    db.session.commit()
    assert _enforcement_declarations(phone) == []
    svc.bind_policy(policy, devices=[phone.udid], actor="bob")
    svc.delete_policy(policy, actor="carol")
    db.session.commit()
    assert _enforcement_declarations(phone) == []
    events = [(e.action, e.actor) for e in AuditEvent.query.filter(AuditEvent.action.like("enforcement_policy.%"))
              .order_by(AuditEvent.id)]
    assert events == [("enforcement_policy.create", "alice"), ("enforcement_policy.bind", "alice"),
                      ("enforcement_policy.update", "bob"), ("enforcement_policy.unbind", "bob"),
                      ("enforcement_policy.bind", "bob"), ("enforcement_policy.delete", "carol")]
    update = AuditEvent.query.filter_by(action="enforcement_policy.update").one()
    assert set(update.after) == {"enforce_at"}


def test_compliant_not_applicable_and_mixed_groups(current):
    from mdm.ddm import enforcement as svc
    from mdm.ddm import groups
    on_target = add_device("done", "iPhone15,2", "26.6.1")
    behind = add_device("behind", "iPhone15,2", "18.0")
    old = add_device("iphonex", "iPhone10,3", "16.7.10")
    ios16 = add_device("ios16", "iPhone15,2", "16.7")
    mac = add_device("mac", "Mac14,2", "15.0")
    groups.create_group("Mixed")
    groups.add_devices("Mixed", [d.udid for d in (on_target, behind, old, ios16, mac)])
    policy = svc.create_policy({"name": "P", "target_version": "26.6.1", "enforce_at": in_days(7)})
    svc.bind_policy(policy, groups=["Mixed"])
    db.session.commit()
    assert [len(_enforcement_declarations(d)) for d in (on_target, behind, old, ios16, mac)] == [0, 1, 0, 0, 0]
    results = {r.udid: r for r in svc.results_for_policy(policy)}
    db.session.commit()
    assert results["done"].state == "Compliant"
    assert results["behind"].state in ("Pending", "Scheduled") and results["behind"].declared
    assert results["iphonex"].state == "Not applicable" and "not in Apple's catalog for iPhone10,3" in \
        results["iphonex"].detail
    assert results["ios16"].state == "Not applicable" and "below 17" in results["ios16"].detail
    assert results["mac"].state == "Not applicable" and "not an iOS" in results["mac"].detail
    summary = svc.policy_summary(policy)
    assert any(w.startswith("iPhone10,3:") and "Not applicable" in w for w in summary["warnings"])
    # Binding only devices that cannot take the version is refused, naming the field.
    lonely = svc.create_policy({"name": "Q", "target_version": "26.6.1", "enforce_at": in_days(7)})
    from mdm.ddm.policies import PolicyError
    with pytest.raises(PolicyError) as caught:
        svc.bind_policy(lonely, devices=[old.udid])
    assert caught.value.errors[0].field == "target_version"


def test_which_enforcement_wins_next_to_a_patch_policy(current):
    from mdm.ddm import enforcement as svc
    from mdm.ddm.policies import bind_policy, create_policy
    phone = add_device("phone", "iPhone15,2", "18.0")
    patch = create_policy({"name": "Patch", "enforce": True, "grace_days": 30, "local_time": "09:00"})
    bind_policy(patch, devices=[phone.udid])
    soon = svc.create_policy({"name": "Soon", "target_version": "26.6.1", "enforce_at": in_days(2)})
    late = svc.create_policy({"name": "Late", "target_version": "26.5.2", "enforce_at": in_days(60)})
    svc.bind_policy(soon, devices=[phone.udid])
    svc.bind_policy(late, devices=[phone.udid])
    db.session.commit()
    kinds = sorted(d["Identifier"] for d in _set(phone).declarations if d["Type"] == TYPE)
    assert kinds == sorted([f"mdm.enforce.{soon.id}", f"mdm.enforce.{late.id}", f"mdm.patch.{patch.id}.enforcement"])
    preview = svc.preview(soon)
    [row] = preview["devices"]
    assert row["acts_first"] == "enforcement policy 'Soon'"
    assert [e["label"] for e in row["enforcements"]][0] == "enforcement policy 'Soon'"
    assert "patch policy 'Patch'" in row["effective"] and "enforcement policy 'Late'" in row["effective"]
    [result] = svc.results_for_policy(late)
    db.session.commit()
    assert result.effective.startswith("acts first on enforcement policy 'Soon'")
    # The patch policy's own result says so too.
    from mdm.ddm.results import results_for_policy as patch_results
    [patch_result] = patch_results(patch.id)
    assert f"enforcement policy #{soon.id} acts first: 26.6.1 by {in_days(2)}:00" in patch_result.detail
    # Move "Soon" past the patch deadline: the patch policy's enforcement now acts first.
    from mdm.ddm.plan import patch_plan_for_device
    patch_deadline = patch_plan_for_device(phone).deadline_local
    svc.update_policy(soon, {"enforce_at": in_days(90)})
    db.session.commit()
    [row] = svc.preview(soon)["devices"]
    assert row["acts_first"] == "patch policy 'Patch'" and patch_deadline in row["effective"]
    [patch_result] = patch_results(patch.id)
    assert "(acts first; then enforcement policy" in patch_result.detail


def test_effective_order_is_earliest_deadline_then_highest_version():
    from mdm.ddm.enforcement_scope import Pending, effective_order
    a = Pending("a", "18.1", "2026-12-20T09:00:00", "enforcement", 1)
    b = Pending("b", "18.2", "2026-12-20T09:00:00", "enforcement", 2)
    c = Pending("c", "26.0", "2026-12-10T09:00:00", "patch", 3)
    assert [p.label for p in effective_order([a, b, c])] == ["c", "b", "a"]


def test_policy_state_never_breaks_a_device_sync(current, monkeypatch):
    from mdm.ddm import enforcement_scope, sync
    phone = add_device("phone", "iPhone15,2", "18.0")

    def broken(*_args, **_kwargs):
        raise RuntimeError("boom")
    monkeypatch.setattr(enforcement_scope, "for_devices", broken)
    computed = sync.compute_set(phone)
    assert any("enforcement policies could not be read" in n for n in computed.notes)
    assert {d["Type"] for d in computed.declarations} >= {"com.apple.activation.simple"}


# ---- API -----------------------------------------------------------------------------------------------

def test_api_crud_bindings_results_and_roles(current, app):
    from mdm.accounts import Role
    from ui_support import Api
    from ui_support import make_token
    phone = add_device("phone", "iPhone15,2", "18.0")
    reader = Api(app, make_token(app, "ro", Role.ReadOnly))
    manager = Api(app, make_token(app, "mgr", Role.Manager))
    body = {"name": "By Friday", "target_version": "26.6.1", "enforce_at": in_days(5)}
    assert reader("POST", "/enforcement-policies", body).status_code == 403
    bad = manager("POST", "/enforcement-policies", {**body, "enforce_at": "2020-01-01T10:00"})
    assert bad.status_code == 400 and bad.json["errors"][0]["field"] == "enforce_at"
    created = manager("POST", "/enforcement-policies", body)
    assert created.status_code == 201 and created.json["kind"] == "enforcement"
    pid = created.json["id"]
    assert manager("POST", "/enforcement-policies", body).status_code == 409      # same name
    for hostile in ({"target_version": 26.6}, {"enforce_at": 20261224}, {"name": ["x"]}, {"details_url": {}}):
        refused = manager("POST", "/enforcement-policies", {**body, "name": "Other", **hostile})
        assert refused.status_code == 400 and refused.json["errors"][0]["field"] == next(iter(hostile))
    assert manager("POST", "/enforcement-policies", ["not", "an", "object"]).status_code == 400
    assert manager("PATCH", "/enforcement-policies/999", {"name": "x"}).status_code == 404
    bound = manager("POST", f"/enforcement-policies/{pid}/bindings", {"devices": [phone.udid]})
    assert bound.status_code == 200 and bound.json["created"] == 1 and bound.json["devices"] == 1
    listed = reader("GET", "/enforcement-policies").json["policies"]
    assert [p["name"] for p in listed] == ["By Friday"]
    edited = manager("PATCH", f"/enforcement-policies/{pid}", {"details_url": "https://x.example/"})
    assert edited.status_code == 200 and edited.json["details_url"] == "https://x.example/"
    results = reader("GET", f"/enforcement-policies/{pid}/results").json["results"]
    assert [r["udid"] for r in results] == ["phone"] and results[0]["declared"] is True
    preview = reader("GET", f"/enforcement-policies/{pid}/preview").json
    assert preview["devices"][0]["sends_declaration"] is True
    assert validate_declaration(preview["devices"][0]["declaration"], "iOS", "18.0") == []
    assert manager("DELETE", f"/enforcement-policies/{pid}/bindings", {"devices": [phone.udid]}).json["removed"] == 1
    assert manager("DELETE", f"/enforcement-policies/{pid}").status_code == 204
    assert reader("GET", f"/enforcement-policies/{pid}").status_code == 404
    spec = app.test_client().get("/api/v1/openapi.json", base_url="https://localhost").json
    assert "requestBody" in spec["paths"]["/enforcement-policies"]["post"]
    assert spec["paths"]["/enforcement-policies/{policy_id}/results"]["get"]["x-required-role"] == "ReadOnly"


# ---- CLI -----------------------------------------------------------------------------------------------

def test_cli_create_bind_show_results_edit_unbind_delete(current, app):
    runner = app.test_cli_runner()
    phone = add_device("phone", "iPhone15,2", "18.0")

    def run(*args):
        result = runner.invoke(args=["mdm", "enforcement", *args, "--json"])
        return result.exit_code, json.loads(result.output)

    code, out = run("create", "--name", "CLI", "--version", "26.6.1", "--build", "23G83", "--at", in_days(9),
                    "--details-url", "https://intranet.example/")
    assert code == 0 and out["policy"]["target_build"] == "23G83"
    code, out = run("create", "--name", "Past", "--version", "26.6.1", "--at", "2020-01-01T10:00")
    assert code == 1 and out["errors"][0]["field"] == "enforce_at"
    code, out = run("bind", "CLI", "--device", phone.serial_number)
    assert code == 0 and out["bindings_created"] == 1
    code, out = run("show", "CLI")
    assert out["policy"]["bindings"] == [{"device": "phone", "serial_number": "SN-phone"}]
    code, out = run("results", "CLI")
    assert code == 0 and out["results"][0]["udid"] == "phone"
    code, out = run("preview", "CLI")
    assert out["devices"][0]["sends_declaration"] is True
    code, out = run("edit", "CLI", "--version", "26.5.2", "--build", "")
    assert code == 0 and out["policy"]["target_version"] == "26.5.2" and out["policy"]["target_build"] is None
    code, out = run("list")
    assert [p["name"] for p in out["policies"]] == ["CLI"]
    code, out = run("unbind", "CLI", "--device", phone.udid)
    assert out["bindings_removed"] == 1
    code, out = run("delete", "CLI")
    assert code == 0 and out["deleted"] == "CLI"
    text = runner.invoke(args=["mdm", "enforcement", "list"]).output
    assert "no enforcement policies" in text


# ---- UI: roles, CSRF, errors placed at their field -------------------------------------------------------

def test_ui_form_roles_csrf_and_field_errors(app):
    # No app context around the requests: Flask-WTF keeps the CSRF token in ``g`` per app context.
    from mdm.accounts import Role
    from mdm.ddm.enforcement_models import EnforcementPolicy
    from ui_support import add_devices, iphone, load_current_catalog, signed_in
    with app.app_context():
        load_current_catalog(app)
    add_devices(app, [iphone("Phone", "SN-phone", "18.0")])
    manager = signed_in(app, Role.Manager)
    page = manager.get("/patch-management/enforcement/new")
    assert page.status_code == 200 and 'list="catalog-versions"' in page.text and 'value="26.6.1"' in page.text
    form = {"name": "UI", "target_version": "26.6.1", "target_build": "", "enforce_at": in_days(4),
            "details_url": ""}
    bad = manager.post("/patch-management/enforcement", {**form, "target_version": "99.1"})
    assert bad.status_code == 422, bad.text
    assert 'id="error-target_version"' in bad.text and "99.1" in bad.text
    assert 'value="UI"' in bad.text                       # what was typed stays in the form
    assert manager.post("/patch-management/enforcement", form).status_code == 303
    with app.app_context():
        policy_id = EnforcementPolicy.query.one().id
    assert manager.post(f"/patch-management/enforcement/{policy_id}/bindings", {"device": "SN-phone"}).status_code == 303
    detail = manager.get(f"/patch-management/enforcement/{policy_id}")
    assert 'id="enforcement-results"' in detail.text and "sent: 26.6.1 by" in detail.text

    reader = signed_in(app, Role.ReadOnly)
    view = reader.get(f"/patch-management/enforcement/{policy_id}")
    assert view.status_code == 200 and 'id="save-enforcement"' not in view.text
    assert reader.post(f"/patch-management/enforcement/{policy_id}", form).status_code == 403
    assert reader.post(f"/patch-management/enforcement/{policy_id}/delete").status_code == 403
    refused = manager.post(f"/patch-management/enforcement/{policy_id}/delete", csrf=False)
    assert refused.status_code == 400 and "CSRF" in refused.text
    with app.app_context():
        assert EnforcementPolicy.query.count() == 1
        events = AuditEvent.query.filter(AuditEvent.action.like("enforcement_policy.%")).all()
        assert {e.actor for e in events} == {"manager-user"}
    assert manager.post(f"/patch-management/enforcement/{policy_id}/delete").status_code == 303
    with app.app_context():
        assert EnforcementPolicy.query.count() == 0


def test_the_device_page_lists_the_enforcement_policies_reaching_the_device(app):
    """The device page shows each enforcement policy reaching the device with its state, next to the
    patch results; the 30-second results fragment carries them too; a device no policy reaches has none."""
    from mdm.accounts import Role
    from mdm.ddm import enforcement as svc
    from ui_support import add_devices, iphone, load_current_catalog, signed_in
    with app.app_context():
        load_current_catalog(app)
    add_devices(app, [iphone("Phone", "SN-phone", "18.0"), iphone("Done", "SN-done", "26.6.1"),
                      iphone("Other", "SN-other", "18.0")])
    with app.app_context():
        policy = svc.create_policy({"name": "By 26.6.1", "target_version": "26.6.1", "enforce_at": in_days(5)})
        svc.bind_policy(policy, devices=["SN-phone", "SN-done"])
        db.session.commit()
        ids = {d.serial_number: d.id for d in Device.query}
    reader = signed_in(app, Role.ReadOnly)
    page = reader.get(f"/devices/{ids['SN-phone']}")
    assert page.status_code == 200 and 'id="enforcement-results"' in page.text
    assert "By 26.6.1" in page.text and "26.6.1" in page.text
    fragment = reader.get(f"/devices/{ids['SN-phone']}/results")
    assert 'id="enforcement-results"' in fragment.text and "By 26.6.1" in fragment.text
    done = reader.get(f"/devices/{ids['SN-done']}").text
    assert 'id="enforcement-results"' in done and "Compliant" in done.split('id="enforcement-results"')[1]
    assert 'id="enforcement-results"' not in reader.get(f"/devices/{ids['SN-other']}").text
    with app.app_context():
        phone = db.session.get(Device, ids["SN-phone"])
        (result,) = svc.results_for_device(phone)
        assert (result.policy_name, result.target_version, result.declared) == ("By 26.6.1", "26.6.1", True)
        assert result.state != "Compliant"


def test_a_version_leaving_the_catalog_leaves_the_devices(current):
    """Apple: remove deployed configurations whose version gdmf no longer lists. The hourly job does it."""
    from mdm.ddm import catalog
    from mdm.ddm import enforcement as svc
    from mdm.ddm.jobs import refresh_enforcement_sets
    from mdm.scheduler import _JOBS
    assert any(func is refresh_enforcement_sets for func, *_ in _JOBS)
    phone = add_device("phone", "iPhone15,2", "18.0")
    policy = svc.create_policy({"name": "P", "target_version": "26.6.1", "enforce_at": in_days(9)})
    svc.bind_policy(policy, devices=[phone.udid])
    db.session.commit()
    assert len(_enforcement_declarations(phone)) == 1
    catalog.apply_feed(FEED_2024, "an older feed without 26.6.1")
    db.session.commit()
    assert refresh_enforcement_sets(None) == {phone.id}
    assert _enforcement_declarations(phone) == []
    [result] = svc.results_for_policy(policy)
    assert result.state == "Not applicable" and "26.6.1 is not in Apple's catalog for iPhone15,2" in result.detail
