"""An exported model file's own record: the medistill metadata an ONNX file carries (:class:`ModelInfo`, every
field validated, one :class:`ModelFileError` naming the field), and the SHA-256 sealed into it at export
(:func:`seal_model_file`, :func:`verify_model_file`). Torch-free; :mod:`medistill.inference` re-exports every name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any

from ..cam_policy import Grid
from ..data import images as im
from ..errors import MedistillError
from ..task import TASKS

INPUT = "input"
LOGITS = "logits"
CAMS = "cams"
#: metadata_props keys are ``medistill.<field>``; ``medistill.format`` marks a medistill export
PREFIX = "medistill."
FORMAT = 1


class ModelFileError(MedistillError):
    """A model file is not ONNX, lacks medistill metadata or does not fit it; the message says which."""


@dataclasses.dataclass
class ModelInfo:
    """What an exported model says about itself (its ``metadata_props``, ``medistill.*`` keys)."""

    labels: list[str]  # label names, in logit order
    task: str  # "multilabel" (one sigmoid per label) or "multiclass" (softmax)
    size: int  # side of the square input, pixels
    channels: int  # input channels (1 or 3)
    mean: list[float]  # per-channel normalisation mean (inputs in [0, 1])
    std: list[float]  # per-channel normalisation std
    thresholds: dict[str, float]  # label -> probability threshold for "positive" (chosen on validation)
    model: str  # architecture name (eeea_net_c2, ...)
    version: str  # medistill version that exported it
    maps: bool = False  # the graph has a ``cams`` output
    extra: dict[str, str] = dataclasses.field(default_factory=dict)  # other medistill.* keys (provenance)
    #: how pixel values became [0, 1] in training (``images.INTENSITY_RULES``); a model file without the key
    #: predates the rule and is read as ``images.LEGACY_INTENSITY_RULE`` (DICOMs without a window by their min-max)
    intensity: str = im.INTENSITY_RULE
    #: the training images' input statistics (``input_statistics``): None when the export did not store them
    input_stats: dict[str, Any] | None = None
    #: where the ``cams`` output's cells sit on the input, as fractions of its side (:meth:`Grid.on_image`): an
    #: EfficientNet / ResNet cell ``i`` is centred on pixel ``stride * i``, not where an even resize puts it. None
    #: (files exported before it, or a layer the trace could not place): the cells tile the input evenly
    cam_grid: Grid | None = None

    def to_props(self) -> dict[str, str]:
        """``metadata_props`` entries (strings; lists and mappings as JSON)."""
        props = {"format": str(FORMAT), "labels": json.dumps(self.labels), "task": self.task,
                 "input_size": str(self.size), "input_channels": str(self.channels), "mean": json.dumps(self.mean),
                 "std": json.dumps(self.std), "thresholds": json.dumps(self.thresholds), "model": self.model,
                 "version": self.version, "maps": "1" if self.maps else "0", "intensity": self.intensity,
                 **({"input_stats": json.dumps(self.input_stats)} if self.input_stats else {}),
                 **({"cam_grid": json.dumps({"stride": list(self.cam_grid.stride),
                                             "offset": list(self.cam_grid.offset)})} if self.cam_grid else {}),
                 **self.extra}
        return {PREFIX + k: v for k, v in props.items()}

    @classmethod
    def from_props(cls, props: dict[str, str], where: str = "model") -> "ModelInfo":
        """Parse and validate ``metadata_props``: every field's type, range, finiteness and count against the labels
        and channels; ModelFileError, one line naming ``where``, the key and what was expected, when one is missing
        or bad (a tampered NaN threshold, a zero std, a huge input size ...)."""
        own = {k[len(PREFIX):]: v for k, v in props.items() if k.startswith(PREFIX)}
        if "format" not in own:
            raise ModelFileError(f"{where}: an ONNX model without medistill metadata (no {PREFIX}format key in "
                                 f"metadata_props); export it with `medistill export RUN_DIR --format onnx`")

        def bad(key: str, problem: str) -> ModelFileError:
            return ModelFileError(f"{where}: {PREFIX}{key}: {problem}")

        def get(key: str) -> str:
            if key not in own:
                raise ModelFileError(f"{where}: medistill metadata lacks {PREFIX}{key}")
            return own[key]

        def as_json(key: str, kind: type) -> Any:
            try:
                value = json.loads(get(key))
            except json.JSONDecodeError:
                raise ModelFileError(f"{where}: {PREFIX}{key} is not valid JSON: {own[key][:80]!r}") from None
            if not isinstance(value, kind):
                raise ModelFileError(f"{where}: {PREFIX}{key} should be a JSON {kind.__name__}, got {value!r:.80}")
            return value

        def as_int(key: str, low: int, high: int) -> int:
            text = get(key).strip()
            if not (text.isdigit() and low <= int(text) <= high):
                raise bad(key, f"expected an integer from {low} to {high}, got {own[key][:40]!r}")
            return int(text)

        if own["format"].strip() != str(FORMAT):
            raise bad("format", f"format {own['format'].strip()[:20]}, this medistill reads format {FORMAT} "
                                f"(exported by a newer medistill? update medistill)")
        labels = as_json("labels", list)
        for lab in labels:
            if not isinstance(lab, str):
                raise bad("labels", f"expected a list of label names (strings), got {lab!r:.40}")
            if not lab.strip():
                raise bad("labels", "an empty label name")
        if not labels:
            raise ModelFileError(f"{where}: {PREFIX}labels is empty")
        twice = sorted({lab for lab in labels if labels.count(lab) > 1})
        if twice:
            raise bad("labels", f"{', '.join(twice)} is named twice")
        task = get("task")
        if task not in TASKS:
            raise ModelFileError(f"{where}: {PREFIX}task is {task!r:.40}, expected one of {list(TASKS)}")
        size = as_int("input_size", 1, MAX_INPUT_SIZE)
        channels = as_int("input_channels", 0, 10**6)
        if channels not in (1, 3):
            raise ModelFileError(f"{where}: {PREFIX}input_channels is {channels}, expected 1 or 3")
        mean = _numbers(as_json("mean", list), channels, positive=False, error=lambda m: bad("mean", m))
        std = _numbers(as_json("std", list), channels, positive=True, error=lambda m: bad("std", m))
        thresholds = as_json("thresholds", dict)
        missing = [lab for lab in labels if lab not in thresholds]
        if missing:
            raise bad("thresholds", f"no threshold for {', '.join(missing)}")
        unknown = [str(k) for k in thresholds if k not in labels]
        if unknown:
            raise bad("thresholds", f"a threshold for {', '.join(unknown)}, which is not a label")
        for lab, v in thresholds.items():
            if not (_is_number(v) and 0.0 <= v <= 1.0):
                raise bad("thresholds", f"{lab}: expected a number in [0, 1], got {v!r:.40}")
        maps = own.get("maps", "0")
        if maps not in ("0", "1"):
            raise bad("maps", f"expected 0 or 1, got {maps[:20]!r}")
        intensity = own.get("intensity", im.LEGACY_INTENSITY_RULE)
        if intensity not in im.INTENSITY_RULES:
            raise ModelFileError(f"{where}: {PREFIX}intensity is {intensity!r:.60}, expected one of "
                                 f"{list(im.INTENSITY_RULES)} (exported by a newer medistill?)")
        input_stats = None
        if "input_stats" in own:
            input_stats = as_json("input_stats", dict)
            if not _valid_input_stats(input_stats):
                raise bad("input_stats", f"expected the training images' input statistics ({{images, colour_share "
                                         f"in [0, 1], mean: {{mean, std, min, max}}, std: {{...}}}} of finite "
                                         f"numbers), got {own['input_stats'][:80]!r}")
        cam_grid = None
        if "cam_grid" in own:
            cam_grid = _grid(as_json("cam_grid", dict), error=lambda m: bad("cam_grid", m))
        known = {"format", "labels", "task", "input_size", "input_channels", "mean", "std", "thresholds", "model",
                 "version", "maps", "intensity", "input_stats", "cam_grid", "sha256"}
        return cls(labels=labels, task=task, size=size, channels=channels, mean=mean, std=std,
                   thresholds={k: float(v) for k, v in thresholds.items()}, model=own.get("model", "unknown"),
                   version=own.get("version", "unknown"), maps=maps == "1",
                   extra={k: v for k, v in own.items() if k not in known}, intensity=intensity,
                   input_stats=input_stats, cam_grid=cam_grid)


#: the largest input side a model's metadata may declare (pixels)
MAX_INPUT_SIZE = 4096


def _is_number(v: Any) -> bool:
    """A finite JSON number (not a bool, not NaN or an infinity)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _numbers(values: list[Any], channels: int, *, positive: bool, error: Any) -> list[float]:
    """``values`` as floats: one finite number (positive when ``positive``) per input channel."""
    if len(values) != channels:
        raise error(f"{len(values)} values for {channels} input channels")
    for v in values:
        if not _is_number(v) or (positive and v <= 0):
            raise error(f"expected {'positive ' if positive else ''}finite numbers, got {v!r:.40}")
    return [float(v) for v in values]


