"""``flask mdm patch|groups|catalog|recompute`` (``catalog sofa-sync``: the SOFA vulnerability feed): the policy engine from a terminal or a script.

Every command takes ``--json`` (machine-readable output; errors as {"ok": false, "errors": [...]}).
The CLI calls the same services and gets the same validation messages as the UI and the API.
"""
from __future__ import annotations

import dataclasses
import json
import sys

import click

from ..cli import mdm_cli
from ..unit_of_work import edge
from . import catalog, groups, policies, rings, sofa, spine
from .policies import PolicyError
from .results import results_for_policy

ACTOR = "cli"


def _emit(as_json: bool, data, text_lines) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str, sort_keys=True))
    else:
        for line in text_lines() if callable(text_lines) else text_lines:
            click.echo(line)


def _fail(as_json: bool, errors: list[dict]) -> None:
    if as_json:
        click.echo(json.dumps({"ok": False, "errors": errors}, indent=2))
    else:
        for e in errors:
            click.echo(f"error: {e['field']}: {e['message']}", err=True)
    sys.exit(1)


def _run(as_json: bool, func, *args, **kwargs):
    """Call a service and commit (a CLI command is an edge); turn its validation errors into the CLI's
    error output and exit status 1."""
    try:
        with edge(f"cli:{getattr(func, '__name__', 'command')}"):
            return func(*args, **kwargs)
    except PolicyError as exc:
        _fail(as_json, [{"field": e.field, "message": e.message} for e in exc.errors])
    except catalog.CatalogError as exc:
        _fail(as_json, [{"field": "catalog", "message": str(exc)}])
    except sofa.SofaError as exc:
        _fail(as_json, [{"field": "sofa", "message": str(exc)}])


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")


# ---- patch ------------------------------------------------------------------------------------------

@mdm_cli.group("patch")
def patch_cli():
    """iOS patch policies: deferral, enforced deadline, automatic actions, rings, results."""


