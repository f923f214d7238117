"""``medistill serve MODEL.onnx [--host 127.0.0.1] [--port 8000]``: a web page and JSON API to try a model.

Torch-free (ONNX Runtime); needs the ``serve`` extra (FastAPI, uvicorn, python-multipart).
"""

from __future__ import annotations

import argparse
import sys

HELP = "serve an exported ONNX model as a web page and JSON API (upload an image, see findings and heatmaps)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help=HELP, description=HELP + ". Routes: / (the page), POST /api/predict "
                       "(multipart field 'file'), GET /api/model, GET /healthz, GET /openapi.json. Stop with Ctrl+C.")
    p.add_argument("model", metavar="MODEL.onnx", help="a model written by `medistill export` (--explain for heatmaps)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; there is no authentication)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--max-upload-mb", type=float, default=32.0, metavar="MB",
                   help="largest request body accepted, MiB (default 32; larger: HTTP 413)")
    p.add_argument("--max-concurrency", type=int, default=2, metavar="N",
                   help="inferences run at once, sharing one ONNX Runtime session (default 2; others wait)")
    p.add_argument("--max-connections", type=int, default=64, metavar="N",
                   help="connections open at once; more get HTTP 503 (default 64)")
    p.add_argument("--max-connections-per-client", type=int, default=16, metavar="N",
                   help="connections open at once from one client address; more get HTTP 429 (default 16)")
    p.add_argument("--read-timeout", type=float, default=60.0, metavar="S",
                   help="seconds for a request (headers and upload) to arrive whole; slower: HTTP 408 and the "
                        "connection closed (default 60)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests for this Host name (repeatable; '*' for any). By default only the "
                        "bound address is answered (with localhost for a loopback one): other names get HTTP 400, "
                        "which stops DNS rebinding")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads per inference (default: all cores)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import ipaddress
    import logging

    from ..errors import MedistillError
    from ..serve import create_app, require
    from ..serve.guards import allowed_hosts_for

    for name in ("max_concurrency", "max_connections", "max_connections_per_client"):
        if getattr(args, name) < 1:
            raise MedistillError(f"--{name.replace('_', '-')}: got {getattr(args, name)}, expected at least 1")
    if not args.max_upload_mb > 0:
        raise MedistillError(f"--max-upload-mb: got {args.max_upload_mb}, expected a positive size")
    if not args.read_timeout > 0:
        raise MedistillError(f"--read-timeout: got {args.read_timeout}, expected a positive number of seconds")
    if not 0 <= args.port <= 65535:
        raise MedistillError(f"--port: got {args.port}, expected 0 to 65535")
    require("uvicorn")
    from ..serve.server import bind, build_server

    hosts = allowed_hosts_for(args.host, args.allow_host)
    app = create_app(args.model, max_upload_bytes=int(args.max_upload_mb * 2**20),
                     max_concurrency=args.max_concurrency, read_timeout=args.read_timeout, allowed_hosts=hosts,
                     threads=args.threads)
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        print(f"medistill serve: warning: listening on {args.host}, reachable from other machines; the server has "
              f"no authentication and no TLS", file=sys.stderr)
    sock = bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    server = build_server(app, max_connections=args.max_connections,
                          max_per_client=args.max_connections_per_client, read_timeout=args.read_timeout,
                          log_level=logging.getLogger().getEffectiveLevel())
    print(f"medistill serve: {args.model} on http://{shown}:{port}/ (Ctrl+C to stop; answers Host "
          f"{', '.join(hosts)})", file=sys.stderr, flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0
