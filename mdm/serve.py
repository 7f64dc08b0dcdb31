"""The production server: one process, a thread pool, TLS with our CA-issued certificate (cheroot).

Used by ``./run.sh`` and by the end-to-end tests, so tests exercise the same server devices talk to.
"""
from __future__ import annotations

import logging
import threading

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

log = logging.getLogger(__name__)


def build_server(app, host: str, port: int, *, threads: int = 16, tls: bool = True) -> wsgi.Server:
    server = wsgi.Server((host, port), app, numthreads=threads, request_queue_size=256,
                         timeout=30, server_name=app.config["SERVER_HOSTNAME"])
    # Bodies above the limit are refused by cheroot with 413 even when chunked.
    server.max_request_body_size = app.config["MAX_CONTENT_LENGTH"]
    if tls:
        from .enroll.pki import get_pki
        pki = get_pki(app)
        server.ssl_adapter = BuiltinSSLAdapter(str(pki.tls_cert_path), str(pki.tls_key_path))
    return server


class BackgroundServer:
    """A server in a background thread (tests, simulator demos)."""

    def __init__(self, app, host="127.0.0.1", port=0, tls=True, threads=16):
        self.server = build_server(app, host, port, tls=tls, threads=threads)
        self.server.prepare()
        self.port = self.server.bind_addr[1]
        self.thread = threading.Thread(target=self.server.serve, daemon=True, name="mdm-http")

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.stop()
        self.thread.join(timeout=10)
