"""``flask mdm push …``: the push certificate (CSR, install, show) and a manual push."""
from __future__ import annotations

import getpass
from pathlib import Path

import click
from flask.cli import AppGroup

from .cli import mdm_cli

push_cli = AppGroup("push", help="APNs push certificate and pushes.")
mdm_cli.add_command(push_cli)


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in this environment (containers)
        return "cli"


@push_cli.command("csr")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, writable=True),
              help="Write the CSR here (default: print it).")
def csr_command(out_path):
    """Generate a new push key (push.key.pending) and its certificate signing request."""
    from .pushcert import generate_csr
    csr = generate_csr(actor=_actor())
    if out_path:
        Path(out_path).write_bytes(csr)
        click.echo(f"CSR written to {out_path}", err=True)
    else:
        click.echo(csr.decode(), nl=False)
    click.echo("Next: have the CSR signed for MDM (vendor signing), upload it at identity.apple.com, then "
               "`flask mdm push install <the .pem Apple returns>`. The installed identity keeps working "
               "until then.", err=True)


@push_cli.command("install")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--password", default=None, help="Password of a PKCS#12 file or an encrypted PEM key.")
@click.option("--allow-topic-change", is_flag=True,
              help="Install even though enrolled devices use another topic (they must re-enroll).")
def install_command(file, password, allow_topic_change):
    """Install an Apple MDM push certificate (PEM from identity.apple.com, or PKCS#12 with its key)."""
    from .pushcert import PushCertError, install_certificate
    try:
        info = install_certificate(Path(file).read_bytes(), password,
                                   allow_topic_change=allow_topic_change, actor=_actor())
    except PushCertError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("Push certificate installed.")
    _echo_status(info)


@push_cli.command("show")
def show_command():
    """Show the push topic, expiry and whether it is the placeholder identity."""
    from .pushcert import status
    _echo_status(status())


@push_cli.command("send")
@click.argument("udid")
def send_command(udid):
    """Push to one device now and print APNs' answer."""
    from .extensions import db
    from .models import Device
    from .push import send_now
    device = db.session.scalar(db.select(Device).where(Device.udid == udid))
    if device is None:
        raise click.ClickException(f"no device with UDID {udid}")
    result = send_now([device.id])[0]
    parts = [f"{udid}: {result.status}"]
    if result.status_code is not None:
        parts.append(f"HTTP {result.status_code}")
    if result.apns_id:
        parts.append(f"apns-id {result.apns_id}")
    if result.reason:
        parts.append(result.reason)
    click.echo(" ".join(parts))
    if result.status not in ("sent",):
        raise SystemExit(1)


def _echo_status(info: dict) -> None:
    click.echo(f"Topic:      {info['topic']}")
    click.echo(f"Subject:    {info['subject']}")
    click.echo(f"Expires:    {info['not_after']:%Y-%m-%d %H:%M} UTC ({info['days_left']} days left)")
    if info["is_placeholder"]:
        click.echo("Kind:       PLACEHOLDER (signed by our own CA): enrollment and the simulator work, "
                   "pushes to Apple do not. Run `flask mdm push csr` to get a real one.")
    else:
        click.echo("Kind:       Apple push certificate")
    if info.get("pending_csr"):
        click.echo("Pending:    a CSR key is waiting for its certificate (push.key.pending)")
