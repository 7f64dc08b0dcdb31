"""The production server over raw sockets: body limits that hold for chunked bodies, cut-off slow
clients, and ``python -m mdm.run`` (what run.sh starts) serving HTTPS with JSON logs."""
from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from flask import request

from mdm.extensions import db
from mdm.serve import BackgroundServer
from tests.conftest import free_port, make_app

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 64 * 1024


@pytest.fixture
def server(tmp_path, pki_template):
    app = make_app(tmp_path, pki_template, MAX_CONTENT_LENGTH=LIMIT, REQUEST_TIMEOUT_SECONDS=1,
                   REQUEST_BODY_DEADLINE_SECONDS=2, WTF_CSRF_METHODS=[])  # /_echo is a test route, not a form
    app.received = []

    from mdm.ui.access import public

    @app.route("/_echo", methods=["PUT", "POST"])
    @public
    def echo():
        body = request.get_data()
        app.received.append(body)
        return {"length": len(body)}

    with BackgroundServer(app) as srv:
        srv.app = app
        srv.ca_file = str(Path(app.config["CERTS_DIR"]) / "ca.pem")
        yield srv
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def connect(srv) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=srv.ca_file)
    raw = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    return context.wrap_socket(raw, server_hostname="localhost")


def read_response(sock) -> tuple[int | None, bytes]:
    """Everything the server sends until it closes the connection (or a full response with a length)."""
    data = b""
    try:
        while True:
            part = sock.recv(65536)
            if not part:
                break
            data += part
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep and b"content-length:" in head.lower():
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    break
    except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
        pass
    if not data.startswith(b"HTTP/"):
        return None, data
    return int(data.split(b" ", 2)[1]), data


def chunked(body: bytes, size: int = 8192) -> bytes:
    out = b""
    for i in range(0, len(body), size):
        part = body[i:i + size]
        out += f"{len(part):x}\r\n".encode() + part + b"\r\n"
    return out + b"0\r\n\r\n"


def send_chunked(srv, path: str, body: bytes) -> tuple[int | None, bytes]:
    with connect(srv) as sock:
        sock.sendall(f"PUT {path} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
                     "Content-Type: application/octet-stream\r\n\r\n".encode())
        try:
            sock.sendall(chunked(body))
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # the server may answer 413 and close before taking the rest
        return read_response(sock)


def test_a_chunked_body_within_the_limit_reaches_the_app_whole(server):
    body = os.urandom(LIMIT - 10)
    status, data = send_chunked(server, "/_echo", body)
    assert status == 200, data[:300]
    assert json.loads(data.partition(b"\r\n\r\n")[2]) == {"length": len(body)}
    assert server.app.received == [body]


@pytest.mark.parametrize("path", ["/_echo", "/mdm/checkin", "/mdm/server"])
def test_an_oversize_chunked_body_gets_413_never_a_truncated_200(server, path):
    status, data = send_chunked(server, path, os.urandom(LIMIT + 1))
    assert status == 413, data[:300]
    assert server.app.received == []


def test_a_huge_chunked_stream_is_stopped_with_413(server):
    status, _ = send_chunked(server, "/_echo", os.urandom(LIMIT * 8))
    assert status == 413
    assert server.app.received == []


def test_an_oversize_content_length_gets_413(server):
    with connect(server) as sock:
        sock.sendall(f"PUT /_echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: {LIMIT + 1}\r\n\r\n".encode())
        sock.sendall(b"x" * 1024)
        status, _ = read_response(sock)
    assert status == 413
    assert server.app.received == []


def test_a_client_that_stalls_in_its_headers_is_cut_off(server):
    with connect(server) as sock:
        sock.sendall(b"PUT /_echo HTTP/1.1\r\nHost: localhost\r\n")   # ...and nothing more
        status, data = read_response(sock)
    assert status in (408, None), data[:200]   # 408 when the server can still say so, then closed
    assert server.app.received == []