def _grid(value: dict[str, Any], *, error: Any) -> Grid:
    """``{"stride": [y, x], "offset": [y, x]}`` in fractions of the input's side as a :class:`Grid`: strides in
    (0, 1] (at least one cell per side), offsets in [-1, 1] (cell 0's centre within one side of the image)."""
    if sorted(value) != ["offset", "stride"]:
        raise error(f"expected {{stride: [y, x], offset: [y, x]}}, got the keys {sorted(value)!r:.60}")
    out = {}
    for key, low, high, closed in (("stride", 0.0, 1.0, False), ("offset", -1.0, 1.0, True)):
        v = value[key]
        if not (isinstance(v, list) and len(v) == 2):
            raise error(f"{key}: expected two numbers [y, x], got {v!r:.40}")
        for x in v:
            if not (_is_number(x) and (low <= x if closed else low < x) and x <= high):
                raise error(f"{key}: expected finite numbers in {'[' if closed else '('}{low:g}, {high:g}], "
                            f"got {x!r:.40}")
        out[key] = (float(v[0]), float(v[1]))
    return Grid(out["stride"], out["offset"])


def _valid_input_stats(stats: dict[str, Any]) -> bool:
    """``input_statistics``'s shape: ``images`` >= 1, ``colour_share`` in [0, 1], ``mean`` / ``std`` mappings of
    finite numbers (all optional but these types)."""
    if "images" in stats and not (_is_number(stats["images"]) and stats["images"] >= 1):
        return False
    if "colour_share" in stats and not (_is_number(stats["colour_share"]) and 0 <= stats["colour_share"] <= 1):
        return False
    for key in ("mean", "std"):
        part = stats.get(key, {})
        if not isinstance(part, dict) or not all(_is_number(part[k]) for k in ("mean", "std", "min", "max")
                                                 if k in part):
            return False
    return True


