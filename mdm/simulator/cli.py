"""``flask mdm simulate``: enroll N simulated iPhones against a running server."""
from __future__ import annotations

import click
from flask import current_app

from ..cli import mdm_cli
from ..extensions import db
from .device import DeviceProfile
from .fleet import run_fleet


@mdm_cli.command("simulate")
@click.option("--devices", "count", default=1, show_default=True, help="How many devices to simulate.")
@click.option("--url", "server_url", default=None, help="Server URL (default: this server's SERVER_URL).")
@click.option("--enrollment-url", default=None, help="Enrollment link (default: a new one-off link).")
@click.option("--model", default="iPhone15,2", show_default=True)
@click.option("--os", "os_version", default="17.5", show_default=True)
@click.option("--unsupervised", is_flag=True, help="Simulate unsupervised devices.")
@click.option("--workers", default=8, show_default=True, help="Concurrent devices.")
def simulate_command(count, server_url, enrollment_url, model, os_version, unsupervised, workers):
    """Enroll simulated devices over HTTPS and answer their queued commands."""
    import logging
    logging.getLogger("httpx").setLevel(logging.WARNING)   # one line per request drowns the summary
    from ..enroll.pki import get_pki
    from ..enroll.tokens import create_token, enrollment_url as url_for_token
    server_url = (server_url or current_app.config["SERVER_URL"]).rstrip("/")
    if enrollment_url is None:
        token = create_token(description=f"simulator ({count} devices)", expires_in_days=1,
                             max_uses=count, created_by="cli:simulate")
        enrollment_url = url_for_token(token).replace(current_app.config["SERVER_URL"], server_url)
    profile = DeviceProfile(product_name=model, os_version=os_version, supervised=not unsupervised)
    ca_file = str(get_pki().ca_cert_path)
    # End our transaction: SQLite write transactions start IMMEDIATE, so an idle open one would
    # hold the server (which shares the database) off while the devices talk to it.
    db.session.remove()
    report = run_fleet(server_url, ca_file, enrollment_url, count,
                       profile=profile, workers=workers)
    click.echo(f"enrolled {len(report.devices)} of {count} devices in {report.enroll_seconds:.1f} s; "
               f"answered {report.commands_answered} commands in {report.connect_seconds:.1f} s")
    for error in report.errors[:20]:
        click.echo(f"error: {error}", err=True)
    if report.errors:
        raise SystemExit(1)
