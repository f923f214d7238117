"""The torch-free runtime: prediction with an exported ONNX model here (onnxruntime, numpy, Pillow, and pydicom
for DICOM), the one latency loop in :mod:`.timing`.

``medistill predict`` and ``medistill serve`` use this package; it must never import torch (a test runs
``medistill predict`` where importing torch fails). An exported model carries everything needed to use it in its
ONNX ``metadata_props`` (see :class:`ModelInfo`): label names, task, input size, channels, mean / std and
per-label thresholds, the intensity rule of training (``medistill.data.images``) and the training images' input
statistics, so a device needs the ``.onnx`` file and nothing else. Images are decoded and preprocessed by
``medistill.data.images``, exactly as in training. The metadata's fields and their checks, and the file's sealed
SHA-256, are in :mod:`.model_file` (re-exported here).

Graph contract (written by ``medistill.export.onnx``): input ``input`` (B, C, S, S) float32 normalised; output
``logits`` (B, L); optional output ``cams`` (B, L, h, w) in [0, 1] (Grad-CAM of every label, see
``medistill.export.cam_graph``) at the CAM layer's resolution, its cells placed on the input by
``ModelInfo.cam_grid`` (:func:`place_map`; drawn evenly over the image, an EfficientNet's or ResNet's map would
point about half a cell right of and below its evidence).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ..cam_policy import Grid, cell_weights
from ..data import images as im
from ..errors import MedistillError
from ..task import get_task, sigmoid, softmax  # noqa: F401 - sigmoid, softmax: importable from here as before
from ..utils.io import atomic_write
from .model_file import (CAMS, CHECKSUM_KEY, CHECKSUM_PLACEHOLDER, FORMAT, INPUT, LOGITS,  # noqa: F401 - importable
                         MAX_INPUT_SIZE, PREFIX, ModelFileError, ModelInfo, seal_model_file, verify_model_file)

log = logging.getLogger(__name__)

#: shorter side kept when an image is reduced on load (at least; see ``Predictor.decode_side``)
DECODE_MIN_SIDE = 512

#: an input's mean or contrast this many training standard deviations away is reported as unlike the training data
FAR_SIGMAS = 4.0
is_colour = im.is_colour  # importable from here too


def image_statistics(img: np.ndarray, size: int) -> dict[str, Any]:
    """What :func:`input_warnings` compares of one decoded image: ``{colour, mean, std}``, the mean and standard
    deviation of its grayscale version at ``size`` x ``size`` (in [0, 1], before the model's normalisation)."""
    gray = im.to_channels(im.resize(img, size), 1)[0]
    return {"colour": is_colour(img), "mean": float(gray.mean()), "std": float(gray.std())}


def input_statistics(stats: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The training images' input statistics from :func:`image_statistics` of each: ``{images, colour_share,
    mean: {mean, std, min, max}, std: {...}}`` (stored at export as ``medistill.input_stats``)."""
    if not stats:
        raise ValueError("input_statistics: no images")

    def spread(key: str) -> dict[str, float]:
        v = np.asarray([s[key] for s in stats], dtype=np.float64)
        return {"mean": round(float(v.mean()), 5), "std": round(float(v.std()), 5), "min": round(float(v.min()), 5),
                "max": round(float(v.max()), 5)}

    return {"images": len(stats), "colour_share": round(float(np.mean([bool(s["colour"]) for s in stats])), 4),
            "mean": spread("mean"), "std": spread("std")}


def input_warnings(stat: dict[str, Any], training: dict[str, Any] | None) -> list[str]:
    """Sentences saying how an input (:func:`image_statistics`) is unlike the training images (``training``, from
    :func:`input_statistics`): colour against grayscale training images or the reverse, or a mean intensity or
    contrast more than :data:`FAR_SIGMAS` standard deviations from the training images'. [] when alike or unknown."""
    if not training:
        return []
    out = []
    share = float(training.get("colour_share", 0.0))
    if stat["colour"] and share < 0.05:
        out.append(f"this is a colour image, but the model was trained on grayscale images (colour in "
                   f"{share:.0%} of {training.get('images')} checked): its answer may be meaningless")
    elif not stat["colour"] and share > 0.95:
        out.append(f"this is a grayscale image, but the model was trained on colour images ({share:.0%} colour): "
                   f"its answer may be meaningless")
    for key, what in (("mean", "mean intensity"), ("std", "contrast (intensity standard deviation)")):
        t = training.get(key) or {}
        if "mean" not in t:
            continue
        scale = max(float(t.get("std", 0.0)), 0.02)  # a floor: a very uniform training set is not a narrow gate
        z = (stat[key] - float(t["mean"])) / scale
        if abs(z) > FAR_SIGMAS:
            out.append(f"the image's {what} {stat[key]:.2f} is far from the training images' "
                       f"({float(t['mean']):.2f} \u00b1 {float(t.get('std', 0.0)):.2f}, {abs(z):.0f} standard "
                       f"deviations): it may not be the kind of image the model was trained on")
    return out


def medistill_version() -> str:
    try:
        return importlib.metadata.version("medistill")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        return "unknown"


def _ort() -> Any:
    # ONNX Runtime's telemetry writes a device id and a database under ~/.cache/Microsoft/DeveloperTools when it is
    # imported; ORT_DISABLE_TELEMETRY=1 (read at import) stops it. A value set by the user is kept.
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    try:
        import onnxruntime
    except ImportError:  # pragma: no cover - onnxruntime is a core dependency
        raise ModelFileError("prediction needs onnxruntime (pip install onnxruntime)") from None
    return onnxruntime


def open_session(path: str | Path, *, threads: int | None = None, providers: Sequence[str] | None = None,
                 optimized_model_path: str | Path | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` of ``path``; ModelFileError when it is missing or not ONNX.

    ``optimized_model_path``: also write the graph ONNX Runtime optimised for this CPU there (what it runs)."""
    ort = _ort()
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path}: empty file (0 bytes), expected an ONNX model")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if optimized_model_path is not None:
        opts.optimized_model_filepath = str(optimized_model_path)
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as e:  # noqa: BLE001 - onnxruntime raises InvalidProtobuf, Fail, InvalidGraph ...
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ModelFileError(f"{path}: not a loadable ONNX model ({first})") from None


@dataclasses.dataclass
class Prediction:
    """The result for one input file; ``error`` is set (and the rest empty) when the file could not be used."""

    file: str
    probabilities: dict[str, float] = dataclasses.field(default_factory=dict)
    positives: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None
    maps: np.ndarray | None = None  # (L, h, w) in [0, 1] when asked for and the model has them
    map_grid: Grid | None = None  # where the maps' cells sit on the image (ModelInfo.cam_grid; None: evenly)
    image: np.ndarray | None = None  # the decoded image (H, W) or (H, W, 3) in [0, 1], kept for overlays
    warnings: list[str] = dataclasses.field(default_factory=list)  # how the input is unlike the training images

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"file": self.file, "error": self.error}
        out: dict[str, Any] = {"file": self.file, "probabilities": self.probabilities, "positives": self.positives}
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out


class Predictor:
    """An exported medistill model, ready to predict files or arrays.

    ``Predictor(path)`` opens the ONNX file and validates it: loadable ONNX, medistill metadata present, input
    ``(batch, channels, size, size)`` and ``logits`` of one score per label as the metadata says.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None, providers: Sequence[str] | None = None):
        self.path = Path(path)
        sealed = self.path.is_file() and verify_model_file(self.path)  # before ONNX Runtime parses a damaged file
        self.session = open_session(self.path, threads=threads, providers=providers)
        try:
            props = dict(self.session.get_modelmeta().custom_metadata_map or {})
        except UnicodeDecodeError as e:
            raise ModelFileError(f"{self.path}: damaged model file (its metadata is not UTF-8 text: byte "
                                 f"{e.object[e.start:e.start + 1]!r})") from None
        if not sealed and CHECKSUM_KEY in props:
            raise ModelFileError(f"{self.path}: damaged model file ({CHECKSUM_KEY} cannot be found in its bytes)")
        self.info = ModelInfo.from_props(props, where=str(self.path))
        self._validate_graph()

    def _validate_graph(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        where, info = str(self.path), self.info
        if INPUT not in inputs or len(inputs) != 1:
            raise ModelFileError(f"{where}: expected one input named {INPUT!r}, found {sorted(inputs)}")
        shape = list(inputs[INPUT].shape)
        expected = [None, info.channels, info.size, info.size]
        if len(shape) != 4:
            raise ModelFileError(f"{where}: input {INPUT!r} has shape {shape}, expected (batch, {info.channels}, "
                                 f"{info.size}, {info.size})")
        for axis, (got, want) in enumerate(zip(shape[1:], expected[1:]), start=1):
            if isinstance(got, int) and got != want:
                what = "channels" if axis == 1 else "size"
                raise ModelFileError(f"{where}: the graph's input has {got} {what} on axis {axis} but its metadata "
                                     f"says {want}; shape {shape}, expected (batch, {info.channels}, {info.size}, "
                                     f"{info.size})")
        if LOGITS not in outputs:
            raise ModelFileError(f"{where}: no {LOGITS!r} output (outputs: {sorted(outputs)})")
        n = outputs[LOGITS].shape[-1] if outputs[LOGITS].shape else None
        if isinstance(n, int) and n != len(info.labels):
            raise ModelFileError(f"{where}: {LOGITS!r} has {n} scores but the metadata names {len(info.labels)} labels")
        self.has_maps = CAMS in outputs
        if info.maps and not self.has_maps:
            raise ModelFileError(f"{where}: metadata says the model has maps but the graph has no {CAMS!r} output")

    # --- arrays --------------------------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        return self.info.labels

    def preprocess(self, img: np.ndarray) -> np.ndarray:
        """A decoded image (H, W) / (H, W, 3) in [0, 1] -> the model input (C, S, S), as in training."""
        i = self.info
        return im.preprocess(img, i.size, i.channels, i.mean, i.std)

    def run(self, x: np.ndarray, *, maps: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Model inputs (B, C, S, S) -> logits (B, L) and, when ``maps`` and the model has them, (B, L, h, w)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        i = self.info
        if x.ndim != 4 or x.shape[1:] != (i.channels, i.size, i.size):
            raise ModelFileError(f"{self.path}: input of shape {x.shape}, expected (B, {i.channels}, {i.size}, {i.size})")
        names = [LOGITS, CAMS] if maps and self.has_maps else [LOGITS]
        out = self.session.run(names, {INPUT: x})
        return out[0], out[1] if len(out) > 1 else None

    @property
    def task(self) -> Any:
        """The model's :class:`medistill.task.Task`."""
        return get_task(self.info.task)

    @property
    def decode_side(self) -> int:
        """Images are reduced on load to a shorter side of at least this many pixels (``images.decode_reduced``):
        three times the model's input side (the resize to it then matches the full-size one within about one grey
        level), and at least :data:`DECODE_MIN_SIDE` for previews and overlays."""
        return max(3 * self.info.size, DECODE_MIN_SIDE)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """(B, L) logits -> probabilities: one sigmoid per label (multi-label) or a softmax (multi-class)."""
        return self.task.probabilities(logits)

    def positives(self, probs: np.ndarray) -> list[str]:
        """Labels called positive for one image's (L,) probabilities: by the stored thresholds (multi-label),
        the most probable label (multi-class)."""
        return self.task.positives(probs, self.labels, self.info.thresholds)

    def warnings_for(self, img: np.ndarray) -> list[str]:
        """How a decoded image is unlike the training images (:func:`input_warnings`; [] when the model file holds
        no training statistics)."""
        if not self.info.input_stats:
            return []
        return input_warnings(image_statistics(img, self.info.size), self.info.input_stats)

    # --- files --------------------------------------------------------------------------------------
    def predict(self, files: Iterable[str | Path], *, maps: bool = False, batch_size: int = 8,
                keep_images: bool = False) -> Iterator[Prediction]:
        """One :class:`Prediction` per file, in order. A file that cannot be read or used gives a Prediction with
        ``error`` set and the others still run. Images go through the model ``batch_size`` at a time."""
        pending: list[tuple[Prediction, np.ndarray]] = []
        for f in files:
            pred = Prediction(file=str(f))
            try:
                img = im.read_image(f, min_side=self.decode_side, intensity=self.info.intensity)
                x = self.preprocess(img)
            except MedistillError as e:
                pred.error = getattr(e, "reason", None) or str(e)
                log.debug("%s: %s", f, pred.error)
                yield from self._flush(pending, maps)
                pending = []
                yield pred
                continue
            except Exception as e:  # noqa: BLE001 - one bad file never stops the batch; the reason is reported
                pred.error = f"cannot be used ({type(e).__name__}: {e})"
                log.debug("unexpected error on %s", f, exc_info=True)
                yield from self._flush(pending, maps)
                pending = []
                yield pred
                continue
            pred.warnings = self.warnings_for(img)
            if keep_images:
                pred.image = _thumbnail(img)
            pending.append((pred, x))
            if len(pending) >= batch_size:
                yield from self._flush(pending, maps)
                pending = []
        yield from self._flush(pending, maps)

    def _flush(self, pending: list[tuple[Prediction, np.ndarray]], maps: bool) -> Iterator[Prediction]:
        if not pending:
            return
        logits, cams = self.run(np.stack([x for _, x in pending]), maps=maps)
        probs = self.probabilities(logits)
        for k, (pred, _) in enumerate(pending):
            pred.probabilities = {lab: float(p) for lab, p in zip(self.labels, probs[k])}
            pred.positives = self.positives(probs[k])
            if cams is not None:
                pred.maps = cams[k]
                pred.map_grid = self.info.cam_grid
            yield pred


def _thumbnail(img: np.ndarray, max_side: int = 1024) -> np.ndarray:
    h, w = img.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return img
    return im.resize(img, (max(1, round(h * scale)), max(1, round(w * scale))))


def place_map(cam: np.ndarray, size: tuple[int, int], grid: Grid | None = None) -> np.ndarray:
    """A (h, w) map laid over an image of ``size`` (H, W): float32 (H, W), cell ``(i, j)``'s value on the point
    ``grid`` centres it on (fractions of the side, ``ModelInfo.cam_grid``), bilinear between cell centres and the
    edge cell's value beyond them. Without a grid, or with the even one, this is the plain bilinear resize
    (``data.images.resize``) that overlays always used, so those maps come out unchanged. The torch-free twin of
    :func:`medistill.maps.base.place_maps` (``explain``'s, in pixels), as two small per-axis weight matrices: written
    here because the runtime has neither torch nor a resize that takes cell centres (the weights:
    :func:`medistill.cam_policy.cell_weights`)."""
    cam = np.asarray(cam, np.float32)
    h, w = cam.shape
    if grid is None or grid.tiles_evenly((h, w)):
        return im.resize(cam, size)
    centres = [(np.arange(n) + 0.5) / n for n in size]  # the pixels' centres, fractions of the side
    wy = cell_weights(centres[0], h, grid.stride[0], grid.offset[0])  # (H, h)
    wx = cell_weights(centres[1], w, grid.stride[1], grid.offset[1])  # (W, w)
    return (wy @ cam.astype(np.float64) @ wx.T).astype(np.float32)  # (H, W)


def overlay(img: np.ndarray, cam: np.ndarray, *, alpha: float = 0.4, colormap: str = "jet",
            grid: Grid | None = None) -> np.ndarray:
    """A heatmap over an image: (H, W) or (H, W, 3) in [0, 1] and a (h, w) map in [0, 1] whose cells sit on
    ``grid`` (None: evenly; see :func:`place_map`) -> uint8 (H, W, 3)."""
    import matplotlib

    h, w = img.shape[:2]
    rgb = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
    heat = np.clip(place_map(cam, (h, w), grid), 0, 1)
    colour = matplotlib.colormaps[colormap](heat)[..., :3].astype(np.float32)  # (H, W, 3)
    return im.to_uint8((1 - alpha) * rgb + alpha * colour)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "x"


def save_overlays(pred: Prediction, labels: Sequence[str], out: str | Path, *, index: int | None = None,
                  which: str = "positive") -> list[Path]:
    """Write ``<stem>.<label>.png`` overlays of ``pred``'s maps into ``out``; ``which`` = positive (the positive
    labels, or the most probable one when none is) or all. Returns the written paths."""
    from PIL import Image

    if pred.maps is None or pred.image is None:
        return []
    if which == "all":
        chosen = list(labels)
    else:
        chosen = list(pred.positives) or [max(pred.probabilities, key=pred.probabilities.get)]
    stem = _safe(Path(pred.file).stem)
    if index is not None:
        stem = f"{index:04d}-{stem}"
    written = []
    for lab in chosen:
        k = list(labels).index(lab)
        rgb = overlay(pred.image, pred.maps[k], grid=pred.map_grid)
        path = Path(out) / f"{stem}.{_safe(lab)}.png"
        written.append(atomic_write(path, lambda p, a=rgb: Image.fromarray(a).save(p, format="PNG")))
    return written
