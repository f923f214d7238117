"""The HTTP server of ``medistill serve``: uvicorn with its h11 protocol guarded per connection.

uvicorn bounds connections in all (``limit_concurrency``) but not per client, answers over that bound in plain
text, and waits forever for a request whose headers trickle in. :class:`GuardedH11Protocol` adds, per connection:

- a cap on connections **per client address** (``max_per_client``, 16: 429) and in all (``max_connections``,
  1,024, within the process's open-file limit). A refused connection is not counted: it is answered as soon as
  its request's headers are in (JSON error body, security headers, then closed), and closed without an answer if
  they are not in within :data:`REFUSAL_GRACE_S`;
- when the server is full, a new connection takes the place of the open connection that has **waited longest for
  its request's headers** (idle, or trickling them in) for at least :data:`EVICTION_GRACE_S`: that one gets 503
  and is closed. Only when every open connection has a request in flight or opened within that grace is the new
  one refused (503). Slow clients can fill the server, but cannot
  lock a normal client out: its request is in flight a moment after it connects;
- a **header deadline**: a request whose headers are not complete ``header_timeout`` seconds (10) after the
  connection opened (or after its previous answer) gets 408 and the connection is closed. Headers are small: 10 s
  is a minimum rate of well under a kilobyte a second. Once the application has the request it applies
  ``read_timeout`` (60 s) and a minimum upload rate to the body (``upload.read_upload``), and a body still
  trickling in after its answer is cut at the next header deadline;
- the JSON error body for uvicorn's own 400 (a request that is not HTTP).

So a slow client costs one connection (a protocol object and its buffers: a few kilobytes) for at most
``header_timeout`` seconds, one address cannot hold more than ``max_per_client`` connections, and other clients
keep being served. uvicorn closes a kept-alive connection idle for 5 s.
"""

from __future__ import annotations

import asyncio
import functools
import http
import logging
import socket
from typing import Any

from ..errors import MedistillError
from .guards import error_body, printable, send_error

log = logging.getLogger("medistill.serve")

DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_MAX_PER_CLIENT = 16  # a browser opens at most 6 per host; the load test keeps 16 in flight
DEFAULT_HEADER_TIMEOUT_S = 10.0
#: seconds a refused connection (over a cap) has to send its request's headers and read the refusal
REFUSAL_GRACE_S = 2.0
#: a connection is not dropped for a newer one in its first second: the accept loop takes a burst of pending
#: connections in one go, before any of them is read, so without it a normal client accepted early in a burst of
#: slow clients' reconnections became "the oldest waiting" and was dropped before its request (sent at once) was read
EVICTION_GRACE_S = 1.0
#: open files kept for everything but connections (the model, the spool folder, logs, the listening socket ...)
RESERVED_FILES = 64


class ConnectionLimits:
    """Open connections, in all and per client address, against their caps; the connection to drop for a new one
    when the server is full."""

    def __init__(self, max_connections: int, max_per_client: int, read_timeout: float,
                 header_timeout: float = DEFAULT_HEADER_TIMEOUT_S):
        self.max_connections, self.max_per_client = max_connections, max_per_client
        self.read_timeout, self.header_timeout = read_timeout, header_timeout
        self.open: dict[Any, None] = {}  # the admitted connections (protocols), oldest first
        self.per_client: dict[str, int] = {}

    @property
    def total(self) -> int:
        return len(self.open)

    def admit(self, conn: Any, client: str | None) -> tuple[int, str, str] | None:
        """Count the new connection ``conn`` from ``client``, dropping the connection that has waited longest for
        its request's headers when the server is full; the (status, code, detail) of its refusal (it is then not
        counted) when it is over the per-client cap, or when every open connection has a request in flight."""
        if client is not None and self.per_client.get(client, 0) >= self.max_per_client:
            return 429, "too_many_connections", (f"this client already has {self.max_per_client} connections open "
                                                 f"(the limit per client); retry when one has finished")
        if len(self.open) >= self.max_connections:
            now = conn.loop.time() if hasattr(conn, "loop") else None
            waiting = [c for c in self.open if c.waiting_since is not None
                       and (now is None or now - c.waiting_since >= EVICTION_GRACE_S)]
            if not waiting:
                return 503, "server_busy", (f"the server has {self.max_connections} connections open, each with a "
                                            f"request in flight or just opened; retry in a moment")
            victim = min(waiting, key=lambda c: c.waiting_since)
            victim.drop()
            self.release(victim)
        self.open[conn] = None
        if client is not None:
            self.per_client[client] = self.per_client.get(client, 0) + 1
        return None

    def holds(self, conn: Any) -> bool:
        """Whether ``conn`` was admitted and is still counted."""
        return conn in self.open

    def release(self, conn: Any) -> None:
        """Stop counting ``conn`` (closed, or dropped for another); nothing when it is not counted."""
        if conn not in self.open:
            return
        del self.open[conn]
        if conn.host is not None:
            left = self.per_client.get(conn.host, 1) - 1
            if left > 0:
                self.per_client[conn.host] = left
            else:
                self.per_client.pop(conn.host, None)


