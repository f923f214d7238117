"""``medistill serve MODEL.onnx [--host 127.0.0.1] [--port 8000]``: a web page and JSON API to try a model.

Torch-free (ONNX Runtime); needs the ``serve`` extra (FastAPI, uvicorn, python-multipart).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import sys

from ..config import ConfigError, option
from .common import add_config_args, config_from_args

HELP = "serve an exported ONNX model as a web page and JSON API (upload an image, see findings and heatmaps)"


@dataclasses.dataclass
class ServeOptions:
    """The options of ``medistill serve`` (flags, or keys of its ``--config`` YAML)."""

    host: str = option("127.0.0.1", "address to bind (127.0.0.1: this machine only; there is no authentication)")
    port: int = option(8000, "port (0 picks a free one)")
    max_upload_mb: float = option(32.0, "largest request body accepted, MiB (larger: HTTP 413)")
    max_concurrency: int = option(2, "inferences run at once, sharing one ONNX Runtime session (others wait)")
    max_connections: int = option(1024, "connections open at once (within the open-file limit, ulimit -n); when "
                                        "full, the connection that has waited longest for its request is dropped "
                                        "(HTTP 503) for a new one; only when every connection has a request in "
                                        "flight is the new one refused (HTTP 503)")
    max_connections_per_client: int = option(16, "connections open at once from one client address; more get "
                                                 "HTTP 429. Clients behind one NAT (a clinic, a proxy) share an "
                                                 "address: raise it for them")
    header_timeout: float = option(10.0, "seconds for a request's headers to arrive after the connection opens "
                                         "(or after the previous answer); slower: HTTP 408 and the connection "
                                         "closed")
    read_timeout: float = option(60.0, "seconds for a request's upload to arrive whole; slower: HTTP 408 and the "
                                       "connection closed")
    min_upload_rate: float = option(1.0, "KiB per second an upload must arrive at, on average after its first 5 "
                                         "s; slower: HTTP 408 and the connection closed (0: no minimum)")
    allow_host: list[str] = option(factory=list, help="also answer requests for this Host name (repeatable; '*' for "
                                                      "any). By default only the bound address is answered (with "
                                                      "localhost for a loopback one): other names get HTTP 400, "
                                                      "which stops DNS rebinding")
    threads: int | None = option(None, "ONNX Runtime threads per inference; None = all cores")

    def validate(self) -> None:
        for name in ("max_concurrency", "max_connections", "max_connections_per_client"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}: got {getattr(self, name)}, expected at least 1")
        if not self.max_upload_mb > 0:
            raise ConfigError(f"--max-upload-mb: got {self.max_upload_mb}, expected a positive size")
        for name in ("read_timeout", "header_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{name.replace('_', '-')}: got {getattr(self, name)}, expected a positive "
                                  f"number of seconds")
        if not self.min_upload_rate >= 0:
            raise ConfigError(f"--min-upload-rate: got {self.min_upload_rate}, expected KiB per second (0: none)")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port: got {self.port}, expected 0 to 65535")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help=HELP, description=HELP + ". Routes: / (the page), POST /api/predict "
                       "(multipart field 'file'), GET /api/model, GET /healthz, GET /openapi.json. Stop with Ctrl+C.")
    p.add_argument("model", metavar="MODEL.onnx", help="a model written by `medistill export` (--explain for heatmaps)")
    add_config_args(p, ServeOptions, switches=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..serve import create_app, require
    from ..serve.guards import allowed_hosts_for

    o = config_from_args(ServeOptions, args)
    require("uvicorn")
    from ..serve.server import bind, build_server

    hosts = allowed_hosts_for(o.host, o.allow_host)
    app = create_app(args.model, max_upload_bytes=int(o.max_upload_mb * 2**20),
                     max_concurrency=o.max_concurrency, read_timeout=o.read_timeout,
                     min_upload_rate=o.min_upload_rate * 1024, allowed_hosts=hosts, threads=o.threads)
    try:
        loopback = ipaddress.ip_address(o.host).is_loopback
    except ValueError:
        loopback = o.host == "localhost"
    if not loopback:
        print(f"medistill serve: warning: listening on {o.host}, reachable from other machines; the server has "
              f"no authentication and no TLS", file=sys.stderr)
    sock = bind(o.host, o.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    server = build_server(app, max_connections=o.max_connections,
                          max_per_client=o.max_connections_per_client, read_timeout=o.read_timeout,
                          header_timeout=o.header_timeout, log_level=logging.getLogger().getEffectiveLevel())
    print(f"medistill serve: {args.model} on http://{shown}:{port}/ (Ctrl+C to stop; answers Host "
          f"{', '.join(hosts)})", file=sys.stderr, flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0
