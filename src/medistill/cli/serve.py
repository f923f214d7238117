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
                   help="connections and requests handled at once; more get HTTP 503 (default 64)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads per inference (default: all cores)")
    p.set_defaults(func=run)


def _bind(host: str, port: int):  # -> socket.socket
    """A listening TCP socket on (host, port); port 0 picks a free port (the actual one is printed)."""
    import socket

    from ..errors import MedistillError

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        raise MedistillError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.set_inheritable(True)
    return sock


def run(args: argparse.Namespace) -> int:
    import ipaddress
    import logging

    from ..errors import MedistillError
    from ..serve import create_app, require

    for name in ("max_concurrency", "max_connections"):
        if getattr(args, name) < 1:
            raise MedistillError(f"--{name.replace('_', '-')}: got {getattr(args, name)}, expected at least 1")
    if not args.max_upload_mb > 0:
        raise MedistillError(f"--max-upload-mb: got {args.max_upload_mb}, expected a positive size")
    if not 0 <= args.port <= 65535:
        raise MedistillError(f"--port: got {args.port}, expected 0 to 65535")
    uvicorn = require("uvicorn")
    app = create_app(args.model, max_upload_bytes=int(args.max_upload_mb * 2**20),
                     max_concurrency=args.max_concurrency, threads=args.threads)
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        print(f"medistill serve: warning: listening on {args.host}, reachable from other machines; the server has "
              f"no authentication and no TLS", file=sys.stderr)
    sock = _bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    level = logging.getLogger().getEffectiveLevel()
    config = uvicorn.Config(app, log_config=None, log_level=level, access_log=level <= logging.INFO,
                            limit_concurrency=args.max_connections, server_header=False)
    print(f"medistill serve: {args.model} on http://{shown}:{port}/ (Ctrl+C to stop)", file=sys.stderr, flush=True)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0
