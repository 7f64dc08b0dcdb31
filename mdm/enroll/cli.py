"""``flask mdm enrollment …``: create, list and revoke enrollment tokens (each change is audited)."""
from __future__ import annotations

import getpass

import click

from ..cli import mdm_cli
from . import tokens


def _operator() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:   # no login name in some containers
        return "cli"


@mdm_cli.group("enrollment")
def enrollment_cli():
    """Enrollment URLs (tokens) for profile-based enrollment."""


@enrollment_cli.command("create")
@click.option("--days", type=click.IntRange(min=0), default=None,
              help="Days until the URL expires (default ENROLLMENT_DEFAULT_DAYS; 0 = never).")
@click.option("--uses", type=click.IntRange(min=1), default=None, help="Maximum downloads (default unlimited).")
@click.option("--description", default="", help="What this URL is for (shown in lists).")
def create_command(days, uses, description):
    """Create an enrollment URL and print it."""
    token = tokens.create_token(description=description, expires_in_days=days, max_uses=uses,
                                created_by=_operator())
    click.echo(tokens.enrollment_url(token))


@enrollment_cli.command("list")
@click.option("--active", is_flag=True, help="Only tokens that still work.")
def list_command(active):
    """List enrollment tokens with their state and use count."""
    rows = tokens.list_tokens(include_inactive=not active)
    if not rows:
        click.echo("No enrollment tokens.")
        return
    for token in rows:
        expires = token.expires_at.strftime("%Y-%m-%d %H:%M UTC") if token.expires_at else "never"
        limit = token.max_uses if token.max_uses is not None else "unlimited"
        click.echo(f"{token.id}\t{tokens.token_state(token)}\tuses {token.uses}/{limit}\texpires {expires}\t"
                   f"{tokens.enrollment_url(token)}\t{token.description}")


@enrollment_cli.command("revoke")
@click.argument("token")
def revoke_command(token):
    """Revoke a token (give the token, its URL, or its id)."""
    value = token.rstrip("/").rsplit("/", 1)[-1]
    try:
        revoked = tokens.revoke_token(value, revoked_by=_operator())
    except tokens.TokenNotFound as exc:
        raise click.ClickException(exc.reason) from None
    click.echo(f"Revoked enrollment token {revoked.id} ({revoked.description or 'no description'}).")
