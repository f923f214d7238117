"""What every answer of ``medistill serve`` shares: the security headers, the JSON error body, the Host check
(DNS rebinding) and the escaping of client-supplied text before it reaches the log.

Every error, whether the application, the Host check or the connection guard of :mod:`medistill.serve.server`
answers it, is ``{"error": code, "detail": message}`` JSON with :data:`SECURITY_HEADERS`.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from typing import Any, Iterable

from ..errors import MedistillError
from ..utils.text import printable as _printable

log = logging.getLogger("medistill.serve")

#: sent with every response: nothing may be loaded from elsewhere; predictions are not cached
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                                 b"script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
                                 b"form-action 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
#: Host names of this machine's loopback interface: a page on them cannot be reached through DNS rebinding
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


class ServeError(MedistillError):
    """A request the server refuses: its HTTP ``status``, a short ``code`` and a message for the user."""

    def __init__(self, status: int, code: str, detail: str, *, close: bool = False):
        self.status, self.code, self.detail, self.close = status, code, detail, close
        super().__init__(detail)


def printable(text: str, limit: int = 200) -> str:
    """``text`` safe to log: control characters (NUL, ESC, CR/LF ...), bidirectional overrides and other
    unprintable code points escaped as ``\\xNN`` / ``\\uNNNN`` (backslashes doubled), cut at ``limit`` chars
    (:func:`medistill.utils.text.printable`)."""
    return _printable(text, limit)


def error_body(status: int, code: str, detail: str, *, close: bool = False) -> tuple[list[tuple[bytes, bytes]],
                                                                                       bytes]:
    """The headers and JSON body of an error answer (``close``: the connection is closed after it)."""
    body = json.dumps({"error": code, "detail": detail}).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode("ascii")),
               *SECURITY_HEADERS]
    if close:
        headers.append((b"connection", b"close"))
    return headers, body


async def send_error(send: Any, status: int, code: str, detail: str, *, close: bool = False) -> None:
    """Answer an ASGI HTTP request with :func:`error_body`."""
    headers, body = error_body(status, code, detail, close=close)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every HTTP response."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k, v) for k, v in SECURITY_HEADERS if k not in names]
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --- the Host check ------------------------------------------------------------------------------------------------
def host_name(value: str) -> str:
    """The host of a Host header or a bind address, lowercased, without port or trailing dot; IPv6 in brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value.split("]", 1)[0] + "]"
    if value.count(":") > 1:  # a bare IPv6 address (a bind address, never a Host header)
        return f"[{value}]"
    return value.rsplit(":", 1)[0].rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def allowed_hosts_for(bind_host: str, extra: Iterable[str] = ()) -> list[str]:
    """The Host names a server bound to ``bind_host`` answers: the bound name (with the loopback names when it is
    a loopback address; any IP address when it is a wildcard such as 0.0.0.0), plus ``extra`` (``--allow-host``;
    ``*`` allows any)."""
    name = host_name(bind_host)
    hosts = [name]
    try:
        ip = ipaddress.ip_address(name.strip("[]"))
        loopback, wildcard = ip.is_loopback, ip.is_unspecified
    except ValueError:
        loopback, wildcard = name == "localhost", False
    if loopback:
        hosts += LOOPBACK_HOSTS
    if wildcard:
        hosts = ["<ip>", "localhost"]  # any address of this machine, written as an IP (no DNS name to rebind)
    return list(dict.fromkeys(hosts + [host_name(h) if h != "*" else "*" for h in extra]))


class TrustedHosts:
    """ASGI middleware answering 400 ``host_not_allowed`` to a request whose Host header is not one of
    ``allowed`` (names from :func:`allowed_hosts_for`; ``<ip>`` stands for any IP address, ``*`` for any host).

    This is what stops DNS rebinding: a page of another site whose name was re-pointed at 127.0.0.1 sends its own
    name as Host. Starlette's ``TrustedHostMiddleware`` does the same check but answers in plain text, without the
    JSON error body every other answer has.
    """

    def __init__(self, app: Any, allowed: Iterable[str]):
        self.app = app
        self.allowed = {host_name(h) if h not in ("*", "<ip>") else h for h in allowed}

    def allows(self, host: str) -> bool:
        if "*" in self.allowed:
            return True
        name = host_name(host)
        return bool(name) and (name in self.allowed or ("<ip>" in self.allowed and _is_ip(name)))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), "")
        if self.allows(host):
            await self.app(scope, receive, send)
            return
        shown = printable(host, 100)
        log.info("refused a request for host %r from %s (allowed: %s)", shown,
                 (scope.get("client") or ("?",))[0], ", ".join(sorted(self.allowed)))
        if scope["type"] == "http":
            await send_error(send, 400, "host_not_allowed",
                             f"this server does not answer for the host {shown!r} (allowed: "
                             f"{', '.join(sorted(self.allowed))}); start it with --allow-host NAME to allow it",
                             close=True)
        else:
            await send({"type": "websocket.close", "code": 1008})
