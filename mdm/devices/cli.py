"""``flask mdm devices`` and ``flask mdm commands``: look at devices, queue a command, read its history."""
from __future__ import annotations

import getpass
import json
import plistlib
from pathlib import Path

import click

from ..protocol import queue
from ..cli import mdm_cli
from ..protocol.commands import CommandError
from ..protocol.commands.base import json_safe
from ..extensions import db
from ..models import Device, audit


def _iso(value):
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def device_row(device: Device) -> dict:
    return {
        "udid": device.udid, "name": device.device_name, "serial": device.serial_number,
        "enrollment": device.enrollment_status, "model": device.product_name or device.model,
        "os": device.os_version, "build": device.build_version, "supervised": device.is_supervised,
        "last_seen": _iso(device.last_seen_at),
    }


def command_row(command) -> dict:
    response = None
    if command.response:
        try:
            response = {k: v for k, v in plistlib.loads(command.response).items()
                        if k not in ("UDID", "CommandUUID")}
        except Exception:  # stored as received; show it is there even if unreadable
            response = {"raw_bytes": len(command.response)}
    return {
        "uuid": command.uuid, "request_type": command.request_type, "status": command.status,
        "not_now_count": command.not_now_count, "queued_by": command.queued_by,
        "queued_at": _iso(command.queued_at), "sent_at": _iso(command.sent_at),
        "completed_at": _iso(command.completed_at), "error_chain": command.error_chain,
        "response": json_safe(response),
    }


@mdm_cli.command("devices")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def devices_command(as_json):
    """List devices: UDID, name, serial, enrollment state, model, OS, supervised, last seen."""
    rows = [device_row(d) for d in Device.query.order_by(Device.id)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("No devices.")
        return
    columns = ("udid", "name", "serial", "enrollment", "model", "os", "supervised", "last_seen")
    table = [[("" if r[c] is None else str(r[c])) for c in columns] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in table)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)))
    for line in table:
        click.echo("  ".join(v.ljust(w) for v, w in zip(line, widths)))


def _cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no login name in some containers
        return "cli"


def _parse_params(pairs) -> dict:
    """KEY=VALUE; VALUE true/false -> bool, @path -> file bytes, a,b for the list parameters."""
    params = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{pair!r}: expected KEY=VALUE", param_hint="--param")
        key, value = pair.split("=", 1)
        if value in ("true", "false"):
            params[key] = value == "true"
        elif value.startswith("@"):
            params[key] = Path(value[1:]).read_bytes()
        elif key in ("queries", "identifiers"):
            params[key] = [v.strip() for v in value.split(",") if v.strip()]
        else:
            params[key] = value
    return params


@mdm_cli.command("commands")
@click.argument("udid")
@click.option("--queue", "request_type", help="Queue this command (e.g. DeviceInformation) and push.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Command parameter (repeatable), e.g. identifier=com.example.wifi, payload=@file.mobileconfig")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def commands_command(udid, request_type, params, as_json):
    """Queue a command for the device UDID and/or show its command history (newest first)."""
    device = Device.query.filter_by(udid=udid).one_or_none()
    if device is None:
        raise click.ClickException(f"no device with UDID {udid}")
    queued = None
    if request_type:
        try:
            queued = queue.enqueue(device, request_type, queued_by=_cli_actor(), **_parse_params(params))
        except CommandError as exc:
            db.session.rollback()
            raise click.ClickException(str(exc)) from None
        audit("command.queued", actor=_cli_actor(), object_type="command", object_id=queued.uuid,
              after={"device": udid, "request_type": request_type})
        db.session.commit()
    elif params:
        raise click.UsageError("--param needs --queue")
    rows = [command_row(c) for c in queue.history(device)]
    if as_json:
        click.echo(json.dumps({"queued": queued.uuid if queued else None, "commands": rows}, indent=2))
        return
    if queued:
        click.echo(f"Queued {request_type} {queued.uuid}")
    for row in rows:
        extra = f" not-now x{row['not_now_count']}" if row["not_now_count"] else ""
        click.echo(f"{row['queued_at']}  {row['uuid']}  {row['request_type']:<26} {row['status']}{extra}")
        if row["error_chain"]:
            click.echo(f"    errors: {json.dumps(row['error_chain'])}")
