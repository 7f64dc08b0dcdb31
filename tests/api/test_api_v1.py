"""The JSON API: token roles, devices, groups, commands, patch policies with the form's validation,
results, the OpenAPI description, and the CLI that makes tokens and accounts."""
from __future__ import annotations

import html

from mdm.accounts import AdminUser, ApiToken, Role
from mdm.models import AuditEvent, Command
from ui_support import HTTPS, Api, add_devices, iphone, load_current_catalog, make_token, signed_in


def test_tokens_are_required_and_checked(app):
    client = app.test_client()
    assert client.get("/api/v1/devices", base_url=HTTPS).status_code == 401
    bad = client.get("/api/v1/devices", headers={"Authorization": "Bearer mdm_not-a-token"}, base_url=HTTPS)
    assert bad.status_code == 401 and bad.json == {"error": "unknown or revoked API token"}
    # A signed-in browser session is not an API credential (so the API needs no CSRF token).
    browser = signed_in(app, Role.Administrator, "boss")
    assert browser.client.get("/api/v1/devices", base_url=HTTPS).status_code == 401
    secret = make_token(app, "ci", Role.ReadOnly)
    assert Api(app, secret)("GET", "/devices").status_code == 200
    with app.app_context():
        token = ApiToken.query.filter_by(name="ci").one()
        assert token.token_sha256 != secret and secret not in (token.prefix * 3)
        assert token.last_used_at is not None
    browser.get("/api-tokens")
    browser.post(f"/api-tokens/{token.id}/revoke")
    assert Api(app, secret)("GET", "/devices").status_code == 401


def test_devices_list_get_inventory(app):
    ids = add_devices(app, [iphone("Anna's iPhone", "AAA1", inventory={"IMEI": "35 1234"}),
                            iphone("Ben's iPhone", "BBB2", os_version="18.1", is_supervised=False)])
    api = Api(app, make_token(app, "ro", Role.ReadOnly))
    listed = api("GET", "/devices?supervised=no").json
    assert listed["total"] == 1 and listed["devices"][0]["serial_number"] == "BBB2"
    assert api("GET", "/devices?per_page=1&page=2").json["devices"][0]["device_name"] == "Ben's iPhone"
    assert api("GET", "/devices?seen=5").status_code == 400
    device = api("GET", f"/devices/{ids[0]}").json
    assert (device["platform"], device["os_version"], device["supervised"]) == ("iOS", "17.5", True)
    assert api("GET", f"/devices/{ids[0]}/inventory").json["inventory"] == {"IMEI": "35 1234"}
    assert api("GET", "/devices/999999").status_code == 404


def test_commands_queue_and_status(app):
    [device_id] = add_devices(app, [iphone("Phone", "CMD1")])
    reader = Api(app, make_token(app, "ro", Role.ReadOnly))
    helper = Api(app, make_token(app, "hd", Role.HelpDesk))
    assert reader("POST", f"/devices/{device_id}/commands", {"request_type": "DeviceInformation"}).status_code == 403
    queued = helper("POST", f"/devices/{device_id}/commands", {"request_type": "DeviceInformation"})
    assert queued.status_code == 201 and queued.json["status"] == "queued"
    assert reader("GET", f"/commands/{queued.json['uuid']}").json["request_type"] == "DeviceInformation"
    assert helper("POST", f"/devices/{device_id}/commands", {"request_type": "Nope"}).status_code == 400
    assert helper("POST", f"/devices/{device_id}/commands", {}).status_code == 400
    with app.app_context():
        assert Command.query.one().queued_by == "api:hd"
        assert AuditEvent.query.filter_by(action="command.queue").one().actor == "api:hd"


def test_groups_and_members(app):
    ids = add_devices(app, [iphone("P1", "G1"), {"device_name": "TV", "serial_number": "G2",
                                                  "product_name": "AppleTV14,1"}])
    api = Api(app, make_token(app, "mgr", Role.Manager))
    created = api("POST", "/groups", {"name": "Lobby", "description": "screens"})
    assert created.status_code == 201
    group_id = created.json["id"]
    assert api("POST", "/groups", {"name": "lobby"}).status_code == 409
    assert api("POST", "/groups", {"name": ""}).status_code == 400
    assert api("POST", f"/groups/{group_id}/members", {"device_ids": ids}).json == {"added": sorted(ids)}
    assert api("POST", f"/groups/{group_id}/members", {"device_ids": [424242]}).status_code == 400
    assert [d["platform"] for d in api("GET", f"/groups/{group_id}/members").json["devices"]] == ["iOS", "tvOS"]
    assert api("PATCH", f"/groups/{group_id}", {"name": "Lobby EU"}).json["name"] == "Lobby EU"
    assert api("DELETE", f"/groups/{group_id}/members/{ids[1]}").json == {"removed": [ids[1]]}
    assert api("GET", "/groups").json["groups"] == [{"id": group_id, "name": "Lobby EU", "description": "screens",
                                                     "created_at": api("GET", f"/groups/{group_id}").json["created_at"],
                                                     "members": 1}]
    assert api("DELETE", f"/groups/{group_id}").status_code == 204
    assert api("GET", f"/groups/{group_id}").status_code == 404


