"""A real local HTTP/2-over-TLS server standing in for APNs (test helper).

Built on the ``h2`` state machine over plain sockets so it can see what APNs sees: the negotiated
protocol (ALPN must be h2), the TLS client certificate the sender presented, and each request's
path, headers and JSON body. Answers per device token are scripted with ``answer()``.
"""
from __future__ import annotations

import hashlib
import json
import socket
import ssl
import threading
import uuid
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events


@dataclass
class ReceivedPush:
    method: str
    path: str
    headers: dict
    body: bytes
    alpn_protocol: str | None
    http_version: str            # always "2": only the h2 state machine parses requests here
    client_cert_sha256: str | None
    thread_name: str = ""

    @property
    def token(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def json(self):
        return json.loads(self.body)


@dataclass
class _Script:
    answers: list = field(default_factory=list)   # consumed in order; the last one repeats


class FakeAPNs:
    """``with FakeAPNs(cert, key, client_ca) as apns: ... apns.url, apns.requests``"""

    def __init__(self, cert_file: str, key_file: str, client_ca_file: str | None = None):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert_file, key_file)
        self.context.set_alpn_protocols(["h2"])
        if client_ca_file:
            # Like APNs: no client certificate from a trusted issuer, no connection.
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(client_ca_file)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self.requests: list[ReceivedPush] = []
        self.handshake_failures: list[str] = []
        self.released = threading.Event()
        self.released.set()
        self.arrived = threading.Event()      # set whenever a request arrives
        self._scripts: dict[str, _Script] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._connections: list[socket.socket] = []
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True, name="fake-apns")

    # ------------------------------------------------------------ scripting

    def answer(self, token: str, *answers) -> None:
        """Answers for requests to this token, in order, the last repeating: 200, 410, (400, "BadDeviceToken")."""
        with self._lock:
            self._scripts[token.lower()] = _Script([a if isinstance(a, tuple) else (a, None) for a in answers])

    def hold(self) -> None:
        """Keep requests waiting (unanswered) until ``release()``."""
        self.released.clear()

    def release(self) -> None:
        self.released.set()

    def requests_for(self, token: str) -> list[ReceivedPush]:
        with self._lock:
            return [r for r in self.requests if r.token == token.lower()]

    def _next_answer(self, token: str) -> tuple[int, str | None]:
        with self._lock:
            script = self._scripts.get(token.lower())
            if not script or not script.answers:
                return 200, None
            return script.answers.pop(0) if len(script.answers) > 1 else script.answers[0]

    # ------------------------------------------------------------ lifecycle

    def __enter__(self):
        self._accept_thread.start()
        return self

    def __exit__(self, *exc):
        self.release()
        self._stopping = True
        try:
            self.listener.shutdown(socket.SHUT_RDWR)   # wakes the blocked accept() (close alone does not)
        except OSError:
            pass
        self.listener.close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        self._accept_thread.join(timeout=5)

    def _accept_loop(self):
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            if self._stopping:
                raw.close()
                return
            with self._lock:
                self._connections.append(raw)
            threading.Thread(target=self._serve, args=(raw,), daemon=True, name="fake-apns-conn").start()

    # ------------------------------------------------------------ one connection

    def _serve(self, raw: socket.socket):
        try:
            tls = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.handshake_failures.append(str(exc))
            raw.close()
            return
        alpn = tls.selected_alpn_protocol()
        peer = tls.getpeercert(binary_form=True)
        peer_sha256 = hashlib.sha256(peer).hexdigest() if peer else None
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        streams: dict[int, dict] = {}
        try:
            tls.sendall(conn.data_to_send())
            while True:
                data = tls.recv(65535)
                if not data:
                    return
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        streams[ev.stream_id] = {"headers": dict(ev.headers), "body": b""}
                    elif isinstance(ev, h2.events.DataReceived):
                        streams[ev.stream_id]["body"] += ev.data
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded):
                        self._respond(conn, ev.stream_id, streams.pop(ev.stream_id), alpn, peer_sha256)
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        tls.sendall(conn.data_to_send())
                        return
                tls.sendall(conn.data_to_send())
        except (OSError, ssl.SSLError):
            return
        finally:
            tls.close()

    def _respond(self, conn, stream_id: int, stream: dict, alpn, peer_sha256):
        headers = stream["headers"]
        request = ReceivedPush(headers.get(":method", ""), headers.get(":path", ""),
                               {k: v for k, v in headers.items() if not k.startswith(":")},
                               stream["body"], alpn, "2", peer_sha256, threading.current_thread().name)
        with self._lock:
            self.requests.append(request)
        self.arrived.set()
        self.released.wait()
        status, reason = self._next_answer(request.token)
        apns_id = str(uuid.uuid4()).upper()
        body = b"" if status == 200 else json.dumps({"reason": reason or "InternalServerError"}).encode()
        response_headers = [(":status", str(status)), ("apns-id", apns_id)]
        if body:
            response_headers += [("content-type", "application/json"), ("content-length", str(len(body)))]
        conn.send_headers(stream_id, response_headers, end_stream=not body)
        if body:
            conn.send_data(stream_id, body, end_stream=True)
