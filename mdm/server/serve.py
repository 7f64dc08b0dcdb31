"""The production server: granian (Rust: TLS, HTTP/1.1, connection handling on an async runtime) in
front of the Flask app, which runs in a pool of Python threads. ``python -m mdm.run`` (``./run.sh``)
and the end-to-end tests start exactly this, so tests exercise the server devices talk to.

Why this shape (docs/security.md, docs/benchmarks.md): a client that connects and never starts its
TLS handshake, stops half-way through it, sends its headers a byte at a time or trickles its body
must not hold anything another client needs. Handshakes, header reads and body reads happen on
granian's async runtime, where a stalled connection costs a little memory and no thread; a Python
thread is taken only for a request whose body has fully arrived. The bridge between the two is the
RSGI app below (``WSGIBridge``): it reads the body asynchronously under the size limit and the body
deadline, then calls the WSGI app in the thread pool.

Device read paths are answered on the event-loop thread itself, without Flask. Handing a request to a pool
thread and its answer back costs about 0.35 ms of CPU (queues, wake-ups, interpreter-lock hand-offs), and
Flask's request machinery about 0.15 ms more: together more than the read path itself. So for a route the
app lists in ``app.extensions["mdm_event_loop_reads"]`` (the device check-in and connect:
``answer_from_read_path`` in mdm/protocol/views.py) the bridge first calls that function right there: it
answers from a read path (a read transaction; never the writer lock), or returns None having written
nothing, and the request then runs through Flask on a pool thread as any other. Bodies over
``EVENT_LOOP_MAX_BODY_BYTES`` (16 KiB) and everything else (the admin UI, the API, enrollment, SCEP) always
run on a pool thread, and so does every request when the database is PostgreSQL (``event_loop_reads``).
A refused device request is thus read twice (once here, once on the pool thread that refuses and audits
it): a bounded cost, at most 16 KiB of parsing.

Limits and deadlines (settings ``MDM_*``):

- ``MAX_CONTENT_LENGTH`` (8 MiB): larger bodies get 413, whether announced by Content-Length or
  sent chunked; the application only ever sees complete bodies. Endpoints may set smaller limits.
- ``REQUEST_TIMEOUT_SECONDS`` (30, at most 60): a connection that has not sent complete request
  headers this long after it was opened (or after its previous response) is closed.
- ``REQUEST_BODY_DEADLINE_SECONDS`` (60): the whole body must arrive within this time, however
  slowly it trickles in; otherwise 408 and the connection is closed.
- TLS handshakes not finished within 10 s are dropped (granian's fixed handshake timeout).
- ``THREADS`` (4): Python threads per worker process running the app. More threads do not make one
  process faster: they take turns at the interpreter lock, and on an idle 2-core machine 16 threads
  served 18 % fewer check-ins than 4, at 28 % more CPU each (docs/benchmarks.md, "third pass").
- ``WORKERS`` (1, or ``auto`` for one per CPU core): worker processes; each runs the whole app. Use
  one per core for throughput (2 workers served 1.6-1.8x one on 2 cores shared with wrk, SQLite). The scheduler runs in
  exactly one of them (the scheduler lock, ``mdm.scheduler``), whatever the count.
- ``SHUTDOWN_TIMEOUT_SECONDS`` (5): after SIGTERM/SIGINT, requests in flight get this long to
  finish; then the workers are killed. Idle and half-open connections are simply closed.

HTTP/2 is off: devices speak HTTP/1.1, and with HTTP/2 enabled granian waits for the first bytes of
a TLS connection without a deadline (to tell the protocols apart), which a silent client could use
to hold connections open forever.

The TLS key never touches the disk in the clear: it is opened with the secrets key and handed to
the workers as an anonymous in-memory file (``memfd``) that they inherit.
"""
from __future__ import annotations

import asyncio
import io
import logging
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from .. import create_app
from ..pki import get_pki, read_private_key_pem
from ..extensions import db
from ..ops.logs import access_log, request_context
from ..scheduler import start_scheduler

log = logging.getLogger(__name__)

# The granian target each worker process loads (a factory: called once per worker).
PRODUCTION_TARGET = "mdm.server.serve:production_worker_app"

# A request tried on the event loop first carries at most this much body: a check-in or an Idle is well under
# 1 KiB, and a large body (a command result, a hostile message) must not hold the event loop while it is parsed.
EVENT_LOOP_MAX_BODY_BYTES = 16 * 1024
_MAX_HEADER_TIMEOUT_MS = 60_000   # granian's upper bound for the header read timeout
_supervisor_pid: int | None = None   # set in the process that builds the server; forked workers inherit it


