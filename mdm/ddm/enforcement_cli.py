"""``flask mdm enforcement create|list|show|edit|delete|bind|unbind|results|preview``: Software Update
Enforcement policies (one specific iOS/iPadOS version by a set date and device-local time).

Every command takes ``--json``; errors are the service's, as {"ok": false, "errors": [{field, message}]}.
The CLI is an edge: it commits what the service flushed.
"""
from __future__ import annotations

import click

from ..cli import mdm_cli
from . import enforcement
from .cli import ACTOR, _emit, _run, json_option   # the DDM room's one set of CLI helpers

@mdm_cli.group("enforcement")
def enforcement_cli():
    """Software Update Enforcement policies: one specific iOS version by a set date and time."""


def _field_options(func):
    options = [
        click.option("--name"),
        click.option("--version", "target_version", help="Target OS version, e.g. 26.6.1."),
        click.option("--build", "target_build", help="Optional target build, e.g. 23G83; '' removes it."),
        click.option("--at", "enforce_at", metavar="YYYY-MM-DDTHH:MM",
                     help="Device-local date and time by which the device installs it."),
        click.option("--details-url", help="http(s):// page about the update; '' removes it."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _changes(opts: dict) -> dict:
    return {f: opts[f] for f in enforcement.FIELDS if opts.get(f) is not None}


def _lines(summary: dict):
    yield f"{summary['id']}: {summary['name']}  [{summary['platform']}]"
    yield f"  target: {summary['target_version']}" + (f" ({summary['target_build']})" if summary["target_build"] else "")
    yield f"  by: {summary['enforce_at']} device-local time"
    if summary["details_url"]:
        yield f"  details: {summary['details_url']}"
    bindings = ", ".join(f"group {b['group']}" if "group" in b else f"device {b.get('serial_number') or b['device']}"
                         for b in summary["bindings"]) or "none"
    yield f"  bound to: {bindings}  ({summary['devices']} device(s))"
    for warning in summary["warnings"]:
        yield f"  warning: {warning}"


@enforcement_cli.command("create")
@_field_options
@json_option
def create(as_json, **opts):
    """Create an enforcement policy (--name --version [--build] --at [--details-url])."""
    policy = _run(as_json, enforcement.create_policy, _changes(opts), actor=ACTOR)
    summary = enforcement.policy_summary(policy)
    _emit(as_json, {"ok": True, "policy": summary}, lambda: [f"created enforcement policy {policy.id}: {policy.name}"])


@enforcement_cli.command("edit")
@click.argument("policy")
@_field_options
@json_option
def edit(policy, as_json, **opts):
    """Change some fields of POLICY (id or name)."""
    updated = _run(as_json, enforcement.update_policy, policy, _changes(opts), actor=ACTOR)
    summary = enforcement.policy_summary(updated)
    _emit(as_json, {"ok": True, "policy": summary}, lambda: _lines(summary))


@enforcement_cli.command("list")
@json_option
def list_(as_json):
    """List enforcement policies."""
    summaries = [enforcement.policy_summary(p) for p in enforcement.list_policies()]

    def lines():
        if not summaries:
            yield "no enforcement policies"
        for s in summaries:
            yield (f"{s['id']:>4}  {s['name']:<28} {s['target_version']:<10} by {s['enforce_at']}  "
                   f"bindings {len(s['bindings'])}  devices {s['devices']}")
    _emit(as_json, {"ok": True, "policies": summaries}, lines)


@enforcement_cli.command("show")
@click.argument("policy")
@json_option
def show(policy, as_json):
    """Show one enforcement policy with its bindings and catalog warnings."""
    found = _run(as_json, enforcement.require_policy, policy)
    summary = enforcement.policy_summary(found)
    _emit(as_json, {"ok": True, "policy": summary}, lambda: _lines(summary))


@enforcement_cli.command("delete")
@click.argument("policy")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
def delete(policy, yes, as_json):
    """Delete POLICY; its declaration leaves every device on their next sync."""
    found = _run(as_json, enforcement.require_policy, policy)
    name = found.name
    if not yes and not as_json:
        click.confirm(f"Delete enforcement policy {name!r}?", abort=True)
    changed = _run(as_json, enforcement.delete_policy, found, actor=ACTOR)
    _emit(as_json, {"ok": True, "deleted": name, "devices_changed": len(changed)},
          [f"deleted enforcement policy {name}; {len(changed)} device(s) will sync"])


@enforcement_cli.command("bind")
@click.argument("policy")
@click.option("--device", "devices", multiple=True, help="Device id, UDID or serial number (repeat).")
@click.option("--group", "groups_", multiple=True, help="Device group name (repeat).")
@json_option
def bind(policy, devices, groups_, as_json):
    """Bind POLICY to devices and/or device groups (iOS/iPadOS members only)."""
    created = _run(as_json, enforcement.bind_policy, policy, devices=devices, groups=groups_, actor=ACTOR)
    summary = enforcement.policy_summary(enforcement.require_policy(policy))
    _emit(as_json, {"ok": True, "bindings_created": len(created), "warnings": summary["warnings"]},
          [f"{len(created)} binding(s) created"] + [f"warning: {w}" for w in summary["warnings"]])


@enforcement_cli.command("unbind")
@click.argument("policy")
@click.option("--device", "devices", multiple=True)
@click.option("--group", "groups_", multiple=True)
@json_option
def unbind(policy, devices, groups_, as_json):
    """Remove bindings of POLICY."""
    removed = _run(as_json, enforcement.unbind_policy, policy, devices=devices, groups=groups_, actor=ACTOR)
    _emit(as_json, {"ok": True, "bindings_removed": removed}, [f"{removed} binding(s) removed"])


@enforcement_cli.command("results")
@click.argument("policy")
@json_option
def results(policy, as_json):
    """Per-device results of POLICY: state, and which enforcement acts first where a device holds several."""
    found = _run(as_json, enforcement.require_policy, policy)
    rows = _run(as_json, enforcement.results_for_policy, found)
    data = [r.as_dict() for r in rows]

    def lines():
        if not data:
            yield f"{found.name}: no devices"
        for r in data:
            device = r["serial_number"] or r["udid"]
            yield f"{device:<24} {r['state']:<14} {r['os_version'] or '-':<8} {r['detail']}"
            if r["effective"]:
                yield f"{'':<24} which wins: {r['effective']}"
    _emit(as_json, {"ok": True, "policy": found.name, "results": data}, lines)


@enforcement_cli.command("preview")
@click.argument("policy")
@json_option
def preview(policy, as_json):
    """What POLICY sends to each device it reaches, and which enforcement each device acts on first."""
    found = _run(as_json, enforcement.require_policy, policy)
    data = enforcement.preview(found)

    def lines():
        for warning in data["warnings"]:
            yield f"warning: {warning}"
        for d in data["devices"]:
            device = d["serial_number"] or d["udid"]
            sent = "sends declaration" if d["sends_declaration"] else f"no declaration: {d['why_not']}"
            yield f"{device:<24} {d['os_version'] or '-':<8} {sent}"
            if d["effective"]:
                yield f"{'':<24} which wins: {d['effective']}"
    _emit(as_json, {"ok": True, **data}, lines)
