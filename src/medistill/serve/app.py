"""The web application of ``medistill serve``: a page and a JSON API around one exported ONNX model.

Routes:

- ``GET /``: the page (``static/index.html``, ``app.js``, ``app.css``); it loads nothing from elsewhere, and the
  Content-Security-Policy sent with every response forbids it to.
- ``POST /api/predict``: multipart field ``file`` (PNG, JPEG or DICOM) -> probabilities, positives by the model's
  stored thresholds, latency, a PNG preview of the decoded image and, when the model was exported with
  ``--explain``, one Grad-CAM map per label (the graph's ``cams`` output, (h, w) in [0, 1]).
- ``GET /api/model``: the model's metadata and the server's limits. ``GET /healthz``. ``GET /openapi.json``.

Limits and safety:

- The request body is counted while it streams in; past ``max_upload_bytes`` the answer is 413 (a declared
  Content-Length over the limit is refused before anything is read).
- The body is parsed with python-multipart's ``FormParser`` rather than Starlette's ``request.form()``, which
  spools large parts into the system's temporary folder: here a part larger than ``SPOOL_BYTES`` goes to the
  application's own temporary folder (removed at shutdown) and its file is deleted when the request ends.
  Nothing else is written to disk.
- The image type comes from the content (magic bytes), never from the file name or the part's Content-Type:
  anything but PNG, JPEG or DICOM is 415.
- Decompression bombs: the pixel count is read from the header and checked before decoding (``max_pixels``): 413.
- A truncated or corrupt image, a missing or empty ``file`` field or a malformed multipart body: 422.
- At most ``max_concurrency`` decodes and inferences run at once, in worker threads sharing one ONNX Runtime
  session (``InferenceSession.run`` is thread-safe); other requests wait their turn (reported as ``queued`` ms).
- Every error is JSON ``{"error": code, "detail": message}`` with its HTTP status.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..data import images as im
from ..errors import MedistillError
from ..inference import Predictor, medistill_version

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
FIELD = "file"  # the multipart field holding the image
DEFAULT_MAX_UPLOAD_BYTES = 32 * 2**20
DEFAULT_MAX_CONCURRENCY = 2
#: decoded pixels accepted (5000 x 5000); chest X-rays are at most about 4300 x 4300
DEFAULT_MAX_PIXELS = 25_000_000
#: an uploaded part larger than this is spooled to the application's temporary folder instead of memory
SPOOL_BYTES = 2**20
PREVIEW_SIDE = 512  # longest side of the preview PNG returned with a prediction
#: accepted image kinds (``medistill.data.images.sniff_kind`` names) -> their media type
ACCEPTED = {"png": "image/png", "jpeg": "image/jpeg", "dicom": "application/dicom"}
#: sent with every response: nothing may be loaded from elsewhere; predictions are not cached
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                                 b"script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
                                 b"form-action 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


class ServeError(MedistillError):
    """A request the server refuses: its HTTP ``status``, a short ``code`` and a message for the user."""

    def __init__(self, status: int, code: str, detail: str):
        self.status, self.code, self.detail = status, code, detail
        super().__init__(detail)


# --- response schemas (they document /openapi.json) ------------------------------------------------------------
class ErrorBody(BaseModel):
    error: str = Field(description="short code: upload_too_large, not_an_image, image_too_large, ...")
    detail: str = Field(description="what was wrong, and what was expected")


class LabelScore(BaseModel):
    label: str
    probability: float
    threshold: float = Field(description="the model's stored threshold for this label")
    positive: bool


class ImageInfo(BaseModel):
    format: str = Field(description="png, jpeg or dicom, as read from the content")
    width: int
    height: int
    channels: int = Field(description="1 (grayscale) or 3 (colour), as decoded")
    preview: str | None = Field(None, description=f"data:image/png;base64 URI of the decoded image, longest side "
                                                  f"at most {PREVIEW_SIDE} px (DICOM after windowing)")


class Timings(BaseModel):
    queued: float = Field(description="waiting for an inference slot")
    decode: float = Field(description="decoding and preprocessing the image")
    inference: float = Field(description="the ONNX Runtime run (logits and maps)")
    total: float = Field(description="from the request's start to the response, upload included")


class PredictResponse(BaseModel):
    file: str = Field(description="the uploaded file's name (base name)")
    model: str
    task: str = Field(description="multilabel (one sigmoid per label) or multiclass (softmax)")
    probabilities: dict[str, float] = Field(description="label -> probability, in the model's label order")
    ranking: list[LabelScore] = Field(description="every label, most probable first")
    positives: list[str] = Field(description="labels at or above their threshold (multiclass: the top label)")
    thresholds: dict[str, float]
    latency_ms: float = Field(description="model latency: the ONNX Runtime run, milliseconds")
    timings_ms: Timings
    image: ImageInfo
    maps: dict[str, list[list[float]]] | None = Field(
        None, description="label -> Grad-CAM map (h, w) in [0, 1] from the explain graph; null when the model has "
                          "none (export with --explain)")


class InputSpec(BaseModel):
    size: int
    channels: int
    mean: list[float]
    std: list[float]


class Limits(BaseModel):
    max_upload_bytes: int
    max_pixels: int
    max_concurrency: int
    accepted: list[str]


class ModelResponse(BaseModel):
    name: str = Field(description="the model file's name")
    model: str = Field(description="architecture")
    task: str
    labels: list[str]
    thresholds: dict[str, float]
    input: InputSpec
    maps: bool = Field(description="the graph outputs Grad-CAM maps")
    file_bytes: int
    parameters: int | None = Field(None, description="weights in the graph (None when onnx is not installed)")
    sha256: str
    version: str = Field(description="medistill version that exported the model")
    server_version: str
    provenance: dict[str, str] = Field(description="other medistill.* metadata (run, data, ...)")
    limits: Limits


class Health(BaseModel):
    status: str
    model: str


ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorBody, "description": "upload larger than max_upload_bytes, or image over max_pixels"},
    415: {"model": ErrorBody, "description": "not a multipart upload, or the file is not PNG, JPEG or DICOM"},
    422: {"model": ErrorBody, "description": "no or empty file field, malformed body, or an undecodable image"},
}
_FILE_SCHEMA = {"type": "string", "format": "binary",
                "description": "a PNG (8/16-bit), JPEG or DICOM image; the type is read from the content"}
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {
    "schema": {"type": "object", "required": [FIELD], "properties": {FIELD: _FILE_SCHEMA}}}}}}


# --- the upload -------------------------------------------------------------------------------------------------
class Upload:
    """The image part of a request: its base name and bytes, in memory or in a file of the temporary folder."""

    def __init__(self, part: Any):
        self.part = part  # python_multipart File (has file_object) or Field (has value)
        raw = getattr(part, "file_name", None) or b"upload"
        name = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        self.name = Path(name.replace("\\", "/")).name[:200] or "upload"

    def head(self, n: int = 132) -> bytes:
        if hasattr(self.part, "file_object"):
            f = self.part.file_object
            f.seek(0)
            return f.read(n)
        return bytes(self.part.value or b"")[:n]

    def read(self) -> bytes:
        if hasattr(self.part, "file_object"):
            f = self.part.file_object
            f.seek(0)
            return f.read()
        return bytes(self.part.value or b"")

    @property
    def size(self) -> int:
        return int(self.part.size) if hasattr(self.part, "file_object") else len(self.part.value or b"")

    def close(self) -> None:
        if hasattr(self.part, "close"):
            self.part.close()  # a spooled part's temporary file is deleted on close


def _too_large(size: int | str, limit: int) -> ServeError:
    return ServeError(413, "upload_too_large", f"the upload is {size} bytes, more than the limit of {limit} bytes "
                                               f"({limit / 2**20:.1f} MiB)")


async def read_upload(request: Request, limit: int, spool_dir: Path) -> Upload:
    """The ``file`` part of a multipart request, the body counted against ``limit`` bytes as it streams in."""
    from python_multipart import create_form_parser
    from python_multipart.exceptions import FormParserError

    content_type = request.headers.get("content-type", "")
    mime = content_type.split(";")[0].strip().lower()
    if mime != "multipart/form-data":
        raise ServeError(415, "not_multipart", f"expected a multipart/form-data upload with the image in the field "
                                               f"{FIELD!r}, got Content-Type {mime or 'none'!r}")
    declared = request.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(declared, limit)
    parts: list[Any] = []  # every part is kept until the end so that each one is closed (temp files deleted)

    def on_part(part: Any) -> None:
        parts.append(part)

    config = {"UPLOAD_DIR": str(spool_dir), "MAX_MEMORY_FILE_SIZE": SPOOL_BYTES, "UPLOAD_DELETE_TMP": True,
              "UPLOAD_KEEP_FILENAME": False, "UPLOAD_KEEP_EXTENSIONS": False}
    try:
        parser = create_form_parser({"Content-Type": content_type}, on_part, on_part, config=config)
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise _too_large(f"more than {limit}", limit)
            if chunk:
                parser.write(chunk)
        parser.finalize()
        images = [p for p in parts if p.field_name == FIELD.encode()]
        if not images:
            names = sorted({(p.field_name or b"").decode("utf-8", "replace") for p in parts})
            raise ServeError(422, "missing_file", f"no {FIELD!r} field in the upload (fields: "
                                                  f"{', '.join(names) or 'none'}); send the image as {FIELD}=@IMAGE")
        if len(images) > 1:
            raise ServeError(422, "several_files", f"{len(images)} {FIELD!r} fields; send one image per request")
    except ServeError:
        for p in parts:
            _close(p)
        raise
    except (FormParserError, ValueError) as e:  # python-multipart: malformed body or boundary
        for p in parts:
            _close(p)
        raise ServeError(422, "malformed_upload", f"the multipart body cannot be parsed ({e})") from None
    except BaseException:  # ClientDisconnect, cancellation: no part left open
        for p in parts:
            _close(p)
        raise
    for p in parts:
        if p is not images[0]:
            _close(p)
    return Upload(images[0])


def _close(part: Any) -> None:
    with contextlib.suppress(Exception):
        part.close()


# --- the served model -------------------------------------------------------------------------------------------
def _data_uri_png(img: np.ndarray, max_side: int = PREVIEW_SIDE) -> str:
    """A decoded image (H, W) / (H, W, 3) in [0, 1] -> a PNG data URI, longest side at most ``max_side``."""
    from PIL import Image

    h, w = img.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1:
        img = im.resize(img, (max(1, round(h * scale)), max(1, round(w * scale))))
    buf = io.BytesIO()
    Image.fromarray(im.to_uint8(img)).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _parameters(path: Path) -> int | None:
    """Number of weights in the graph's initializers (None when onnx is not installed or cannot read it)."""
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - an optional figure; the model itself loaded in ONNX Runtime
        log.debug("cannot count the parameters of %s", path, exc_info=True)
        return None
    return int(sum(int(np.prod(t.dims)) for t in model.graph.initializer))