class WorkersSettingError(ValueError):
    """``WORKERS`` is neither a positive number nor ``auto``."""


class BodyTooLarge(Exception):
    pass


class IncompleteBody(Exception):
    """The client closed the connection before sending the body it announced."""


class WSGIBridge:
    """An RSGI application (granian's native interface) that runs a WSGI app.

    Per request: refuse an announced body over the limit at once (413); read the body on the event
    loop, stopping at the limit (413), at the deadline (408) or when the client goes away; then
    call the WSGI app in a thread with ``wsgi.input`` holding the complete body, give every request
    an id (``X-Request-Id``) and write one access-log line. The app's response is collected in the
    thread and sent in one piece (the admin UI and the device protocol send small, complete
    responses; nothing streams)."""

    def __init__(self, app, *, max_body_bytes: int, body_deadline_seconds: float, threads: int,
                 multiprocess: bool = False, on_shutdown=None, event_loop_reads=None):
        self.app = app
        self.event_loop_reads = dict(event_loop_reads or {})   # (method, path) -> read path tried on the loop
        self.max_body_bytes = max_body_bytes
        self.body_deadline_seconds = body_deadline_seconds
        self.multiprocess = multiprocess
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mdm-app")
        self._on_shutdown = on_shutdown

    # -- the RSGI protocol
    def __rsgi_del__(self, loop):
        self.close()

    async def __rsgi__(self, scope, proto):
        if scope.proto != "http":   # websockets: not offered
            return
        started = time.monotonic()
        request_id = uuid.uuid4().hex[:16]
        announced = scope.headers.get("content-length")
        try:
            if announced is not None and int(announced) > self.max_body_bytes:
                raise BodyTooLarge()
            # asyncio.timeout, not wait_for: no extra task per request on the event loop.
            async with asyncio.timeout(self.body_deadline_seconds):
                if announced is not None:
                    body = await proto()     # within the limit (checked above): read in one piece
                else:
                    body = await self._read_body(proto)   # chunked (or none): counted as it arrives
            if announced is not None and len(body) != int(announced):
                raise IncompleteBody()   # granian ends the stream quietly when the client goes away
        except BodyTooLarge:
            return self._refuse(proto, scope, request_id, started, 413,
                                f"The request body exceeds {self.max_body_bytes} bytes.\n")
        except asyncio.TimeoutError:
            return self._refuse(proto, scope, request_id, started, 408,
                                "The request body did not arrive in time.\n")
        except ValueError:   # a Content-Length that is not a number
            return self._refuse(proto, scope, request_id, started, 400, "Malformed Content-Length.\n")
        except Exception:    # the client went away or broke the framing before the body was complete
            return self._refuse(proto, scope, request_id, started, 400,
                                "The request body ended before it was complete.\n")
        read = self.event_loop_reads.get((scope.method, scope.path)) if len(body) <= EVENT_LOOP_MAX_BODY_BYTES else None
        if read is not None:
            answer = self._answer_on_event_loop(read, self._environ(scope, body, request_id), started)
            if answer is not None:
                return proto.response_bytes(*answer)
        loop = asyncio.get_running_loop()
        status, headers, data = await loop.run_in_executor(
            self.executor, self._call_app, self._environ(scope, body, request_id), started)
        proto.response_bytes(status, headers, data)

    async def _read_body(self, proto) -> bytes:
        parts, total = [], 0
        async for part in proto:
            total += len(part)
            if total > self.max_body_bytes:
                raise BodyTooLarge()
            parts.append(part)
        return b"".join(parts)

    # -- WSGI
    def _environ(self, scope, body: bytes, request_id: str) -> dict:
        server_host, _, server_port = (scope.server or "").rpartition(":")
        client_host, _, client_port = (scope.client or "").rpartition(":")
        environ = {
            "REQUEST_METHOD": scope.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": scope.path.encode("utf-8", "surrogateescape").decode("latin-1"),
            "QUERY_STRING": scope.query_string,
            "SERVER_NAME": server_host.strip("[]") or "localhost",
            "SERVER_PORT": server_port or "0",
            "SERVER_PROTOCOL": f"HTTP/{scope.http_version}",
            "REMOTE_ADDR": client_host.strip("[]"),
            "REMOTE_PORT": client_port,
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": scope.scheme,
            "wsgi.input": io.BytesIO(body),
            "wsgi.input_terminated": True,
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": self.multiprocess,
            "wsgi.run_once": False,
            "mdm.request_id": request_id,
            "mdm.bytes_in": len(body),
        }
        for name, value in scope.headers.items():
            key = name.upper().replace("-", "_")
            if key == "CONTENT_LENGTH":   # the length of the body actually read is set above
                continue
            if key != "CONTENT_TYPE":
                key = "HTTP_" + key
            if key in environ:   # a repeated header: one value, as RFC 9110 allows (cookies with ';')
                value = environ[key] + ("; " if key == "HTTP_COOKIE" else ", ") + value
            environ[key] = value
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        return environ

    def _answer_on_event_loop(self, read, environ: dict, started: float):
        """(status, headers, body) from the route's read path, with one access line; or None: the request
        goes to a pool thread (module docstring), and its access line is written there."""
        token = request_context.set(self._log_context(environ))
        try:
            try:
                answer = read(environ)
            except Exception:   # the pool thread's run decides, and logs what goes wrong there
                answer = None
            if answer is None:
                return None
            status, headers, data = answer
            self._access_line(environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), status, started,
                              environ.get("mdm.bytes_in"))
            return status, [*headers, ("X-Request-Id", environ["mdm.request_id"])], data
        finally:
            request_context.reset(token)

    @staticmethod
    def _log_context(environ: dict) -> dict:
        return {"request_id": environ["mdm.request_id"], "remote_addr": environ.get("REMOTE_ADDR"),
                "method": environ.get("REQUEST_METHOD"), "path": environ.get("PATH_INFO")}

    def _call_app(self, environ: dict, started: float):
        token = request_context.set(self._log_context(environ))
        response = {}

        def start_response(status, headers, exc_info=None):
            response["status"] = status
            response["headers"] = list(headers) + [("X-Request-Id", environ["mdm.request_id"])]
            return lambda data: response.setdefault("written", []).append(data)

        try:
            result = self.app(environ, start_response)
            try:
                data = b"".join(response.get("written", [])) + b"".join(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
            status = int(response["status"][:3])
            return status, response["headers"], data
        except Exception:
            log.exception("unhandled error serving %s %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
            status = 500
            return status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("X-Request-Id", environ["mdm.request_id"])], b"Internal Server Error\n"
        finally:
            self._access_line(environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"),
                              response.get("status"), started, environ.get("mdm.bytes_in"))
            request_context.reset(token)

    def _refuse(self, proto, scope, request_id: str, started: float, status: int, text: str):
        token = request_context.set({"request_id": request_id, "remote_addr": (scope.client or "").rpartition(":")[0],
                                     "method": scope.method, "path": scope.path})
        try:
            self._access_line(scope.method, scope.path, str(status), started, None)
        finally:
            request_context.reset(token)
        # "Connection: close": the rest of a refused body is not read, so the connection cannot be reused.
        proto.response_bytes(status, [("Content-Type", "text/plain; charset=utf-8"), ("Connection", "close"),
                                      ("X-Request-Id", request_id)], text.encode())

    @staticmethod
    def _access_line(method, path, status, started, bytes_in):
        code = int(str(status)[:3]) if status else None
        duration_ms = round((time.monotonic() - started) * 1000, 1)
        access_log.info("%s %s %s %.1fms", method, path, code, duration_ms,
                        extra={"status": code, "duration_ms": duration_ms, "bytes_in": bytes_in})

    def close(self):
        if self._on_shutdown:
            self._on_shutdown()
            self._on_shutdown = None
        self.executor.shutdown(wait=False, cancel_futures=True)


def bridge_for(app, *, with_scheduler: bool = False) -> WSGIBridge:
    """The RSGI app a worker serves: ``app`` behind the body limits, with the scheduler started in
    this worker when asked (the scheduler lock makes it one per deployment)."""
    scheduler = None
    if with_scheduler and app.config["SCHEDULER_ENABLED"]:
        scheduler = start_scheduler(app)

    def shutdown():
        if scheduler:
            scheduler.shutdown(wait=False)
        with app.app_context():
            db.engine.dispose()

    config = app.config
    return WSGIBridge(app, max_body_bytes=int(config["MAX_CONTENT_LENGTH"]),
                      body_deadline_seconds=float(config.get("REQUEST_BODY_DEADLINE_SECONDS") or 60),
                      threads=int(config.get("THREADS") or 4), multiprocess=worker_count(config) > 1,
                      on_shutdown=shutdown, event_loop_reads=event_loop_reads(app))


def event_loop_reads(app) -> dict:
    """The read paths the app offers to the event loop (module docstring), when its database is SQLite: there a
    read is a read of a local file. A PostgreSQL read waits for another process, and the event loop would
    wait with it instead of serving the next request (measured: 20-40 % fewer DDM check-ins a second in
    one worker), so with PostgreSQL every request runs on a pool thread."""
    with app.app_context():
        if db.engine.dialect.name != "sqlite":
            return {}
    return dict(app.extensions.get("mdm_event_loop_reads", {}))


def worker_count(config) -> int:
    """``WORKERS``: a positive number, or ``auto`` for one worker per CPU core this process may use."""
    value = config.get("WORKERS")
    if value is None or value == "":
        return 1
    if isinstance(value, str) and value.strip().lower() == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = 0
    if count < 1 or isinstance(value, bool):
        raise WorkersSettingError(f"WORKERS must be a positive number or 'auto', not {value!r}")
    return count


def production_worker_app() -> WSGIBridge:
    """granian's factory target in each worker process: the app from ``instance/config.py`` and
    ``MDM_*``, the scheduler (one per deployment) and the bridge."""
    die_with_parent()
    return bridge_for(create_app(), with_scheduler=True)


def die_with_parent() -> None:
    """A worker ends when its supervisor does, even by SIGKILL (crash, OOM killer): otherwise an
    orphaned worker would keep the port and the scheduler lock (Linux ``PR_SET_PDEATHSIG``)."""
    import ctypes
    import signal
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))   # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):        # not Linux: the supervisor's own shutdown still stops us
        return
    if _supervisor_pid is not None and os.getppid() != _supervisor_pid:   # it died before prctl took effect
        os._exit(1)