def test_policies_crud_with_the_same_validation_as_the_form(app):
    load_current_catalog(app)
    [device_id] = add_devices(app, [iphone("Phone", "POL1")])
    api = Api(app, make_token(app, "mgr", Role.Manager))
    bad = api("POST", "/policies", {"name": "API policy", "enforce": True, "local_time": "09:00",
                                    "auto_download": "Allowed", "auto_install_os": "AlwaysOn"})
    assert bad.status_code == 400
    [error] = bad.json["errors"]
    assert error["field"] == "auto_install_os" and "Invalid global settings declaration" in error["message"]
    # The same words the form shows next to the field:
    browser = signed_in(app, Role.Manager, "mgr-ui")
    form_page = browser.post("/patch-management", {"name": "API policy", "enforce": "true", "local_time": "09:00",
                                                   "auto_download": "Allowed", "auto_install_os": "AlwaysOn"}).text
    assert error["message"].startswith("Install OS updates can't be Always On while Download is User Controlled")
    assert error["message"].split(":")[0] in html.unescape(form_page)
    created = api("POST", "/policies", {"name": "API policy", "enforce": True, "local_time": "09:00",
                                        "deferral_days": 3, "grace_days": 2})
    assert created.status_code == 201
    policy_id = created.json["id"]
    assert api("POST", "/policies", {"name": "api POLICY"}).status_code == 409
    assert api("PATCH", f"/policies/{policy_id}", {"grace_days": 400}).json["errors"][0]["field"] == "grace_days"
    assert api("PATCH", f"/policies/{policy_id}", {"grace_days": 4}).json["grace_days"] == 4
    bound = api("POST", f"/policies/{policy_id}/bindings", {"devices": ["POL1"]})
    assert bound.status_code == 200 and bound.json["bindings"] == [{"device": "UDID-00000-POL1",
                                                                     "serial_number": "POL1"}]
    assert api("POST", f"/policies/{policy_id}/bindings", {"groups": ["nope"]}).status_code == 400
    results = api("GET", f"/policies/{policy_id}/results").json["results"]
    assert [(r["device_id"], r["policy_name"]) for r in results] == [(device_id, "API policy")]
    assert results[0]["target_version"] is not None and results[0]["deadline_local"].endswith("T09:00:00")
    device_results = api("GET", f"/devices/{device_id}/results").json["results"]
    assert device_results[0]["state"] == results[0]["state"]
    assert api("DELETE", f"/policies/{policy_id}/bindings", {"devices": ["POL1"]}).json["removed"] == 1
    assert api("DELETE", f"/policies/{policy_id}").status_code == 204
    assert api("GET", f"/policies/{policy_id}").status_code == 404


def test_load_defaults_is_idempotent(app):
    api = Api(app, make_token(app, "mgr", Role.Manager))
    first = api("POST", "/policies/load-defaults").json
    assert first["created"] is True and [r["ring"] for r in first["rings"]] == \
        ["Vanguard", "Early Adoption", "General Adoption", "Late Adoption"]
    again = api("POST", "/policies/load-defaults").json
    assert again["created"] is False and [r["policy_id"] for r in again["rings"]] == \
        [r["policy_id"] for r in first["rings"]]
    assert len(api("GET", "/policies").json["policies"]) == 4


def test_openapi_describes_every_route_with_its_role(app):
    spec = app.test_client().get("/api/v1/openapi.json", base_url=HTTPS).json
    assert spec["openapi"].startswith("3.") and spec["components"]["securitySchemes"]["token"]["scheme"] == "bearer"
    api_rules = {(r.rule[len("/api/v1"):], m.lower()) for r in app.url_map.iter_rules()
                 if r.endpoint.startswith("api.") and r.endpoint != "api.openapi"
                 for m in r.methods - {"HEAD", "OPTIONS"}}
    described = {(path.replace("{", "<int:").replace("}", ">") if "{command_uuid}" not in path
                  else path.replace("{command_uuid}", "<command_uuid>"), method)
                 for path, ops in spec["paths"].items() for method in ops}
    assert api_rules == described
    assert spec["paths"]["/policies"]["post"]["x-required-role"] == "Manager"
    assert spec["paths"]["/devices/{device_id}/commands"]["post"]["x-required-role"] == "HelpDesk"
    assert "auto_install_os" in spec["paths"]["/policies"]["post"]["requestBody"]["content"]["application/json"][
        "schema"]["properties"]


def test_cli_creates_tokens_and_administrators(app):
    runner = app.test_cli_runner()
    made = runner.invoke(args=["mdm", "api-token", "create", "--role", "HelpDesk", "--name", "deploy"])
    assert made.exit_code == 0, made.output
    secret = made.output.strip()
    api = Api(app, secret)
    assert api("GET", "/devices").status_code == 200
    assert api("POST", "/groups", {"name": "x"}).status_code == 403
    assert runner.invoke(args=["mdm", "api-token", "create", "--role", "Boss"]).exit_code != 0
    admin = runner.invoke(args=["mdm", "admin", "create", "carol", "--role", "Manager"])
    assert admin.exit_code == 0 and "Password: " in admin.output
    password = admin.output.split("Password: ")[1].strip()
    with app.app_context():
        assert AdminUser.query.filter_by(username="carol").one().role == "Manager"
    from ui_support import Browser
    assert Browser(app).login("carol", password).get("/patch-management/new").status_code == 200
    assert runner.invoke(args=["mdm", "admin", "create", "carol"]).exit_code != 0
