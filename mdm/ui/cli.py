"""``flask mdm admin …`` and ``flask mdm api-token …``: accounts and API tokens from the shell."""
from __future__ import annotations

import click

from ..accounts import (AccountError, AdminUser, ApiToken, Role, create_admin, create_api_token, find_admin,
                        generate_password)
from ..cli import mdm_cli
from ..ops.dbsetup import init_db
from ..extensions import db
from ..models import audit, utcnow


@mdm_cli.group("admin")
def admin_cli():
    """Administrator accounts."""


@admin_cli.command("create")
@click.argument("username")
@click.option("--role", default="Administrator", show_default=True,
              help="ReadOnly, HelpDesk, Manager or Administrator.")
@click.option("--password", default=None, help="Default: generate one and print it.")
def admin_create(username, role, password):
    """Create an administrator account."""
    init_db()
    generated = password is None
    password = password or generate_password()
    try:
        user = create_admin(username, password, role, created_by="cli")
    except (AccountError, ValueError) as exc:
        db.session.rollback()
        raise click.ClickException(str(exc))
    audit("admin.create", actor="cli", object_type="admin", object_id=user.id, after=user.summary())
    db.session.commit()
    click.echo(f"Created {user.username} ({user.role_enum.label}).")
    if generated:
        click.echo(f"Password: {password}")


@admin_cli.command("list")
def admin_list():
    """List administrator accounts."""
    for user in AdminUser.query.order_by(AdminUser.username):
        state = "disabled" if user.disabled else "active"
        click.echo(f"{user.username}\t{user.role}\t{state}\tlast sign-in {user.last_login_at or 'never'}")


@admin_cli.command("set-password")
@click.argument("username")
@click.password_option()
def admin_set_password(username, password):
    """Set an account's password (also re-enables nothing: use the UI for that)."""
    user = find_admin(username)
    if user is None:
        raise click.ClickException(f"no administrator {username!r}")
    try:
        user.set_password(password)
    except AccountError as exc:
        raise click.ClickException(str(exc))
    audit("admin.password_reset", actor="cli", object_type="admin", object_id=user.id)
    db.session.commit()
    click.echo(f"Password of {user.username} changed; their sessions ended.")


@mdm_cli.group("api-token")
def api_token_cli():
    """API tokens for /api/v1."""


@api_token_cli.command("create")
@click.option("--role", required=True, help="ReadOnly, HelpDesk, Manager or Administrator.")
@click.option("--name", default=None, help="A name to recognise the token by (default: cli-<n>).")
def api_token_create(role, name):
    """Create a token and print it once (only its hash is stored)."""
    init_db()
    try:
        Role.parse(role)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--role")
    name = name or f"cli-{ApiToken.query.count() + 1}"
    try:
        token, secret = create_api_token(name, role, created_by="cli")
    except AccountError as exc:
        db.session.rollback()
        raise click.ClickException(str(exc))
    audit("api_token.create", actor="cli", object_type="api_token", object_id=token.id, after=token.summary())
    db.session.commit()
    click.echo(secret)


@api_token_cli.command("revoke")
@click.argument("name")
def api_token_revoke(name):
    """Revoke a token by name."""
    token = ApiToken.query.filter_by(name=name).first()
    if token is None:
        raise click.ClickException(f"no API token named {name!r}")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        audit("api_token.revoke", actor="cli", object_type="api_token", object_id=token.id, after=token.summary())
        db.session.commit()
    click.echo(f"Revoked {name}.")