# ---------------------------------------------------------------- the server

def tls_key_memfd(key_pem: bytes) -> str:
    """A path to ``key_pem`` that exists in memory only: an anonymous file (memfd) that worker
    processes inherit when forked, read as ``/proc/self/fd/N``. Not inheritable across exec."""
    fd = os.memfd_create("mdm-tls-key", os.MFD_CLOEXEC)
    os.write(fd, key_pem)
    return f"/proc/self/fd/{fd}"


def build_server(app, *, target: str = PRODUCTION_TARGET, factory: bool = True):
    """A granian server for ``app``'s settings (each worker builds its own app from ``target``). Call ``.serve()``: it blocks until SIGTERM
    or SIGINT. TLS uses our CA-issued certificate unless ``TLS`` is false (behind a proxy)."""
    from granian.constants import HTTPModes, Interfaces, SSLProtocols
    from granian.http import HTTP1Settings
    from granian.server import Server

    global _supervisor_pid
    _supervisor_pid = os.getpid()
    config = app.config
    header_timeout_ms = min(int(float(config.get("REQUEST_TIMEOUT_SECONDS") or 30) * 1000), _MAX_HEADER_TIMEOUT_MS)
    tls = bool(config.get("TLS", True))
    key_path = None
    if tls:
        pki = get_pki(app)
        key_path = tls_key_memfd(read_private_key_pem(pki.tls_key_path, pki.box))
    server = Server(
        target, address=str(config["LISTEN_HOST"]), port=int(config["PORT"]), interface=Interfaces.RSGI,
        factory=factory, workers=worker_count(config), http=HTTPModes.http1, websockets=False,
        runtime_threads=1, backlog=1024,
        http1_settings=HTTP1Settings(header_read_timeout=header_timeout_ms, keep_alive=True),
        log_enabled=True, log_access=False, log_dictconfig=_GRANIAN_LOGGING,
        workers_kill_timeout=max(1, int(float(config.get("SHUTDOWN_TIMEOUT_SECONDS") or 5))),
        respawn_failed_workers=True,
    )
    if tls:
        # granian reads the certificate and key files in each worker (rustls); hand it our memfd
        # rather than a path it could resolve (it calls Path.resolve(), which would lose /proc/self).
        cert = str(pki.tls_cert_path.resolve())
        server.ssl_ctx = (True, cert, key_path, None, str(SSLProtocols.tls12.value), None, [], False)
    return server


# granian's own messages go through our logging set-up (text or JSON, redaction), not to stdout.
_GRANIAN_LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {},
    "loggers": {
        "_granian": {"handlers": [], "level": "INFO", "propagate": True},
        "granian.access": {"handlers": [], "level": "WARNING", "propagate": True},
    },
}