def open_file_budget(max_connections: int) -> int:
    """``max_connections``, lowered (with a warning) to what the process's open-file limit allows: each connection
    is a socket. The soft limit is raised towards the hard one first when that gives room."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows: no RLIMIT_NOFILE
        return max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + RESERVED_FILES
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < want:
        allowed = max(1, soft - RESERVED_FILES)
        log.warning("--max-connections %d lowered to %d: the process may open %d files (ulimit -n)",
                    max_connections, allowed, soft)
        return allowed
    return max_connections


def _refusal_app(status: int, code: str, detail: str) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send_error(send, status, code, detail, close=True)

    return app


def _raw_response(status: int, code: str, detail: str) -> bytes:
    """A whole HTTP/1.1 error answer (JSON, security headers, Connection: close) as bytes."""
    headers, body = error_body(status, code, detail, close=True)
    head = f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n".encode("ascii")
    return head + b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n" + body


def guarded_protocol() -> type:
    """:class:`GuardedH11Protocol` (uvicorn is imported here: it is an optional dependency)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        """uvicorn's h11 protocol with the caps, the eviction and the header deadline of the module docstring."""

        def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.limits = limits
            self.host: str | None = None
            self.waiting_since: float | None = None  # when it began waiting for a request's headers (None: in flight)
            self._deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.host = self.client[0] if self.client else None
            self.waiting_since = self.loop.time()
            refusal = self.limits.admit(self, self.host)
            if refusal is not None:
                log.warning("refused a connection from %s: %s", self.host, refusal[1])
                self.app = _refusal_app(*refusal)  # answered once its headers are in, then closed
                self.waiting_since = None  # not counted, never dropped for another
                self._arm(REFUSAL_GRACE_S)
            else:
                self._arm(self.limits.header_timeout)

        def connection_lost(self, exc: Exception | None) -> None:
            self.limits.release(self)
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self.waiting_since = None  # its request is in: no longer a connection to drop for another

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.limits.holds(self):  # (a refused connection is closed after its answer)
                self.waiting_since = self.loop.time()
            self._arm(self.limits.header_timeout)  # the next request on this connection gets its own deadline

        def drop(self) -> None:
            """Answer 503 and close: the server is full and a new connection takes this one's place."""
            log.info("dropped a connection from %s waiting for its request (the server is full)", self.host)
            self.waiting_since = None
            if not self.transport.is_closing():
                self.transport.write(_raw_response(503, "server_busy", "the server is full and this connection "
                                                                       "sent no complete request; retry"))
                self.transport.close()

        def _arm(self, seconds: float) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(seconds, self._deadline_passed)

        def _deadline_passed(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                return  # the application has the request: it applies the deadline and the rate to the body (408)
            if self.cycle is None or self.conn.their_state is h11.IDLE:  # headers incomplete: answer 408
                log.info("closed a connection from %s: no complete request within %.0f s", self.host,
                         self.limits.header_timeout)
                if self.limits.holds(self):  # (a refused one is closed without a word)
                    self.transport.write(_raw_response(408, "request_timeout",
                                                       f"the request headers did not arrive within "
                                                       f"{self.limits.header_timeout:g} s"))
            self.transport.close()  # (or a body still trickling in after its answer)

        def send_400_response(self, msg: str) -> None:
            self.transport.write(_raw_response(400, "bad_request", printable(msg)))
            self.transport.close()

    return GuardedH11Protocol


def build_server(app: Any, *, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 max_per_client: int = DEFAULT_MAX_PER_CLIENT, read_timeout: float,
                 header_timeout: float = DEFAULT_HEADER_TIMEOUT_S, log_level: int = logging.WARNING) -> Any:
    """A ``uvicorn.Server`` for ``app`` with the guarded protocol; run it with ``server.run(sockets=[sock])``.
    ``max_connections`` is lowered to what the open-file limit allows (:func:`open_file_budget`)."""
    import uvicorn

    limits = ConnectionLimits(open_file_budget(max_connections), max_per_client, read_timeout, header_timeout)
    protocol = functools.partial(guarded_protocol(), limits=limits)
    config = uvicorn.Config(app, http=protocol, log_config=None, log_level=log_level,  # type: ignore[arg-type]
                            access_log=log_level <= logging.INFO, server_header=False)
    server = uvicorn.Server(config)
    server.medistill_limits = limits  # type: ignore[attr-defined]
    return server


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free port."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(4096)  # (the kernel caps it at net.core.somaxconn)
    except OSError as e:
        raise MedistillError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.set_inheritable(True)
    return sock
