"""The production server: one process, a thread pool, TLS with our CA-issued certificate (cheroot).

Used by ``python -m mdm.run`` (``./run.sh``) and by the end-to-end tests, so tests exercise the same
server devices talk to. Settings (``MDM_*``):

- ``THREADS`` (16): worker threads; each serves one request at a time.
- ``REQUEST_TIMEOUT_SECONDS`` (30): a client that sends nothing for this long while a request is
  being read is answered 408 and disconnected (also idle keep-alive connections are closed).
- ``REQUEST_BODY_DEADLINE_SECONDS`` (60): the whole body must arrive within this time, however
  slowly it trickles in; otherwise 408 and the connection is closed.
- ``MAX_CONTENT_LENGTH`` (8 MiB): larger bodies get 413, whether announced by Content-Length or sent
  chunked; the application only ever sees complete bodies.
"""
from __future__ import annotations

import io
import logging
import socket
import ssl
import threading
import time
import uuid

from cheroot import errors as cheroot_errors
from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from .logs import access_log, request_context

log = logging.getLogger(__name__)

_READ_SIZE = 64 * 1024


class MemoryKeySSLAdapter(BuiltinSSLAdapter):
    """cheroot's TLS adapter around a ready ``ssl.SSLContext`` (its key was opened in memory; the
    stock adapter insists on reading a plaintext key file)."""

    def __init__(self, context: ssl.SSLContext, certificate: str):
        super(BuiltinSSLAdapter, self).__init__(certificate, None)  # the base Adapter: attributes only
        self.context = context
        self._server_env = {}


class BodyTooLarge(Exception):
    pass


class MalformedBody(Exception):
    """The chunked transfer coding could not be parsed."""


class IncompleteBody(Exception):
    """The client closed the connection before sending the Content-Length it announced."""


class RequestLimits:
    """WSGI middleware: reads the whole request body before the application runs, enforcing the size
    limit (413, chunked or not) and the body deadline (408); gives every request an id and an access
    log line. The application sees ``wsgi.input`` as a complete, seekable body with CONTENT_LENGTH."""

    def __init__(self, app, *, max_body_bytes: int, body_deadline_seconds: float):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_deadline_seconds = body_deadline_seconds

    def __call__(self, environ, start_response):
        started = time.monotonic()
        request_id = uuid.uuid4().hex[:16]
        environ["mdm.request_id"] = request_id
        token = request_context.set({"request_id": request_id, "remote_addr": environ.get("REMOTE_ADDR"),
                                     "method": environ.get("REQUEST_METHOD"), "path": environ.get("PATH_INFO")})
        seen = {"status": None}

        def recording_start_response(status, headers, exc_info=None):
            seen["status"] = status
            headers = list(headers) + [("X-Request-Id", request_id)]
            return start_response(status, headers, exc_info)

        try:
            try:
                body = self._read_body(environ, started)
            except BodyTooLarge:
                return self._plain(recording_start_response, "413 Request Entity Too Large",
                                   f"The request body exceeds {self.max_body_bytes} bytes.\n")
            except IncompleteBody:
                return self._plain(recording_start_response, "400 Bad Request",
                                   "The request body ended before its Content-Length.\n")
            except MalformedBody:
                return self._plain(recording_start_response, "400 Bad Request",
                                   "The chunked request body is malformed.\n")
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
            environ.pop("HTTP_TRANSFER_ENCODING", None)
            environ["wsgi.input_terminated"] = True
            environ["mdm.bytes_in"] = len(body)
            return self.app(environ, recording_start_response)
        finally:
            duration_ms = round((time.monotonic() - started) * 1000, 1)
            status = int(seen["status"][:3]) if seen["status"] else None
            access_log.info("%s %s %s %.1fms", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"),
                            status, duration_ms,
                            extra={"status": status, "duration_ms": duration_ms,
                                   "bytes_in": environ.get("mdm.bytes_in")})
            request_context.reset(token)

    def _read_body(self, environ, started: float) -> bytes:
        stream = environ["wsgi.input"]
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        length = None if chunked else int(environ.get("CONTENT_LENGTH") or 0)
        if length is not None and length > self.max_body_bytes:
            raise BodyTooLarge()
        deadline = started + self.body_deadline_seconds
        parts, total = [], 0
        while length is None or total < length:
            want = _READ_SIZE if length is None else min(_READ_SIZE, length - total)
            try:
                # Each read waits at most the server's socket timeout (cheroot answers 408 on it).
                part = _read_some(stream, want)
            except (cheroot_errors.MaxSizeExceeded, IOError) as exc:
                if isinstance(exc, OSError) and not _is_size_error(exc):
                    raise
                raise BodyTooLarge() from None
            except ValueError:  # cheroot: "Bad chunked transfer size"
                raise MalformedBody() from None
            if not part:
                break
            total += len(part)
            if total > self.max_body_bytes:
                raise BodyTooLarge()
            parts.append(part)
            if time.monotonic() > deadline:
                # Same message as a socket timeout, so cheroot answers 408 and drops the connection.
                raise socket.timeout("timed out")
        if length is not None and total < length:
            raise IncompleteBody()
        return b"".join(parts)

    @staticmethod
    def _plain(start_response, status: str, text: str):
        data = text.encode()
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))])
        return [data]


def _is_size_error(exc: OSError) -> bool:
    # cheroot's ChunkedRFile raises a bare IOError('Request Entity Too Large') for an oversize chunk.
    return isinstance(exc, cheroot_errors.MaxSizeExceeded) or "Request Entity Too Large" in str(exc)


_cheroot_log = logging.getLogger("cheroot")


def _cheroot_error_log(msg="", level=logging.INFO, traceback=False):
    """cheroot writes its errors straight to stderr; send them through logging (JSON, redaction)."""
    _cheroot_log.log(level, "%s", msg, exc_info=bool(traceback))


def _read_some(stream, want: int) -> bytes:
    """At most ``want`` bytes, returning as soon as some have arrived, so the body deadline is checked
    between the pieces of a slowly trickling body (cheroot's KnownLengthRFile.read waits for all)."""
    inner = getattr(stream, "rfile", None)
    remaining = getattr(stream, "remaining", None)
    if type(stream).__name__ == "KnownLengthRFile" and remaining is not None and hasattr(inner, "read1"):
        data = inner.read1(min(want, remaining))
        stream.remaining -= len(data)
        return data
    return stream.read(want)


def build_server(app, host: str, port: int, *, threads: int | None = None, tls: bool = True) -> wsgi.Server:
    config = app.config
    max_body = int(config["MAX_CONTENT_LENGTH"])
    wrapped = RequestLimits(app, max_body_bytes=max_body,
                            body_deadline_seconds=float(config.get("REQUEST_BODY_DEADLINE_SECONDS") or 60))
    server = wsgi.Server((host, port), wrapped, numthreads=int(threads or config.get("THREADS") or 16),
                         request_queue_size=256, timeout=float(config.get("REQUEST_TIMEOUT_SECONDS") or 30),
                         server_name=config["SERVER_HOSTNAME"])
    server.error_log = _cheroot_error_log
    # cheroot counts chunk-size lines too, so give it a little slack: the middleware enforces the
    # exact limit on the body, cheroot stops a runaway stream.
    server.max_request_body_size = max_body + 64 * 1024
    if tls:
        from .enroll.pki import get_pki
        pki = get_pki(app)
        server.ssl_adapter = MemoryKeySSLAdapter(pki.tls_context(), str(pki.tls_cert_path))
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
