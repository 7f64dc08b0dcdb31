"""``flask mdm push …``: the push certificate (CSR, install, show) and a manual push."""
from __future__ import annotations

import getpass
from pathlib import Path

import click
from flask.cli import AppGroup

from ..cli import mdm_cli
from ..extensions import db
from ..models import Device
from .apns import send_now
from .cert_request import APPLE_PORTAL_URL
from .cert import (PushCertError, create_vendor_request, generate_csr, install_certificate,
                   open_signing_service_reply, status, submit_to_signing_service)

push_cli = AppGroup("push", help="APNs push certificate and pushes.")
mdm_cli.add_command(push_cli)


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in this environment (containers)
        return "cli"


@push_cli.command("csr")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, writable=True),
              help="Write the CSR (or, with --vendor-p12, Apple's push certificate request) here (default: print it).")
@click.option("--vendor-p12", type=click.Path(exists=True, dir_okay=False),
              help="Your MDM vendor certificate (MDM CSR signing) with its key, exported as .p12: sign the CSR "
                   "and write Apple's push certificate request.")
@click.option("--vendor-password", default=None, envvar="MDM_PUSH_VENDOR_PASSWORD", show_envvar=True,
              help="Password of the vendor .p12 (or the environment variable, to keep it out of `ps`).")
@click.option("--apple-chain", type=click.Path(exists=True, dir_okay=False),
              help="Apple's WWDR intermediate and root certificates (PEM), when the .p12 does not carry them.")
def csr_command(out_path, vendor_p12, vendor_password, apple_chain):
    """New push key (push.key.pending) and its CSR; with --vendor-p12, the signed request for Apple."""
    if vendor_p12 is None and (vendor_password or apple_chain):
        raise click.UsageError("--vendor-password and --apple-chain go with --vendor-p12")
    try:
        if vendor_p12:
            data = create_vendor_request(Path(vendor_p12).read_bytes(), vendor_password,
                                         Path(apple_chain).read_bytes() if apple_chain else None, actor=_actor())
        else:
            data = generate_csr(actor=_actor())
    except PushCertError as exc:
        raise click.ClickException(str(exc)) from None
    _write_or_echo(data, out_path, "push certificate request" if vendor_p12 else "CSR")
    if vendor_p12:
        click.echo(f"Next: upload it at {APPLE_PORTAL_URL} (Create a Certificate, or Renew the existing one to keep "
                   "the topic), then `flask mdm push install <the .pem Apple returns>`.", err=True)
    else:
        click.echo("Next: have the CSR signed for MDM (`--vendor-p12`, or a signing service with `flask mdm push "
                   "submit`), upload the request at identity.apple.com, then `flask mdm push install <the .pem "
                   "Apple returns>`. The installed identity keeps working until then.", err=True)


@push_cli.command("submit")
@click.option("--email", default=None,
              help="The address registered with the signing service (default: PUSH_SIGNING_SERVICE_EMAIL).")
def submit_command(email):
    """Send a new CSR to the CSR-signing service (PUSH_SIGNING_SERVICE_URL); it e-mails the request back."""
    try:
        sent = submit_to_signing_service(email, actor=_actor())
    except PushCertError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Request accepted by {sent['url']}. Its signed, encrypted reply goes to {sent['email']}: then run "
               "`flask mdm push decrypt <the attached file>`.")


@push_cli.command("decrypt")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_path", type=click.Path(dir_okay=False, writable=True),
              help="Write the push certificate request here (default: print it).")
def decrypt_command(file, out_path):
    """Open the signing service's e-mailed reply with the pending key: the request to upload to Apple."""
    try:
        data = open_signing_service_reply(Path(file).read_bytes(), actor=_actor())
    except PushCertError as exc:
        raise click.ClickException(str(exc)) from None
    _write_or_echo(data, out_path, "push certificate request")
    click.echo(f"Next: upload it at {APPLE_PORTAL_URL}, then `flask mdm push install <the .pem Apple returns>`.",
               err=True)


def _write_or_echo(data: bytes, out_path: str | None, what: str) -> None:
    if out_path:
        Path(out_path).write_bytes(data if data.endswith(b"\n") else data + b"\n")
        click.echo(f"{what.capitalize()} written to {out_path}", err=True)
    else:
        click.echo(data.decode().rstrip("\n"))


@push_cli.command("install")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--password", default=None, help="Password of a PKCS#12 file or an encrypted PEM key.")
@click.option("--allow-topic-change", is_flag=True,
              help="Install even though enrolled devices use another topic (they must re-enroll).")
def install_command(file, password, allow_topic_change):
    """Install an Apple MDM push certificate (PEM from identity.apple.com, or PKCS#12 with its key)."""
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
    _echo_status(status())


@push_cli.command("send")
@click.argument("udid")
def send_command(udid):
    """Push to one device now and print APNs' answer."""
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
    if info["renew_soon"] and not info["is_placeholder"]:
        click.echo(f"Renew:      expires in {info['days_left']} days: renew at {APPLE_PORTAL_URL} (same topic)")
    pending = info.get("pending")
    if pending:
        route = {"vendor": "own vendor certificate", "service": f"signing service, reply to {pending.get('email')}",
                 "csr": "bare CSR"}.get(pending.get("route"), pending.get("route"))
        ready = "request ready to upload to Apple" if pending["request_ready"] else "no request for Apple yet"
        click.echo(f"Pending:    a key made {pending.get('created_at', '?')} waits for its certificate ({route}; {ready})")
