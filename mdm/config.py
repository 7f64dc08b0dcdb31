"""Configuration: built-in defaults, then ``instance/config.py``, then ``MDM_*`` environment variables.

Every setting can be given as an environment variable with the same name prefixed by ``MDM_``
(``MDM_SERVER_URL=https://mdm.example.com``). Values from the environment are parsed as JSON
when they look like JSON (numbers, booleans), otherwise kept as strings.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _default_hostname() -> str:
    return socket.getfqdn() or "localhost"


class Defaults:
    # Where devices reach us. Used in enrollment profiles, SCEP URL and the TLS certificate.
    SERVER_HOSTNAME = None          # derived from SERVER_URL when unset
    SERVER_URL = None               # e.g. https://mdm.example.com:8443 ; default https://<fqdn>:<PORT>
    EXTRA_HOSTNAMES = ""            # comma separated extra SANs for the TLS certificate
    LISTEN_HOST = "0.0.0.0"
    PORT = 8443
    # TLS is on by default: devices refuse plain HTTP. Set to false only behind a TLS-terminating proxy.
    TLS = True
    DATABASE_URL = None             # default sqlite:///<instance>/mdm.db
    # PostgreSQL: a pooled connection idle for this long is pinged before use (mdm/extensions.py).
    DB_PING_AFTER_IDLE_SECONDS = 10
    CERTS_DIR = None                # default <project>/certs
    ORGANIZATION = "Self-hosted MDM"
    # APNs: "production", "sandbox" or a full https:// URL (tests point this at a local HTTP/2 server).
    APNS_GATEWAY = "production"
    APNS_CA_FILE = None             # extra CA bundle to trust for a custom gateway (tests)
    APNS_MAX_ATTEMPTS = 5
    APNS_BACKOFF_SECONDS = 30       # first retry after this, doubling up to APNS_BACKOFF_MAX_SECONDS
    APNS_BACKOFF_MAX_SECONDS = 3600
    APNS_TIMEOUT_SECONDS = 15
    APNS_CONCURRENCY = 8
    # Request bodies above this size are refused with 413 before parsing.
    MAX_CONTENT_LENGTH = 8 * 1024 * 1024
    MAX_CHECKIN_BYTES = 1024 * 1024
    # Command results (PUT /mdm/connect); a large InstalledApplicationList or ProfileList fits (mdm/protocol/views.py).
    MAX_COMMAND_RESPONSE_BYTES = 2 * 1024 * 1024
    # Accept a client certificate forwarded by a trusted TLS-terminating proxy (off by default).
    TRUSTED_PROXY_CERT_HEADER = ""  # e.g. "X-Client-Cert" (URL-encoded PEM, as nginx $ssl_client_escaped_cert)
    TRUSTED_PROXY_ADDRESSES = ""    # comma separated remote addresses allowed to set that header
    SCHEDULER_ENABLED = True
    ENROLLMENT_DEFAULT_DAYS = 30
    SCEP_CHALLENGE_MINUTES = 60
    DEVICE_CERT_DAYS = 365
    SECRET_KEY = None               # generated into instance/secret_key on first run
    # Private keys at rest are sealed with this key (see mdm/secrets.py and docs/operations.md):
    # the key itself, or a file holding it; default <instance>/secrets.key, generated on first run.
    SECRETS_KEY = None
    SECRETS_KEY_FILE = None
    # Production server (python -m mdm.run, granian): processes, threads and timeouts, see mdm/server/serve.py.
    WORKERS = 1                     # or "auto": one per CPU core
    THREADS = 4
    REQUEST_TIMEOUT_SECONDS = 30
    REQUEST_BODY_DEADLINE_SECONDS = 60
    SHUTDOWN_TIMEOUT_SECONDS = 5
    # Logs: "text" or "json" (one object per line); secrets are always redacted (mdm/ops/logs.py).
    LOG_FORMAT = "text"
    LOG_LEVEL = "INFO"


def load_config(app, overrides: dict | None = None) -> None:
    for key in dir(Defaults):
        # Flask pre-fills some keys with None (MAX_CONTENT_LENGTH, SECRET_KEY): ours replace those.
        if key.isupper() and app.config.get(key) is None:
            app.config[key] = getattr(Defaults, key)
    app.config.from_pyfile("config.py", silent=True)
    for name, raw in os.environ.items():
        if name.startswith("MDM_"):
            app.config[name[4:]] = _parse_env(raw)
    if overrides:
        app.config.update(overrides)

    instance = Path(app.instance_path)
    instance.mkdir(parents=True, exist_ok=True)
    cfg = app.config
    if not cfg.get("DATABASE_URL"):
        cfg["DATABASE_URL"] = f"sqlite:///{instance / 'mdm.db'}"
    cfg["SQLALCHEMY_DATABASE_URI"] = cfg["DATABASE_URL"]
    if not cfg.get("CERTS_DIR"):
        cfg["CERTS_DIR"] = str(PROJECT_ROOT / "certs")
    if not cfg.get("SERVER_URL"):
        host = cfg.get("SERVER_HOSTNAME") or _default_hostname()
        scheme = "https" if cfg["TLS"] else "http"
        cfg["SERVER_URL"] = f"{scheme}://{host}:{cfg['PORT']}"
    cfg["SERVER_URL"] = cfg["SERVER_URL"].rstrip("/")
    if not cfg.get("SERVER_HOSTNAME"):
        cfg["SERVER_HOSTNAME"] = urlsplit(cfg["SERVER_URL"]).hostname
    if not cfg.get("SECRET_KEY"):
        cfg["SECRET_KEY"] = _instance_secret(instance / "secret_key")


def _parse_env(raw: str):
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return value if isinstance(value, (int, float, bool)) else raw


def _instance_secret(path: Path) -> str:
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(os.urandom(32).hex())
    return path.read_text().strip()


def is_trusted_proxy(addresses: str, remote_addr: str | None) -> bool:
    """True when ``remote_addr`` is in TRUSTED_PROXY_ADDRESSES (comma-separated addresses or networks):
    only such a proxy may pass a client certificate or a client address on."""
    if not remote_addr:
        return False
    try:
        remote = ipaddress.ip_address(remote_addr)
    except ValueError:
        return False
    for item in addresses.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            if remote in ipaddress.ip_network(item, strict=False):
                return True
        except ValueError:
            log.warning("TRUSTED_PROXY_ADDRESSES entry %r is not an address or network", item)
    return False
