"""``medistill serve``'s HTTP server (uvicorn with the guarded protocol of ``medistill.serve.server``) on loopback:
slow clients beside a normal one, the read deadline, the per-client and total connection caps, and the JSON
error body with the security headers on every refusal the server itself answers.

The server runs in a thread on a free port of 127.0.0.1; slow clients connect from 127.0.0.2 (all of 127.0.0.0/8
is loopback on Linux) so that they are another client address than the normal one. Every slow client is a bounded
loop that stops by itself.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from test_serve import LABELS, export_tiny, png_bytes

SLOW_HOST = "127.0.0.2"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return export_tiny(tmp_path_factory.getbasetemp() / "serve-model")


class Running:
    def __init__(self, server, thread, port):
        self.server, self.thread, self.port = server, thread, port


def start(model_path: Path, **limits) -> Running:
    from medistill.serve import create_app
    from medistill.serve.server import bind, build_server

    read_timeout = limits.pop("read_timeout", 60.0)
    app = create_app(model_path, read_timeout=read_timeout)
    sock = bind("127.0.0.1", 0)
    server = build_server(app, read_timeout=read_timeout, **limits)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(600):  # bounded: up to 60 s for start-up on a busy machine
        if server.started:
            break
        time.sleep(0.1)
    assert server.started
    return Running(server, thread, sock.getsockname()[1])


def stop(run: Running) -> None:
    run.server.should_exit = True
    run.thread.join(timeout=30)


def request(port: int, raw: bytes, source: str = "127.0.0.1", timeout: float = 30) -> tuple[int, dict, bytes]:
    """Send ``raw`` and read the whole answer (the server closes or sends Content-Length)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0)) as s:
        s.sendall(raw)
        return read_answer(s)


def read_answer(s: socket.socket) -> tuple[int, dict, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before an answer: {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", 0))
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def predict_request(image: bytes, host: str = "127.0.0.1") -> bytes:
    boundary = b"b0undary"
    body = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n' + image
            + b"\r\n--" + boundary + b"--\r\n")
    return (b"POST /api/predict?preview=false HTTP/1.1\r\nHost: " + host.encode() + b"\r\nContent-Type: "
            b"multipart/form-data; boundary=" + boundary + b"\r\nContent-Length: " + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n" + body)


def assert_json_error(status: int, headers: dict, body: bytes, expected_status: int, code: str) -> None:
    assert status == expected_status, (status, body)
    assert headers["content-type"] == "application/json"
    assert "default-src 'self'" in headers["content-security-policy"] and headers["x-content-type-options"] == "nosniff"
    assert json.loads(body)["error"] == code


class Trickler(threading.Thread):
    """A slow client: sends the headers of an upload of 10,000 bytes, then one byte every ``every`` s, at most
    ``max_bytes`` bytes; stops when the server answers or closes, or when its bytes are spent."""

    def __init__(self, port: int, every: float = 0.2, max_bytes: int = 60, headers_only: bool = False):
        super().__init__(daemon=True)
        self.port, self.every, self.max_bytes, self.headers_only = port, every, max_bytes, headers_only
        self.status: int | None = None
        self.answer: tuple[int, dict, bytes] | None = None
        self.connected = threading.Event()

    def run(self) -> None:
        head = (b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                b"Content-Length: 10000\r\n\r\n")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=30, source_address=(SLOW_HOST, 0)) as s:
                self.connected.set()
                preamble = b'--x\r\nContent-Disposition: form-data; name="file"; filename="slow.png"\r\n\r\n'
                payload = head[:-4] if self.headers_only else head + preamble  # headers_only: they never end
                s.sendall(payload)
                s.settimeout(self.every)
                for _ in range(self.max_bytes):
                    try:
                        if s.recv(1, socket.MSG_PEEK):  # the server answered
                            s.settimeout(30)
                            self.answer = read_answer(s)
                            self.status = self.answer[0]
                            return
                        return  # closed without an answer
                    except socket.timeout:
                        pass
                    s.sendall(b"x")
        except OSError:
            self.connected.set()


def test_normal_client_is_served_while_64_slow_clients_trickle(model_path):
    """64 slow clients from one address trickle their uploads: 16 are held (the per-client cap), the others are
    refused at once with 429; the normal client on another address gets every one of its predictions."""
    run = start(model_path, max_connections=64, max_per_client=16, read_timeout=60.0)
    try:
        slow = [Trickler(run.port, every=0.2, max_bytes=50) for _ in range(64)]
        for t in slow:
            t.start()
            t.connected.wait(30)
        time.sleep(0.5)  # let the server count them (not a timing assertion)
        image = png_bytes(np.random.default_rng(0).integers(0, 256, (96, 96), dtype=np.uint8))
        statuses = [request(run.port, predict_request(image))[0] for _ in range(8)]
        held = sum(t.is_alive() for t in slow)
        for t in slow:
            t.join(timeout=60)
    finally:
        stop(run)
    print(f"normal client: {statuses.count(200)} of {len(statuses)} predictions served while 64 slow clients "
          f"trickled ({held} held, {sum(t.status == 429 for t in slow)} refused with 429)")
    assert statuses == [200] * 8
    assert sum(t.status == 429 for t in slow) == 64 - 16
    assert all(t.answer is None or t.answer[2] for t in slow)
    refused = next(t for t in slow if t.status == 429)
    assert_json_error(*refused.answer, 429, "too_many_connections")


def test_read_deadline_answers_408_to_slow_body_and_slow_headers(model_path):
    """A body trickling past the read deadline gets the application's 408 (JSON); headers that never end get the
    server's 408 (JSON), and both connections are closed."""
    run = start(model_path, read_timeout=1.0)
    try:
        body, heads = Trickler(run.port, every=0.2, max_bytes=100), Trickler(run.port, every=0.2, max_bytes=100,
                                                                              headers_only=True)
        body.start()
        heads.start()
        body.join(timeout=60)
        heads.join(timeout=60)
    finally:
        stop(run)
    assert_json_error(*body.answer, 408, "upload_timeout")
    assert body.answer[1]["connection"] == "close"
    assert_json_error(*heads.answer, 408, "request_timeout")


def test_total_cap_and_bad_http_are_json_with_security_headers(model_path):
    """Over max_connections: 503 JSON (uvicorn's own answer was plain text); a request that is not HTTP: 400 JSON."""
    run = start(model_path, max_connections=2, max_per_client=16)
    try:
        held = [socket.create_connection(("127.0.0.1", run.port), timeout=30) for _ in range(2)]
        time.sleep(0.3)
        third = request(run.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        for s in held:
            s.close()
        time.sleep(0.3)
        garbage = request(run.port, b"\x16\x03\x01 not http at all\r\n\r\n")
        ok = request(run.port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    finally:
        stop(run)
    assert_json_error(*third, 503, "server_busy")
    assert_json_error(*garbage, 400, "bad_request")
    assert ok[0] == 200 and json.loads(ok[2])["status"] == "ok" and LABELS
