"""The web application of ``medistill serve``: a page and a JSON API around one exported ONNX model.

Routes:

- ``GET /``: the page (``static/index.html``, ``app.js``, ``app.css``); it loads nothing from elsewhere, and the
  Content-Security-Policy sent with every response forbids it to.
- ``POST /api/predict``: multipart field ``file`` (PNG, JPEG or DICOM) -> probabilities, positives by the model's
  stored thresholds, latency, a PNG preview of the decoded image and, when the model was exported with
  ``--explain``, one Grad-CAM map per label (the graph's ``cams`` output, (h, w) in [0, 1]) and ``map_grid``, where
  its cells sit on the image (``ModelInfo.cam_grid``; even for a file without it), which the page draws it by.
- ``GET /api/model``: the model's metadata and the server's limits. ``GET /healthz``. ``GET /openapi.json``.
- ``GET /api/explanation``: the model's explanation fidelity (pointing game strict / tolerant, energy inside,
  Spearman to the teacher, per label) and a few overlays, from a ``medistill explain`` folder beside the model
  (:mod:`.fidelity`); ``{"available": false, "detail": ...}`` when there is none or it cannot be read (200: the
  page asks on every load, and a model without an explanation is normal, not an error).

Limits and safety (the modules beside this one):

- Host check (``guards``): only the Host names the server was bound to are answered (loopback: ``localhost``,
  ``127.0.0.1``, ``[::1]``), others get 400 ``host_not_allowed``: a page of another site cannot reach this one
  by DNS rebinding. ``--allow-host`` adds names.
- The request body is counted while it streams in (``upload``); past ``max_upload_bytes`` the answer is 413 (a
  declared Content-Length over the limit is refused before anything is read). A body that has not arrived whole
  within ``read_timeout`` seconds, or that arrives slower than ``min_upload_rate`` bytes per second (averaged, after
  a few seconds), gets 408 and the connection is closed; ``medistill serve`` also caps the connections per client
  and in all, drops the connection that has waited longest for its request when full, and closes a connection
  whose request headers are still incomplete after the header deadline (``server``).
- The body is parsed with python-multipart's ``FormParser`` rather than Starlette's ``request.form()``, which
  spools large parts into the system's temporary folder: here a part larger than ``SPOOL_BYTES`` goes to the
  application's own temporary folder (removed at shutdown) and its file is deleted when the request ends.
  Nothing else is written to disk by the application (ONNX Runtime's telemetry files are turned off: see
  :func:`medistill.inference.open_session`).
- The image type comes from the content (magic bytes), never from the file name or the part's Content-Type:
  anything but PNG, JPEG or DICOM is 415.
- Decompression bombs: the pixel count is read from the header and checked before decoding (``max_pixels``): 413.
  Images are reduced on load to what the model and the preview need (``data.images.decode_reduced``): a request's
  memory is its upload, its 8-bit image (width x height x bands bytes) and small float copies.
- A truncated or corrupt image, a missing or empty ``file`` field or a malformed multipart body: 422.
- At most ``max_concurrency`` decodes and inferences run at once, in worker threads sharing one ONNX Runtime
  session (``InferenceSession.run`` is thread-safe); other requests wait their turn (reported as ``queued`` ms).
- Every error is JSON ``{"error": code, "detail": message}`` with its HTTP status and the security headers.
- Client-supplied text (file names, paths, Host headers) is escaped before it is logged (``guards.printable``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import anyio
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..data import images as im
from ..inference import medistill_version
from .fidelity import EXPLAIN_FILE, find_explanation, load_explanation
from .guards import LOOPBACK_HOSTS, SECURITY_HEADERS, SecurityHeaders, ServeError, TrustedHosts, printable
from .model import (ACCEPTED, DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_BYTES,
                    DEFAULT_MIN_UPLOAD_RATE, DEFAULT_READ_TIMEOUT_S, ServedModel)
from .schemas import ERRORS, UPLOAD_BODY, Health, ModelResponse, PredictResponse
from .upload import FIELD, SPOOL_BYTES, Upload, read_upload

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"

__all__ = ["ACCEPTED", "DEFAULT_MAX_CONCURRENCY", "DEFAULT_MAX_PIXELS", "DEFAULT_MAX_UPLOAD_BYTES",
           "DEFAULT_READ_TIMEOUT_S", "FIELD", "SECURITY_HEADERS", "SPOOL_BYTES", "ServeError", "ServedModel", "Upload",
           "create_app", "read_upload"]


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def create_app(model_path: str | Path, *, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_concurrency: int = DEFAULT_MAX_CONCURRENCY, max_pixels: int = DEFAULT_MAX_PIXELS,
               read_timeout: float = DEFAULT_READ_TIMEOUT_S, min_upload_rate: float = DEFAULT_MIN_UPLOAD_RATE,
               allowed_hosts: Sequence[str] = LOOPBACK_HOSTS, threads: int | None = None) -> FastAPI:
    """The FastAPI application serving the exported model ``model_path`` (see the module docstring).

    The model is opened, validated and run once on zeros here: a bad file raises ModelFileError before any server
    starts. ``app.state.served`` is the :class:`ServedModel`; its temporary folder is removed at shutdown.
    ``allowed_hosts``: the Host names answered (:func:`medistill.serve.guards.allowed_hosts_for`; default the
    loopback names); ``read_timeout``: seconds for a request body to arrive whole (408 after);
    ``min_upload_rate``: bytes per second under which an upload is cut (408; 0: no minimum).
    """
    served = ServedModel(model_path, max_upload_bytes=max_upload_bytes, max_concurrency=max_concurrency,
                         max_pixels=max_pixels, read_timeout=read_timeout, min_upload_rate=min_upload_rate,
                         threads=threads)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        log.info("serving %s (%s, %d labels, maps: %s) from %s", served.path.name, served.metadata["model"],
                 len(served.predictor.labels), served.predictor.has_maps, served.spool_dir)
        try:
            yield
        finally:
            served.close()

    app = FastAPI(title="medistill serve", version=medistill_version(), lifespan=lifespan, docs_url=None,
                  redoc_url=None,  # the interactive docs load from a CDN; /openapi.json is served
                  description=f"Predictions and Grad-CAM maps of the exported model {served.path.name}.")
    app.state.served = served
    app.add_middleware(TrustedHosts, allowed=list(allowed_hosts))
    app.add_middleware(SecurityHeaders)  # added last: the outermost, so that every answer carries the headers

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError) -> JSONResponse:
        log.info("%s %s -> %d %s: %s", request.method, printable(request.url.path), exc.status, exc.code,
                 printable(exc.detail, 400))
        return _error(exc.status, exc.code, exc.detail, headers={"connection": "close"} if exc.close else None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, f"http_{exc.status_code}")
        return _error(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors())
        return _error(422, "invalid_request", detail)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        log.info("%s %s: the client disconnected during the upload", request.method, printable(request.url.path))
        return _error(400, "client_disconnected", "the client disconnected during the upload")

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        # Starlette's ServerErrorMiddleware re-raises after this answer: the server logs the traceback
        return _error(500, "internal_error", "the server failed on this request (see its log)")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", response_model=Health, summary="liveness: the model is loaded")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": served.path.name}

    @app.get("/api/model", response_model=ModelResponse, summary="the model's metadata and the server's limits")
    async def model() -> dict[str, Any]:
        return served.metadata

    @app.get("/api/explanation", summary="explanation fidelity of the model, from `medistill explain` beside it")
    async def explanation() -> dict[str, Any]:
        folder = find_explanation(served.path)
        if folder is None:
            return {"available": False, "detail": f"no {EXPLAIN_FILE} beside {served.path.name} or in ../explain/ "
                                                  f"(run `medistill explain RUN --split test --out DIR` there)"}
        try:
            return {"available": True, **await anyio.to_thread.run_sync(lambda: load_explanation(folder))}
        except (OSError, ValueError) as e:  # json.JSONDecodeError is a ValueError
            log.warning("unreadable explanation %s: %s", printable(str(folder)), printable(str(e)))
            return {"available": False, "detail": f"{folder.name}/{EXPLAIN_FILE} is not readable JSON"}

    @app.post("/api/predict", response_model=PredictResponse, responses=ERRORS, openapi_extra=UPLOAD_BODY,
              summary="predict one image (multipart field 'file': PNG, JPEG or DICOM)")
    async def predict(request: Request, preview: bool = Query(True, description="include a PNG preview of the "
                                                                                "decoded image")) -> dict[str, Any]:
        started = time.perf_counter()
        upload = await read_upload(request, served.max_upload_bytes, served.spool_dir,
                                   deadline=time.monotonic() + served.read_timeout, min_rate=served.min_upload_rate)
        try:
            if upload.size == 0:
                raise ServeError(422, "empty_file", f"the {FIELD!r} field is empty (0 bytes); expected a PNG, JPEG "
                                                    f"or DICOM image")
            kind = im.sniff_kind(upload.head())
            if kind not in ACCEPTED:
                what = f"{kind.upper()} content" if kind else "the content is not an image"
                raise ServeError(415, "not_an_image", f"{upload.name}: {what}; expected a PNG, JPEG or DICOM "
                                                      f"image (the type is read from the content, not the name)")
            queued_at = time.perf_counter()
            return await anyio.to_thread.run_sync(
                lambda: served.predict(upload, kind, preview=preview, started=started, queued_at=queued_at),
                limiter=served.limiter)
        finally:
            upload.close()

    return app