def _setting_options(func):
    """The policy fields as options; an option left out keeps the current value (edit) or the default."""
    options = [
        click.option("--name"),
        click.option("--deferral-days", help="0 (none) or 1-90."),
        click.option("--enforce/--no-enforce", default=None, help="Enforce the newest release by a deadline."),
        click.option("--grace-days", help="0-365 days after the deferral before installation is forced."),
        click.option("--local-time", help="HH:MM device-local time of the enforced installation."),
        click.option("--details-url", help="http(s):// page about the update; '' removes it."),
        click.option("--notifications", type=click.Choice(["all", "deadline-only"]), default=None,
                     help="All notifications, or only one hour before the deadline."),
        click.option("--cadence", help="All, Oldest or Newest."),
        click.option("--auto-download", help="Allowed (user controlled), AlwaysOn or AlwaysOff."),
        click.option("--auto-install-os", help="Allowed (user controlled), AlwaysOn or AlwaysOff."),
        click.option("--auto-install-security", help="Allowed (user controlled), AlwaysOn or AlwaysOff."),
        click.option("--rsr-offer/--no-rsr-offer", default=None, help="Offer Rapid Security Responses."),
        click.option("--rsr-rollback/--no-rsr-rollback", default=None, help="Allow RSR rollbacks."),
        click.option("--beta-enrollment", help="Allowed (user), AlwaysOn or AlwaysOff."),
        click.option("--beta-program", "beta_programs", multiple=True, metavar="DESCRIPTION=TOKEN",
                     help="An offered beta program (repeat). Replaces the list."),
        click.option("--no-beta-programs", is_flag=True, help="Remove every offered beta program."),
        click.option("--stay-on-major/--across-majors", default=None,
                     help="Stay within the device's current major version (default: newest across majors)."),
        click.option("--deadline-anchor", type=click.Choice(["first_missed", "newest"]), default=None,
                     help="Count the deadline from the first release a device missed (default for new policies), "
                          "or from the newest (the clock restarts with each release)."),
        click.option("--exploited-grace-days", metavar="DAYS|off",
                     help="Shorter grace period when a missed release fixes an actively exploited "
                          "vulnerability (SOFA); 'off' removes it."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _changes(opts: dict) -> dict:
    changes = {}
    for field in policies.SETTING_FIELDS:
        if field in ("beta_programs", "notifications_all"):
            continue
        if opts.get(field) is not None:
            changes[field] = opts[field]
    if opts.get("notifications") is not None:
        changes["notifications_all"] = opts["notifications"] == "all"
    if opts.get("no_beta_programs"):
        changes["beta_programs"] = []
    elif opts.get("beta_programs"):
        changes["beta_programs"] = list(opts["beta_programs"])
    return changes


def _policy_lines(summary: dict):
    yield f"{summary['id']}: {summary['name']}  [{summary['platform']}]" + (
        f"  ring: {summary['policy_group']}" if summary["policy_group"] else "")
    keys = [k for k in policies.SETTING_FIELDS if k != "name"]
    for key in keys:
        yield f"  {key}: {summary[key]}"
    bindings = ", ".join(b.get("group") and f"group {b['group']}" or f"device {b.get('serial_number') or b['device']}"
                         for b in summary["bindings"]) or "none"
    yield f"  bound to: {bindings}"
    yield f"  devices with this policy: {summary['devices']}"


@patch_cli.command("create")
@_setting_options
@json_option
def patch_create(as_json, **opts):
    """Create an iOS patch policy."""
    policy = _run(as_json, policies.create_policy, _changes(opts), actor=ACTOR)
    summary = policies.policy_summary(policy)
    _emit(as_json, {"ok": True, "policy": summary}, lambda: [f"created policy {policy.id}: {policy.name}"])


@patch_cli.command("edit")
@click.argument("policy")
@_setting_options
@json_option
def patch_edit(policy, as_json, **opts):
    """Change some fields of POLICY (id, name or ring name)."""
    updated = _run(as_json, policies.update_policy, policy, _changes(opts), actor=ACTOR)
    summary = policies.policy_summary(updated)
    _emit(as_json, {"ok": True, "policy": summary}, lambda: _policy_lines(summary))


@patch_cli.command("list")
@json_option
def patch_list(as_json):
    """List patch policies."""
    summaries = [policies.policy_summary(p) for p in policies.list_policies()]

    def lines():
        if not summaries:
            yield "no patch policies (create one, or `flask mdm patch load-defaults`)"
        for s in summaries:
            enforcement = (f"enforce {s['grace_days']}d grace at {s['local_time']}" if s["enforce"]
                           else "no enforcement")
            yield (f"{s['id']:>4}  {s['name']:<28} defer {s['deferral_days']:>2}d  {enforcement:<30} "
                   f"bindings {len(s['bindings'])}  devices {s['devices']}")
    _emit(as_json, {"ok": True, "policies": summaries}, lines)


@patch_cli.command("show")
@click.argument("policy")
@json_option
def patch_show(policy, as_json):
    """Show one policy with its bindings."""
    found = _run(as_json, policies.require_policy, policy)
    summary = policies.policy_summary(found)
    _emit(as_json, {"ok": True, "policy": summary}, lambda: _policy_lines(summary))


@patch_cli.command("delete")
@click.argument("policy")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
def patch_delete(policy, yes, as_json):
    """Delete POLICY; its declarations leave every device on their next sync."""
    found = _run(as_json, policies.require_policy, policy)
    name = found.name
    if not yes and not as_json:
        click.confirm(f"Delete policy {name!r}?", abort=True)
    changed = _run(as_json, policies.delete_policy, found, actor=ACTOR)
    _emit(as_json, {"ok": True, "deleted": name, "devices_changed": len(changed)},
          [f"deleted policy {name}; {len(changed)} device(s) will sync"])


@patch_cli.command("bind")
@click.argument("policy")
@click.option("--device", "devices", multiple=True, help="Device id, UDID or serial number (repeat).")
@click.option("--group", "groups_", multiple=True, help="Device group name (repeat).")
@json_option
def patch_bind(policy, devices, groups_, as_json):
    """Bind POLICY to devices and/or device groups."""
    created = _run(as_json, policies.bind_policy, policy, devices=devices, groups=groups_, actor=ACTOR)
    _emit(as_json, {"ok": True, "bindings_created": len(created)}, [f"{len(created)} binding(s) created"])


@patch_cli.command("unbind")
@click.argument("policy")
@click.option("--device", "devices", multiple=True)
@click.option("--group", "groups_", multiple=True)
@json_option
def patch_unbind(policy, devices, groups_, as_json):
    """Remove bindings of POLICY."""
    removed = _run(as_json, policies.unbind_policy, policy, devices=devices, groups=groups_, actor=ACTOR)
    _emit(as_json, {"ok": True, "bindings_removed": removed}, [f"{removed} binding(s) removed"])


@patch_cli.command("load-defaults")
@json_option
def patch_load_defaults(as_json):
    """Create the default deployment rings (idempotent)."""
    results = _run(as_json, rings.load_default_rings, actor=ACTOR)

    def lines():
        for r in results:
            state = "created" if r.created_policy else "exists"
            yield f"{r.ring:<18} {r.policy:<26} {state}"
    _emit(as_json, {"ok": True, "rings": [r.as_dict() for r in results],
                    "created": sum(r.created_policy for r in results)}, lines)


def _result_dict(result) -> dict:
    if dataclasses.is_dataclass(result):
        return dataclasses.asdict(result)
    if isinstance(result, dict):
        return result
    return {k: v for k, v in vars(result).items() if not k.startswith("_")}


@patch_cli.command("results")
@click.argument("policy")
@json_option
def patch_results(policy, as_json):
    """Per-device results of POLICY: state, target, deadline."""
    found = _run(as_json, policies.require_policy, policy)
    rows = [_result_dict(r) for r in _run(as_json, results_for_policy, found.id)]

    def lines():
        if not rows:
            yield f"{found.name}: no devices"
        for r in rows:
            device = r.get("serial_number") or r.get("udid") or r.get("device_id")
            yield (f"{str(device):<24} {str(r.get('state')):<14} target {r.get('target_version') or '-':<8} "
                   f"deadline {r.get('deadline_local') or '-':<20} {r.get('detail') or ''}")
    _emit(as_json, {"ok": True, "policy": found.name, "results": rows}, lines)


# ---- groups -----------------------------------------------------------------------------------------

@mdm_cli.group("groups")
def groups_cli():
    """Static device groups (any OS); patch policies apply to their iOS members."""


@groups_cli.command("create")
@click.argument("name")
@click.option("--description", default="")
@json_option
def groups_create(name, description, as_json):
    group = _run(as_json, groups.create_group, name, description, actor=ACTOR)
    _emit(as_json, {"ok": True, "group": groups.group_summary(group)}, [f"created group {group.id}: {group.name}"])


@groups_cli.command("list")
@json_option
def groups_list(as_json):
    summaries = [groups.group_summary(g) for g in groups.list_groups()]
    _emit(as_json, {"ok": True, "groups": summaries},
          lambda: [f"{s['id']:>4}  {s['name']:<28} devices {len(s['devices']):>5}  "
                   f"policies {', '.join(s['policies']) or '-'}" for s in summaries] or ["no device groups"])


@groups_cli.command("add")
@click.argument("group")
@click.argument("devices", nargs=-1, required=True)
@json_option
def groups_add(group, devices, as_json):
    """Add DEVICES (id, UDID or serial number) to GROUP."""
    added = _run(as_json, groups.add_devices, group, devices, actor=ACTOR)
    _emit(as_json, {"ok": True, "added": sorted(added)}, [f"{len(added)} device(s) added"])


@groups_cli.command("remove")
@click.argument("group")
@click.argument("devices", nargs=-1, required=True)
@json_option
def groups_remove(group, devices, as_json):
    removed = _run(as_json, groups.remove_devices, group, devices, actor=ACTOR)
    _emit(as_json, {"ok": True, "removed": sorted(removed)}, [f"{len(removed)} device(s) removed"])


@groups_cli.command("rename")
@click.argument("group")
@click.argument("new_name")
@json_option
def groups_rename(group, new_name, as_json):
    renamed = _run(as_json, groups.rename_group, group, new_name, actor=ACTOR)
    _emit(as_json, {"ok": True, "group": groups.group_summary(renamed)}, [f"renamed to {renamed.name}"])


@groups_cli.command("delete")
@click.argument("group")
@json_option
def groups_delete(group, as_json):
    members = _run(as_json, groups.delete_group, group, actor=ACTOR)
    _emit(as_json, {"ok": True, "former_members": sorted(members)}, [f"deleted group {group}"])


# ---- catalog and recompute --------------------------------------------------------------------------

@mdm_cli.group("catalog")
def catalog_cli():
    """Apple's iOS release catalog (gdmf v2/pmv)."""


@catalog_cli.command("sync")
@click.option("--file", "file_", type=click.Path(dir_okay=False), help="Load a saved pmv JSON instead of fetching.")
@click.option("--url", help="Fetch from this URL instead of CATALOG_URL.")
@json_option
def catalog_sync(file_, url, as_json):
    """Refresh the catalog; a failure keeps the cached one."""
    result = _run(as_json, catalog.sync_catalog, file=file_, url=url, actor=ACTOR)
    status = catalog.catalog_status()
    _emit(as_json, {"ok": True, "sync": result.as_dict(), "status": status},
          [f"catalog from {result.source}: {result.added} added, {result.updated} updated, "
           f"{result.removed} removed, {result.unchanged} unchanged"] + [f"warning: {w}" for w in status["warnings"]])


@catalog_cli.command("list")
@click.option("--model", help="Only releases for this model (e.g. iPhone15,2).")
@click.option("--all", "include_all", is_flag=True, help="Include security responses.")
@json_option
def catalog_list(model, include_all, as_json):
    """List releases, newest first, with first posting and expiration dates."""
    catalog.ensure_catalog()
    data = sofa.releases_with_security(include_security_responses=include_all, model=model)
    status = catalog.catalog_status()
    status["sofa"] = sofa.sofa_status()

    def lines():
        yield f"source: {status['source']}  last success: {status['last_success_at']}"
        for w in status["warnings"] + ([status["sofa"]["problem"]] if status["sofa"]["problem"] else []):
            yield f"warning: {w}"
        for d in data:
            cves = "CVEs ?" if d["cves"] is None else f"{d['cves']} CVEs" + (
                f", {len(d['exploited_cves'])} actively exploited" if d["exploited_cves"] else "")
            yield (f"{d['version'] + (' ' + d['extra'] if d['extra'] else ''):<12} {d['build']:<12} "
                   f"first posted {d['first_posting_date']}  expires {d['expiration_date']}  "
                   f"{d['devices']:>3} devices  {cves}")
    _emit(as_json, {"ok": True, "status": status, "releases": data}, lines)


@catalog_cli.command("sofa-sync")
@click.option("--file", "file_", type=click.Path(dir_okay=False), help="Load a saved SOFA v2 iOS feed.")
@click.option("--url", help="Fetch from this URL instead of SOFA_URL.")
@json_option
def catalog_sofa_sync(file_, url, as_json):
    """Refresh the SOFA vulnerability feed (CVEs per release); a failure keeps the feed in use."""
    result = _run(as_json, sofa.sync_sofa, file=file_, url=url, actor=ACTOR)
    status = sofa.sofa_status()
    _emit(as_json, {"ok": True, "sync": result.as_dict(), "status": status},
          [f"SOFA feed from {result.source}: {result.releases} releases"
           + (" (changed; plans follow at the next recomputation)" if result.changed else " (unchanged)")])


@mdm_cli.command("recompute")
@click.option("--device", "devices", multiple=True, help="Only these devices (id, UDID or serial).")
@json_option
def recompute_command(devices, as_json):
    """Recompute targets and deadlines now; devices whose plan changed get a declarations sync."""
    ids = None
    if devices:
        found = [policies.find_device(d) for d in devices]
        missing = [d for d, f in zip(devices, found) if f is None]
        if missing:
            _fail(as_json, [{"field": "device", "message": f"no device {m!r}"} for m in missing])
        ids = [f.id for f in found]
    changed = _run(as_json, spine.replan, ids)
    _emit(as_json, {"ok": True, "changed": sorted(changed)}, [f"{len(changed)} device(s) changed"])