class ServedModel:
    """One exported model and what serving it needs: the shared ONNX Runtime session, the limiter bounding
    concurrent inferences, and the temporary folder for spooled uploads."""

    def __init__(self, model_path: str | Path, *, max_upload_bytes: int, max_concurrency: int, max_pixels: int,
                 threads: int | None = None):
        for name, value in (("max_upload_bytes", max_upload_bytes), ("max_concurrency", max_concurrency),
                            ("max_pixels", max_pixels)):
            if not isinstance(value, int) or value < 1:
                raise MedistillError(f"{name}: got {value!r}, expected a positive integer")
        self.path = Path(model_path)
        self.predictor = Predictor(self.path, threads=threads)
        self.max_upload_bytes = max_upload_bytes
        self.max_concurrency = max_concurrency
        self.max_pixels = max_pixels
        self.limiter = anyio.CapacityLimiter(max_concurrency)  # a semaphore for the worker threads
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.metadata = self._metadata()
        self._warm_up()

    @property
    def spool_dir(self) -> Path:
        """The application's temporary folder (created on first use, removed by :meth:`close`)."""
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="medistill-serve-")
            log.debug("temporary folder %s", self._tmp.name)
        return Path(self._tmp.name)

    @property
    def spool_dir_if_open(self) -> Path | None:
        return Path(self._tmp.name) if self._tmp is not None else None

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _metadata(self) -> dict[str, Any]:
        info = self.predictor.info
        digest = hashlib.sha256()
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(2**20), b""):
                digest.update(block)
        return {"name": self.path.name, "model": info.model, "task": info.task, "labels": info.labels,
                "thresholds": {lab: info.thresholds.get(lab, 0.5) for lab in info.labels},
                "input": {"size": info.size, "channels": info.channels, "mean": info.mean, "std": info.std},
                "maps": self.predictor.has_maps, "file_bytes": self.path.stat().st_size,
                "parameters": _parameters(self.path), "sha256": digest.hexdigest(), "version": info.version,
                "server_version": medistill_version(), "provenance": dict(info.extra),
                "limits": {"max_upload_bytes": self.max_upload_bytes, "max_pixels": self.max_pixels,
                           "max_concurrency": self.max_concurrency, "accepted": sorted(ACCEPTED)}}

    def _warm_up(self) -> None:
        """One run on zeros, and a small PNG and JPEG decoded: the first request does not pay ONNX Runtime's lazy
        initialisation nor Pillow's plugin imports."""
        from PIL import Image

        i = self.predictor.info
        start = time.perf_counter()
        self.predictor.run(np.zeros((1, i.channels, i.size, i.size), np.float32), maps=self.predictor.has_maps)
        for fmt in ("PNG", "JPEG"):
            buf = io.BytesIO()
            Image.new("L", (8, 8)).save(buf, format=fmt)
            im.decode_image(buf.getvalue(), name=f"warm-up.{fmt.lower()}")
        log.info("%s warmed up in %.1f ms", self.path.name, (time.perf_counter() - start) * 1e3)

    def predict(self, upload: Upload, kind: str, *, preview: bool, started: float, queued_at: float) -> dict[str, Any]:
        """Decode, preprocess and run one upload (in a worker thread, under ``limiter``); the JSON answer."""
        begin = time.perf_counter()
        p = self.predictor
        try:
            img = im.decode_image(upload.read(), name=upload.name, max_pixels=self.max_pixels)
            x = p.preprocess(img)[None]  # (1, C, S, S)
        except im.ImageTooLargeError as e:
            raise ServeError(413, "image_too_large", e.reason) from None
        except im.ImageReadError as e:
            raise ServeError(422, "undecodable_image", e.reason) from None
        except Exception as e:  # noqa: BLE001 - an odd image (empty, strange shape) is the upload's fault, not a 500
            log.warning("%s: decoded but unusable", upload.name, exc_info=True)
            raise ServeError(422, "unusable_image", f"the image cannot be used ({type(e).__name__}: {e})") from None
        if img.size == 0:
            raise ServeError(422, "unusable_image", f"the image has no pixels (shape {img.shape})")
        decoded = time.perf_counter()
        logits, cams = p.run(x, maps=p.has_maps)  # (1, L), (1, L, h, w) or None
        ran = time.perf_counter()
        probs = p.probabilities(logits)[0]  # (L,)
        positives = p.positives(probs)
        thresholds = self.metadata["thresholds"]
        order = np.argsort(-probs, kind="stable")  # most probable first
        ranking = [{"label": p.labels[k], "probability": float(probs[k]), "threshold": thresholds[p.labels[k]],
                    "positive": p.labels[k] in positives} for k in order]
        maps = None
        if cams is not None:
            maps = {lab: np.round(cams[0, k].astype(np.float64), 4).tolist() for k, lab in enumerate(p.labels)}
        h, w = img.shape[:2]
        out = {"file": upload.name, "model": p.info.model, "task": p.info.task,
               "probabilities": {lab: float(v) for lab, v in zip(p.labels, probs)}, "ranking": ranking,
               "positives": positives, "thresholds": thresholds, "latency_ms": round((ran - decoded) * 1e3, 3),
               "image": {"format": kind, "width": w, "height": h, "channels": 1 if img.ndim == 2 else 3,
                         "preview": _data_uri_png(img) if preview else None},
               "maps": maps}
        end = time.perf_counter()
        out["timings_ms"] = {"queued": round((begin - queued_at) * 1e3, 3), "decode": round((decoded - begin) * 1e3, 3),
                             "inference": out["latency_ms"], "total": round((end - started) * 1e3, 3)}
        log.info("%s (%s %dx%d): positives [%s], %.1f ms model, %.1f ms total", upload.name, kind, w, h,
                 ", ".join(positives), out["latency_ms"], out["timings_ms"]["total"])
        return out


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


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def create_app(model_path: str | Path, *, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_concurrency: int = DEFAULT_MAX_CONCURRENCY, max_pixels: int = DEFAULT_MAX_PIXELS,
               threads: int | None = None) -> FastAPI:
    """The FastAPI application serving the exported model ``model_path`` (see the module docstring).

    The model is opened, validated and run once on zeros here: a bad file raises ModelFileError before any server
    starts. ``app.state.served`` is the :class:`ServedModel`; its temporary folder is removed at shutdown.
    """
    served = ServedModel(model_path, max_upload_bytes=max_upload_bytes, max_concurrency=max_concurrency,
                         max_pixels=max_pixels, threads=threads)

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
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError) -> JSONResponse:
        log.info("%s %s -> %d %s: %s", request.method, request.url.path, exc.status, exc.code, exc.detail)
        return _error(exc.status, exc.code, exc.detail)

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
        log.info("%s %s: the client disconnected during the upload", request.method, request.url.path)
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

    @app.post("/api/predict", response_model=PredictResponse, responses=ERRORS, openapi_extra=UPLOAD_BODY,
              summary="predict one image (multipart field 'file': PNG, JPEG or DICOM)")
    async def predict(request: Request, preview: bool = Query(True, description="include a PNG preview of the "
                                                                                "decoded image")) -> dict[str, Any]:
        started = time.perf_counter()
        upload = await read_upload(request, served.max_upload_bytes, served.spool_dir)
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
