"""``flask mdm backup`` / ``flask mdm restore``: one archive with the database, ``certs/`` and the
instance files a server needs, taken online (devices keep checking in) and restored into a fresh instance.

Archive (``.tar.gz``, written 0600)::

    manifest.json               format, time, database kind, Alembic revision, sha256 of every member
    database/mdm.sqlite3        SQLite: a consistent snapshot made with the sqlite3 backup API
    database/mdm.pgdump         PostgreSQL: ``pg_dump --format=custom`` (pg_dump must be installed)
    certs/...                   certificates and the *sealed* private keys
    instance/secret_key, instance/config.py   (when present)

The secrets key is NOT in the archive unless ``--include-secrets-key`` is given: the archive alone
then opens no private key, and the key is kept (once) somewhere else. ``restore`` needs the same
secrets key configured for the target instance and checks it opens the archive's keys before
writing anything.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
from pathlib import Path

import click
from flask import current_app
from sqlalchemy.engine import make_url

from ..cli import mdm_cli
from .dbsetup import init_db
from ..extensions import db
from ..secrets import (KEY_FILE_NAME, KEY_FILE_PATTERN, SecretBox, SecretsKeyError, get_box, is_sealed, parse_key,
                       resolve_box, write_secret_file)

FORMAT = "mdm-backup/1"
INSTANCE_FILES = ("secret_key", "config.py")
# Never archived from certs/: locks and half-written files.
_SKIP_SUFFIXES = (".lock", ".tmp")


class BackupError(RuntimeError):
    """A backup or restore refused; the message says why and what to do."""


# ---------------------------------------------------------------- backup


def backup(out: Path, *, include_secrets_key: bool = False) -> dict:
    """Write the archive to ``out``; returns the manifest. Needs an app context."""
    app = current_app
    url = make_url(app.config["SQLALCHEMY_DATABASE_URI"])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mdm-backup-") as tmp:
        tmp = Path(tmp)
        members: dict[str, Path] = {}
        if url.get_backend_name() == "sqlite":
            snapshot = tmp / "mdm.sqlite3"
            _sqlite_snapshot(url.database, snapshot)
            members["database/mdm.sqlite3"] = snapshot
            kind = "sqlite"
        elif url.get_backend_name() == "postgresql":
            dump = tmp / "mdm.pgdump"
            _pg_dump(url, dump)
            members["database/mdm.pgdump"] = dump
            kind = "postgresql"
        else:
            raise BackupError(f"backing up a {url.get_backend_name()} database is not supported "
                              "(SQLite and PostgreSQL are)")
        certs = Path(app.config["CERTS_DIR"])
        for path in sorted(certs.iterdir()) if certs.is_dir() else []:
            if path.is_file() and not path.name.endswith(_SKIP_SUFFIXES):
                if KEY_FILE_PATTERN.match(path.name) and not is_sealed(path.read_bytes()):
                    raise BackupError(f"{path} is not sealed; start the server once (it seals the keys) "
                                      "before taking a backup")
                members[f"certs/{path.name}"] = path
        instance = Path(app.instance_path)
        for name in INSTANCE_FILES:
            if (instance / name).is_file():
                members[f"instance/{name}"] = instance / name
        if include_secrets_key:
            key_copy = tmp / KEY_FILE_NAME
            key_copy.write_text(get_box().key.hex() + "\n")
            members[f"instance/{KEY_FILE_NAME}"] = key_copy

        manifest = {
            "format": FORMAT,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "database": kind,
            "alembic_revision": _alembic_revision(members.get("database/mdm.sqlite3")),
            "includes_secrets_key": include_secrets_key,
            "files": {name: _sha256(path) for name, path in members.items()},
        }
        partial = out.with_name(out.name + ".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            _add_bytes(tar, "manifest.json", json.dumps(manifest, indent=2).encode())
            for name, path in members.items():
                info = tar.gettarinfo(str(path), arcname=name)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
        os.replace(partial, out)
    return manifest


def _sqlite_snapshot(database: str, dest: Path) -> None:
    """A consistent copy while other connections write: SQLite's online backup API, in one step
    (a single read transaction, so the copy is one moment of the database; WAL writers carry on)."""
    source = sqlite3.connect(database, timeout=30)
    target = sqlite3.connect(dest)
    try:
        source.backup(target)
        target.execute("PRAGMA journal_mode=DELETE")  # a self-contained single file
    finally:
        target.close()
        source.close()


def _pg_env(url) -> tuple[list[str], dict]:
    env = dict(os.environ)
    # A Unix socket directory may come as ?host=/run/postgresql (libpq style) instead of a host name.
    host = url.query.get("host") or url.host or "localhost"
    if isinstance(host, tuple):
        host = host[0]
    args = ["--host", host, "--port", str(url.port or 5432), "--dbname", url.database or ""]
    if url.username:
        args += ["--username", url.username]
    if url.password:
        env["PGPASSWORD"] = url.password  # not on the command line, where ps would show it
    return args, env


def _pg_dump(url, dest: Path) -> None:
    if not shutil.which("pg_dump"):
        raise BackupError("the database is PostgreSQL but pg_dump is not installed: install the PostgreSQL "
                          "client tools (Debian: apt-get install postgresql-client) and run the backup again")
    args, env = _pg_env(url)
    done = subprocess.run(["pg_dump", "--format=custom", "--no-owner", "--file", str(dest), *args],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise BackupError(f"pg_dump failed: {done.stderr.strip()}")


def _alembic_revision(sqlite_copy: Path | None) -> str | None:
    if sqlite_copy is None:
        try:
            return db.session.execute(db.text("SELECT version_num FROM alembic_version")).scalar()
        except Exception:  # no migrations table yet
            return None
    con = sqlite3.connect(sqlite_copy)
    try:
        row = con.execute("SELECT version_num FROM alembic_version").fetchone()
        return row[0] if row else None
    except sqlite3.Error:
        return None
    finally:
        con.close()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o600, int(dt.datetime.now().timestamp())
    tar.addfile(info, io.BytesIO(data))


# ---------------------------------------------------------------- restore


def restore(archive: Path, *, force: bool = False) -> dict:
    """Restore ``archive`` into this (fresh) instance. The server must be stopped. Returns the manifest."""
    app = current_app
    archive = Path(archive)
    certs = Path(app.config["CERTS_DIR"])
    instance = Path(app.instance_path)
    url = make_url(app.config["SQLALCHEMY_DATABASE_URI"])
    with tempfile.TemporaryDirectory(prefix="mdm-restore-") as tmp:
        tmp = Path(tmp)
        manifest = _unpack(archive, tmp)
        box = _restore_box(app, tmp, manifest)
        # Check the key opens every sealed key in the archive before anything is written.
        for name in manifest["files"]:
            if name.startswith("certs/") and KEY_FILE_PATTERN.match(name[6:]):
                box.open((tmp / name).read_bytes(), what=f"{name} in {archive.name}")
        if not force:
            _refuse_non_fresh(certs, url)

        certs.mkdir(parents=True, exist_ok=True)
        os.chmod(certs, 0o700)
        for name in manifest["files"]:
            source = tmp / name
            if name.startswith("certs/"):
                _copy_private(source, certs / name[6:])
            elif name.startswith("instance/"):
                _copy_private(source, instance / name[9:])
        if manifest["database"] == "sqlite":
            if url.get_backend_name() != "sqlite":
                raise BackupError("this backup holds a SQLite database; restore it into an instance whose "
                                  "MDM_DATABASE_URL is SQLite (then migrate the data if you need PostgreSQL)")
            _restore_sqlite(tmp / "database/mdm.sqlite3", Path(url.database))
        else:
            if url.get_backend_name() != "postgresql":
                raise BackupError("this backup holds a PostgreSQL dump; restore it into a PostgreSQL instance")
            _pg_restore(url, tmp / "database/mdm.pgdump")
    # An older backup is brought up to this release's schema.
    db.engine.dispose()
    init_db()
    app.extensions.pop("mdm_pki", None)
    app.extensions.pop("mdm_secrets", None)
    return manifest


def _unpack(archive: Path, dest: Path) -> dict:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BackupError(f"{archive} is not a readable backup archive: {exc}") from None
    try:
        manifest = json.loads((dest / "manifest.json").read_text())
    except (OSError, ValueError):
        raise BackupError(f"{archive} has no readable manifest.json: not an MDM backup") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{archive} is in format {manifest.get('format')!r}; this release reads {FORMAT}")
    for name, digest in manifest["files"].items():
        path = dest / name
        if not path.is_file() or _sha256(path) != digest:
            raise BackupError(f"{archive}: {name} is missing or damaged (checksum mismatch)")
    return manifest


def _restore_box(app, unpacked: Path, manifest: dict) -> SecretBox:
    archived_key = unpacked / "instance" / KEY_FILE_NAME
    configured = (os.environ.get("MDM_SECRETS_KEY") or app.config.get("SECRETS_KEY")
                  or os.environ.get("MDM_SECRETS_KEY_FILE") or app.config.get("SECRETS_KEY_FILE")
                  or (Path(app.instance_path) / KEY_FILE_NAME).is_file())
    if configured:
        # resolve_box checks the key against the target's current keys; a fresh target has none.
        return resolve_box(app.config, app.instance_path, create=False)
    if manifest.get("includes_secrets_key") and archived_key.is_file():
        return parse_key(archived_key.read_text(), f"{KEY_FILE_NAME} in the archive")
    raise SecretsKeyError(
        "restore needs the secrets key the backup was made with: set MDM_SECRETS_KEY or MDM_SECRETS_KEY_FILE, "
        f"or copy the key file to {Path(app.instance_path) / KEY_FILE_NAME}, then run restore again")


def _refuse_non_fresh(certs: Path, url) -> None:
    if (certs / "ca.key").exists():
        raise BackupError(f"{certs} already holds a CA key: restore only into a fresh instance "
                          "(or pass --force to overwrite it)")
    if url.get_backend_name() == "sqlite" and not Path(url.database).exists():
        return
    try:
        has_devices = db.session.execute(db.text("SELECT 1 FROM devices LIMIT 1")).first() is not None
    except Exception:  # no schema yet: fresh
        has_devices = False
    finally:
        db.session.rollback()
    if has_devices:
        raise BackupError(f"{url.render_as_string(hide_password=True)} already holds devices: restore only "
                          "into a fresh instance (or pass --force to overwrite it)")


def _copy_private(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_secret_file(dest, source.read_bytes())


def _restore_sqlite(snapshot: Path, dest: Path) -> None:
    db.session.remove()
    db.engine.dispose()
    dest.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("-wal", "-shm", "-journal"):
        Path(str(dest) + suffix).unlink(missing_ok=True)
    tmp = dest.with_name(dest.name + ".restoring")
    shutil.copyfile(snapshot, tmp)
    os.chmod(tmp, 0o600)
    os.replace(tmp, dest)


def _pg_restore(url, dump: Path) -> None:
    if not shutil.which("pg_restore"):
        raise BackupError("the backup is a PostgreSQL dump but pg_restore is not installed: install the "
                          "PostgreSQL client tools (Debian: apt-get install postgresql-client)")
    db.session.remove()
    db.engine.dispose()
    args, env = _pg_env(url)
    done = subprocess.run(["pg_restore", "--clean", "--if-exists", "--no-owner", "--single-transaction",
                           *args, str(dump)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise BackupError(f"pg_restore failed: {done.stderr.strip()}")


# ---------------------------------------------------------------- CLI


@mdm_cli.command("backup")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="Archive to write (default: backups/mdm-<UTC time>.tar.gz in the instance folder).")
@click.option("--include-secrets-key", is_flag=True,
              help="Put the secrets key in the archive too (then the archive alone opens every private key).")
def backup_command(out, include_secrets_key):
    """Back up database, certificates and secrets while the server keeps running."""
    if out is None:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        out = Path(current_app.instance_path) / "backups" / f"mdm-{stamp}.tar.gz"
    try:
        manifest = backup(out, include_secrets_key=include_secrets_key)
    except (BackupError, SecretsKeyError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Backup written to {out} ({manifest['database']} database, {len(manifest['files'])} files, "
               f"schema {manifest['alembic_revision']})")
    if not include_secrets_key:
        click.echo("The secrets key is not in the archive: keep it separately (restore needs it).")


@mdm_cli.command("restore")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite an instance that already has a CA or devices.")
def restore_command(archive, force):
    """Restore a backup into a fresh instance (stop the server first)."""
    try:
        manifest = restore(archive, force=force)
    except (BackupError, SecretsKeyError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Restored {archive} (taken {manifest['created_at']}, {len(manifest['files'])} files); "
               "start the server as usual")
