"""``flask mdm simulate``: enroll N simulated devices against a running server.

Without ``--keep-running`` (the default) each device enrolls, answers its queued commands once and the
command exits. With ``--keep-running`` the devices are a mixed fleet (mix.py) that keeps checking in on
compressed time until Ctrl-C or SIGTERM (live.py says what is real and what is simulated).

``flask mdm demo-feed`` writes Apple's packaged release feed with every date moved so its newest release
was posted a few days ago: for demos on a machine that cannot reach Apple. It is not Apple's current feed.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import signal
import threading

import click
from click.core import ParameterSource
from flask import current_app

from ..cli import mdm_cli
from ..ddm.catalog import SNAPSHOT_PATH, CatalogError, load_feed_file, shift_feed
from ..ddm.groups import GroupError, add_devices, require_group
from ..pki import get_pki
from ..enroll.tokens import create_token, enrollment_url as url_for_token
from ..extensions import db
from .device import DeviceProfile
from .fleet import run_fleet
from .live import enroll_live_fleet
from .mix import fleet_mix

SUMMARY_EVERY_SECONDS = 30


@mdm_cli.command("simulate")
@click.option("--devices", "count", default=1, show_default=True, help="How many devices to simulate.")
@click.option("--url", "server_url", default=None, help="Server URL (default: this server's SERVER_URL).")
@click.option("--enrollment-url", default=None, help="Enrollment link (default: a new one-off link).")
@click.option("--model", default="iPhone15,2", show_default=True,
              help="With --keep-running, giving it replaces the mixed fleet by this model.")
@click.option("--os", "os_version", default="17.5", show_default=True,
              help="With --keep-running, giving it replaces the mixed fleet by this version.")
@click.option("--unsupervised", is_flag=True, help="Simulate unsupervised devices.")
@click.option("--workers", default=8, show_default=True, help="Concurrent devices.")
@click.option("--group", "groups_", multiple=True,
              help="Add the enrolled devices to this device group (repeat: shared out in turn).")
@click.option("--keep-running", is_flag=True, help="Keep the devices checking in until Ctrl-C.")
@click.option("--speed", default=60.0, show_default=True,
              help="--keep-running: simulated seconds per real second (60 = a minute per second).")
@click.option("--poll-seconds", default=40.0, show_default=True,
              help="--keep-running: real seconds between check-ins, +/- 50 percent jitter.")
@click.option("--failures", "failure_percent", default=10.0, show_default=True,
              help="--keep-running: percent of devices whose first install fails (InsufficientDiskSpace).")
@click.option("--seed", default=1, show_default=True, help="--keep-running: the same seed, the same fleet.")
@click.pass_context
def simulate_command(ctx, count, server_url, enrollment_url, model, os_version, unsupervised, workers, groups_,
                     keep_running, speed, poll_seconds, failure_percent, seed):
    """Enroll simulated devices over HTTPS and answer their queued commands."""
    logging.getLogger("httpx").setLevel(logging.WARNING)   # one line per request drowns the summary
    if keep_running and (speed <= 0 or poll_seconds <= 0 or not 0 <= failure_percent <= 100):
        raise click.UsageError("--speed and --poll-seconds must be positive, --failures 0-100")
    server_url = (server_url or current_app.config["SERVER_URL"]).rstrip("/")
    if enrollment_url is None:
        token = create_token(description=f"simulator ({count} devices)", expires_in_days=1,
                             max_uses=count, created_by="cli:simulate")
        enrollment_url = url_for_token(token).replace(current_app.config["SERVER_URL"], server_url)
    if groups_:
        _check_groups(groups_)
    ca_file = str(get_pki().ca_cert_path)
    # End our transaction: SQLite write transactions start IMMEDIATE, so an idle open one would
    # hold the server (which shares the database) off while the devices talk to it.
    db.session.remove()
    if keep_running:
        explicit = any(ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE
                       for name in ("model", "os_version", "unsupervised"))
        uniform = DeviceProfile(product_name=model, os_version=os_version, supervised=not unsupervised) \
            if explicit else None
        _keep_running(server_url, ca_file, enrollment_url, count, uniform=uniform, workers=workers,
                      groups_=groups_, speed=speed, poll_seconds=poll_seconds,
                      failure_share=failure_percent / 100, seed=seed)
        return
    profile = DeviceProfile(product_name=model, os_version=os_version, supervised=not unsupervised)
    report = run_fleet(server_url, ca_file, enrollment_url, count,
                       profile=profile, workers=workers)
    _add_to_groups(groups_, [d.udid for d in report.devices])
    click.echo(f"enrolled {len(report.devices)} of {count} devices in {report.enroll_seconds:.1f} s; "
               f"answered {report.commands_answered} commands in {report.connect_seconds:.1f} s")
    for error in report.errors[:20]:
        click.echo(f"error: {error}", err=True)
    if report.errors:
        raise SystemExit(1)


def _check_groups(names) -> None:
    for name in names:
        try:
            require_group(name)
        except GroupError as exc:
            raise click.UsageError(f"{exc}; create it first: flask mdm groups create {name!r}") from exc


def _add_to_groups(names, udids: list[str]) -> None:
    """Share the devices out between the groups in turn (the audited service `groups add` uses)."""
    for index, name in enumerate(names):
        members = udids[index::len(names)]
        if members:
            add_devices(name, members, actor="cli:simulate")
            click.echo(f"added {len(members)} device(s) to group {name!r}")
    db.session.remove()


def _keep_running(server_url, ca_file, enrollment_url, count, *, uniform, workers, groups_, speed,
                  poll_seconds, failure_share, seed) -> None:
    plan = fleet_mix(count, seed=seed, failure_share=failure_share)
    if uniform is not None:
        plan = [(uniform, behaviour) for _, behaviour in plan]
    enrolled = enroll_live_fleet(server_url, ca_file, enrollment_url, plan, speed=speed,
                                 poll_seconds=(poll_seconds * 0.5, poll_seconds * 1.5), workers=workers, seed=seed)
    for error in enrolled.errors[:20]:
        click.echo(f"error: {error}", err=True)
    fleet = enrolled.fleet
    if fleet is None:
        raise SystemExit(1)
    click.echo(f"enrolled {len(fleet.devices)} of {count} devices in {enrolled.enroll_seconds:.1f} s")
    for live in fleet.devices:
        d = live.device
        click.echo(f"  {d.device_name:<32} {d.product_name:<11} {d.os_version:<6} "
                   f"{'supervised' if d.supervised else 'unsupervised':<12} {d.profile.time_zone or 'UTC':<20} "
                   f"{live.behaviour.habit}{', first install fails: ' + live.behaviour.fails_with if live.behaviour.fails_with else ''}")
    _add_to_groups(groups_, [live.device.udid for live in fleet.devices])
    _run_until_signal(fleet, f"checking in every {poll_seconds * 0.5:.0f}-{poll_seconds * 1.5:.0f} s; simulated "
                             f"time runs {speed:g}x from now. Ctrl-C stops the fleet.")


def _run_until_signal(fleet, started_message: str) -> None:
    """Run the fleet until SIGINT or SIGTERM, printing a summary every SUMMARY_EVERY_SECONDS."""
    stop = fleet.stop_event
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    fleet.start()
    click.echo(started_message)
    try:
        while not stop.wait(SUMMARY_EVERY_SECONDS):
            click.echo(fleet.summary())
    finally:
        stopped = fleet.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        click.echo(fleet.summary())
        click.echo("fleet stopped" if stopped else "fleet stopped; some device requests were still running",
                   err=not stopped)


@mdm_cli.command("demo-feed")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, writable=True),
              help="Where to write the shifted feed (then: flask mdm catalog sync --file OUT).")
@click.option("--from", "source", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A saved gdmf pmv JSON (default: the snapshot packaged with the server).")
@click.option("--days-ago", default=2, show_default=True,
              help="How many days before today the newest release is made to have been posted.")
def demo_feed_command(out_path, source, days_ago):
    """Write a DEMO release feed: Apple's saved feed with every date moved forward. Never for production."""
    try:
        data = load_feed_file(source or SNAPSHOT_PATH)
    except CatalogError as exc:
        raise click.ClickException(str(exc)) from exc
    newest = _newest_posting(data)
    if newest is None:
        raise click.ClickException("the feed has no PostingDate to move")
    days = (dt.date.today() - dt.timedelta(days=days_ago) - newest).days
    with open(out_path, "w") as out:
        json.dump(shift_feed(data, days), out)
    click.echo(f"wrote {out_path}: {source or SNAPSHOT_PATH.name} with every date moved {days:+d} days "
               f"(newest release now posted {newest + dt.timedelta(days=days)}). Releases and builds are "
               f"Apple's; the dates are not. For demos only.")


def _newest_posting(data: dict) -> dt.date | None:
    dates = [entry.get("PostingDate") for section in data.values() if isinstance(section, dict)
             for entries in section.values() if isinstance(entries, list)
             for entry in entries if isinstance(entry, dict)]
    parsed = [dt.date.fromisoformat(d[:10]) for d in dates if isinstance(d, str)]
    return max(parsed, default=None)
