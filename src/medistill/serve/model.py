"""The model served by ``medistill serve``: one ONNX Runtime session shared by worker threads, the limiter
bounding concurrent decodes and inferences, the temporary folder for spooled uploads, and the JSON answer of a
prediction."""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from ..cam_policy import Grid
from ..data import images as im
from ..errors import MedistillError
from ..inference import Predictor, medistill_version
from .guards import ServeError
from .schemas import PREVIEW_SIDE
from .upload import Upload

log = logging.getLogger("medistill.serve.app")

DEFAULT_MAX_UPLOAD_BYTES = 32 * 2**20
DEFAULT_MAX_CONCURRENCY = 2
#: decoded pixels accepted (5000 x 5000); chest X-rays are at most about 4300 x 4300
DEFAULT_MAX_PIXELS = 25_000_000
#: a request (headers and body) must have arrived whole within this many seconds: 32 MiB at about 4.5 Mbit/s
DEFAULT_READ_TIMEOUT_S = 60.0
#: an upload must arrive at least this fast (bytes per second, averaged from the start of its body, after
#: ``upload.MIN_RATE_GRACE_S`` seconds): a body trickling in is cut long before the read deadline
DEFAULT_MIN_UPLOAD_RATE = 1024.0
#: accepted image kinds (``medistill.data.images.sniff_kind`` names) -> their media type
ACCEPTED = {"png": "image/png", "jpeg": "image/jpeg", "dicom": "application/dicom"}


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
                 read_timeout: float = DEFAULT_READ_TIMEOUT_S, min_upload_rate: float = DEFAULT_MIN_UPLOAD_RATE,
                 threads: int | None = None):
        for name, value in (("max_upload_bytes", max_upload_bytes), ("max_concurrency", max_concurrency),
                            ("max_pixels", max_pixels)):
            if not isinstance(value, int) or value < 1:
                raise MedistillError(f"{name}: got {value!r}, expected a positive integer")
        if not read_timeout > 0:
            raise MedistillError(f"read_timeout: got {read_timeout!r}, expected a positive number of seconds")
        self.read_timeout = float(read_timeout)
        if not min_upload_rate >= 0:
            raise MedistillError(f"min_upload_rate: got {min_upload_rate!r}, expected bytes per second (0: none)")
        self.min_upload_rate = float(min_upload_rate)
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
        return {"name": self.path.name, "model": info.model, "task": info.task,
                "uses_thresholds": self.predictor.task.uses_thresholds, "labels": info.labels,
                "thresholds": {lab: info.thresholds.get(lab, 0.5) for lab in info.labels},
                "input": {"size": info.size, "channels": info.channels, "mean": info.mean, "std": info.std,
                          "intensity": info.intensity, "training_stats": info.input_stats},
                "maps": self.predictor.has_maps, "file_bytes": self.path.stat().st_size,
                "parameters": _parameters(self.path), "sha256": digest.hexdigest(), "version": info.version,
                "server_version": medistill_version(), "provenance": dict(info.extra),
                "limits": {"max_upload_bytes": self.max_upload_bytes, "max_pixels": self.max_pixels,
                           "max_concurrency": self.max_concurrency, "read_timeout_s": self.read_timeout,
                           "min_upload_rate": self.min_upload_rate, "accepted": sorted(ACCEPTED)}}

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
            # reduced on load: the memory of a request is the upload, its 8-bit image and small float copies
            image = im.decode_reduced(upload.read(), name=upload.name, max_pixels=self.max_pixels,
                                      min_side=p.decode_side, intensity=p.info.intensity)
            img = image.image
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
        maps = map_grid = None
        if cams is not None:
            maps = {lab: np.round(cams[0, k].astype(np.float64), 4).tolist() for k, lab in enumerate(p.labels)}
            # the page places the map by its cells' centres (inference.place_map); an old file's are even
            grid = p.info.cam_grid or Grid.even(cams.shape[-2:])
            map_grid = {"stride": list(grid.stride), "offset": list(grid.offset)}
        h, w = image.height, image.width
        out = {"file": upload.name, "model": p.info.model, "task": p.info.task,
               "probabilities": {lab: float(v) for lab, v in zip(p.labels, probs)}, "ranking": ranking,
               "positives": positives, "thresholds": thresholds, "latency_ms": round((ran - decoded) * 1e3, 3),
               "image": {"format": kind, "width": w, "height": h, "channels": 1 if img.ndim == 2 else 3,
                         "preview": _data_uri_png(img) if preview else None},
               "maps": maps, "map_grid": map_grid, "warnings": p.warnings_for(img)}
        for text in out["warnings"]:
            log.warning("%s: %s", upload.name, text)
        end = time.perf_counter()
        out["timings_ms"] = {"queued": round((begin - queued_at) * 1e3, 3), "decode": round((decoded - begin) * 1e3, 3),
                             "inference": out["latency_ms"], "total": round((end - started) * 1e3, 3)}
        log.info("%s (%s %dx%d): positives [%s], %.1f ms model, %.1f ms total", upload.name, kind, w, h,
                 ", ".join(positives), out["latency_ms"], out["timings_ms"]["total"])
        return out