@pytest.mark.parametrize("path", ["/_echo", "/mdm/checkin"])
def test_a_client_that_stalls_in_its_body_is_cut_off_with_408(server, path):
    with connect(server) as sock:
        sock.sendall(f"PUT {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n".encode() + b"x" * 10)
        status, _ = read_response(sock)
    assert status == 408
    assert server.app.received == []


def test_a_body_that_trickles_in_past_the_deadline_is_cut_off(server):
    # Each byte comes well within the socket timeout (1 s), the whole body not within the deadline (2 s).
    with connect(server) as sock:
        sock.sendall(b"PUT /_echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n")
        closed = False
        for _ in range(100):
            try:
                sock.sendall(b"x")
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                closed = True
                break
            time.sleep(0.3)
            sock.setblocking(False)
            try:
                if sock.recv(65536) is not None:
                    closed = True
                    break
            except (ssl.SSLWantReadError, BlockingIOError):
                pass
            finally:
                sock.setblocking(True)
        assert closed, "the server kept waiting for a body that never finished"
    assert server.app.received == []


# ---------------------------------------------------------------- the production command


def test_run_sh_starts_the_production_command():
    assert "python -m mdm.run" in (ROOT / "run.sh").read_text()


def test_mdm_run_serves_https_and_logs_json(tmp_path, pki_template):
    import shutil
    shutil.copytree(pki_template, tmp_path / "certs")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MDM_")}
    env.update({"MDM_INSTANCE_PATH": str(tmp_path / "instance"), "MDM_CERTS_DIR": str(tmp_path / "certs"),
                "MDM_DATABASE_URL": f"sqlite:///{tmp_path / 'mdm.db'}", "MDM_SCHEDULER_ENABLED": "false",
                "MDM_LISTEN_HOST": "127.0.0.1", "MDM_PORT": str(port), "MDM_THREADS": "4",
                "MDM_SERVER_URL": f"https://localhost:{port}", "MDM_LOG_FORMAT": "json", "PYTHONPATH": str(ROOT)})
    log_file = tmp_path / "stderr.log"
    with open(log_file, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "mdm.run"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=err, text=True)
        try:
            for line in proc.stdout:
                if line.startswith("Serving on"):
                    break
            else:
                pytest.fail(f"server did not start: {log_file.read_text()}")
            assert "4 threads" in line
            verify = ssl.create_default_context(cafile=str(tmp_path / "certs" / "ca.pem"))
            response = httpx.get(f"https://localhost:{port}/ca.pem", verify=verify)
            assert response.status_code == 200
            request_id = response.headers["X-Request-Id"]
            big = httpx.put(f"https://localhost:{port}/mdm/checkin", verify=verify,
                            content=iter([b"x" * 65536] * 200))   # a chunked 12.5 MiB body
            assert big.status_code == 413
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    lines = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
    access = [e for e in lines if e["logger"] == "mdm.access" and e.get("request_id") == request_id]
    assert len(access) == 1
    assert access[0]["path"] == "/ca.pem" and access[0]["status"] == 200 and access[0]["remote_addr"] == "127.0.0.1"
    assert {"time", "level", "logger", "message"} <= set(access[0])
    assert any(e["logger"] == "mdm.access" and e.get("status") == 413 for e in lines)


def test_a_body_cut_short_by_the_client_gets_400_not_a_truncated_request(tmp_path, pki_template):
    # Plain HTTP (as behind a TLS-terminating proxy), where the client can half-close its side.
    app = make_app(tmp_path, pki_template, TLS=False)
    with BackgroundServer(app, tls=False) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
            sock.sendall(b"PUT /mdm/checkin HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
            sock.shutdown(socket.SHUT_WR)
            status, data = read_response(sock)
    assert status == 400, data[:200]
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def test_a_malformed_chunked_body_gets_400_not_500(server):
    with connect(server) as sock:
        sock.sendall(b"PUT /mdm/checkin HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"zz\r\nhello\r\n0\r\n\r\n")
        status, data = read_response(sock)
    assert status == 400, data[:200]
