"""The HTTP server of ``medistill serve``: uvicorn with its h11 protocol guarded per connection.

uvicorn bounds connections in all (``limit_concurrency``) but not per client, answers over that bound in plain
text, and waits forever for a request whose headers trickle in. :class:`GuardedH11Protocol` adds, per connection:

- a cap on connections **per client address** (``max_per_client``: 429) and in all (``max_connections``: 503),
  answered after the request's headers with the JSON error body and security headers, then closed;
- a **read deadline**: a request whose headers are not complete ``read_timeout`` seconds after the connection
  opened (or after its previous answer) gets 408 and the connection is closed; once the application has the
  request it applies the same deadline to the body (``upload.read_upload``), and a body still trickling in after
  its answer is cut at the next deadline;
- the JSON error body for uvicorn's own 400 (a request that is not HTTP).

So slow clients cost one connection each for at most ``read_timeout`` seconds, and one address cannot hold more
than ``max_per_client`` connections: other clients keep being served.
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

DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_MAX_PER_CLIENT = 16  # a browser opens at most 6 per host; the load test keeps 16 in flight


class ConnectionLimits:
    """Open connections, in all and per client address, against their caps."""

    def __init__(self, max_connections: int, max_per_client: int, read_timeout: float):
        self.max_connections, self.max_per_client, self.read_timeout = max_connections, max_per_client, read_timeout
        self.total = 0
        self.per_client: dict[str, int] = {}

    def admit(self, client: str | None) -> tuple[int, str, str] | None:
        """Count a new connection; the (status, code, detail) of its refusal when it is over a cap."""
        self.total += 1
        n = 0
        if client is not None:
            n = self.per_client[client] = self.per_client.get(client, 0) + 1
        if n > self.max_per_client:
            return 429, "too_many_connections", (f"this client already has {self.max_per_client} connections open "
                                                 f"(the limit per client); retry when one has finished")
        if self.total > self.max_connections:
            return 503, "server_busy", (f"the server already has {self.max_connections} connections open; retry "
                                        f"in a moment")
        return None

    def release(self, client: str | None) -> None:
        self.total -= 1
        if client is not None:
            left = self.per_client.get(client, 1) - 1
            if left > 0:
                self.per_client[client] = left
            else:
                self.per_client.pop(client, None)


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
        """uvicorn's h11 protocol with the caps and the read deadline of the module docstring."""

        def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.limits = limits
            self._host: str | None = None
            self._counted = False
            self._deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._host = self.client[0] if self.client else None
            refusal = self.limits.admit(self._host)
            self._counted = True
            if refusal is not None:
                log.warning("refused a connection from %s: %s", self._host, refusal[1])
                self.app = _refusal_app(*refusal)  # answered once its headers are in, then closed
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._counted:
                self._counted = False
                self.limits.release(self._host)
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request on this connection gets its own deadline

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(self.limits.read_timeout, self._deadline_passed)

        def _deadline_passed(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                return  # the application has the request: it applies the deadline to the body (408)
            if self.cycle is None or self.conn.their_state is h11.IDLE:  # headers incomplete: answer 408
                log.info("closed a connection from %s: no complete request within %.0f s", self._host,
                         self.limits.read_timeout)
                self.transport.write(_raw_response(408, "request_timeout",
                                                   f"the request headers did not arrive within "
                                                   f"{self.limits.read_timeout:g} s"))
            self.transport.close()  # (or a body still trickling in after its answer)

        def send_400_response(self, msg: str) -> None:
            self.transport.write(_raw_response(400, "bad_request", printable(msg)))
            self.transport.close()

    return GuardedH11Protocol


def build_server(app: Any, *, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 max_per_client: int = DEFAULT_MAX_PER_CLIENT, read_timeout: float,
                 log_level: int = logging.WARNING) -> Any:
    """A ``uvicorn.Server`` for ``app`` with the guarded protocol; run it with ``server.run(sockets=[sock])``."""
    import uvicorn

    limits = ConnectionLimits(max_connections, max_per_client, read_timeout)
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
        sock.listen(512)
    except OSError as e:
        raise MedistillError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.set_inheritable(True)
    return sock