# --- the file's checksum ---------------------------------------------------------------------------------------
#: the metadata entry holding the file's SHA-256, as protobuf serialises it: key (field 1, 16 bytes), then value
#: (field 2, 64 hexadecimal characters)
CHECKSUM_KEY = PREFIX + "sha256"
_CHECKSUM_MARK = b"\x0a\x10" + CHECKSUM_KEY.encode("ascii") + b"\x12\x40"
CHECKSUM_PLACEHOLDER = "0" * 64


def _checksum_at(data: bytes) -> int | None:
    """Where the 64 characters of the checksum entry's value start in ``data`` (None: no entry)."""
    at = data.find(_CHECKSUM_MARK)
    return None if at < 0 else at + len(_CHECKSUM_MARK)


def _digest(data: bytes, at: int) -> str:
    """SHA-256 of the file's bytes with the checksum's own 64 characters read as zeros."""
    return hashlib.sha256(data[:at] + CHECKSUM_PLACEHOLDER.encode("ascii") + data[at + 64:]).hexdigest()


def seal_model_file(path: str | Path) -> Path:
    """Write the SHA-256 of the model file ``path`` into its ``medistill.sha256`` entry (the exporter adds the
    entry, holding :data:`CHECKSUM_PLACEHOLDER` or an older value; it keeps its length, so the file stays valid
    ONNX). A file without the entry is left as it is."""
    path = Path(path)
    data = path.read_bytes()
    at = _checksum_at(data)
    if at is not None:
        with open(path, "r+b") as f:
            f.seek(at)
            f.write(_digest(data, at).encode("ascii"))
    return path


def verify_model_file(path: str | Path) -> bool:
    """Check the model file ``path`` against the SHA-256 stored in it: True when it matches, False when the file
    holds none (exported before checksums); ModelFileError when it differs (the file was changed or damaged after
    export). It finds corruption, not a forger who recomputes it: the file is not signed."""
    path = Path(path)
    data = path.read_bytes()
    at = _checksum_at(data)
    if at is None:
        return False
    if data.find(_CHECKSUM_MARK, at) >= 0:
        raise ModelFileError(f"{path}: damaged model file ({CHECKSUM_KEY} appears twice)")
    stored = data[at:at + 64].decode("ascii", "replace")
    if _digest(data, at) != stored:
        raise ModelFileError(f"{path}: the file does not match the SHA-256 stored in it ({CHECKSUM_KEY}): it was "
                             f"changed or damaged after export; export the run again or copy the file again")
    return True
