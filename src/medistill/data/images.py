"""Reading medical images, with numpy, Pillow and pydicom only; the one module to import for images.

This module never imports torch: training, ``medistill predict`` and ``medistill serve`` share it, so the
device path preprocesses exactly like training did. Turning a decoded image into a model input (``resize``,
``to_channels``, ``normalize``, ``preprocess``) lives in :mod:`medistill.data.preprocess` and finding image
files (``list_images``) in :mod:`medistill.data.files`; both are importable from here too.

``read_image`` returns a float32 array in [0, 1], shaped (H, W) for grayscale or (H, W, 3) for colour, from
8- or 16-bit PNG, JPEG, BMP/TIFF and DICOM (rescale slope/intercept, VOI window, MONOCHROME1 inverted).
Every failure is an ``ImageReadError`` naming the file and what was expected.

The intensity rule (:data:`INTENSITY_RULE`, stored with every trained run and exported model): a pixel becomes
``(value - lo) / (hi - lo)``, clipped to [0, 1], where ``[lo, hi]`` is

- the file's VOI window (``WindowCenter`` / ``WindowWidth``, after ``RescaleSlope`` / ``RescaleIntercept``) when a
  grayscale DICOM has one;
- else the range its bit depth allows: ``[0, 2^BitsStored - 1]`` (signed: ``[-2^(b-1), 2^(b-1) - 1]``) for DICOM
  (through the rescale), ``[0, 255]`` for 8-bit and ``[0, 65535]`` for 16-bit PNG / JPEG / TIFF.

So the same pixels give the same input whatever the format: an 8-bit image written as a DICOM with
``BitsStored`` 8 is divided by 255, exactly like the PNG; no image is stretched to its own minimum and maximum.
(Float images and signed 32-bit TIFFs, which have no bit-depth range, keep their own min-max.) Models exported
before this rule existed decoded DICOMs without a window by their min-max (:data:`LEGACY_INTENSITY_RULE`); a
model that says so in its metadata is still fed that way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import logging
import re
import threading
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from ..errors import MedistillError
from .files import DICOM_SUFFIXES, IMAGE_SUFFIXES, list_images
from .preprocess import fit_channels, normalize, preprocess, resize, to_channels, to_uint8

__all__ = ["COLOUR_TOLERANCE", "DICOM_SUFFIXES", "IMAGE_SUFFIXES", "INTENSITY_RULE", "INTENSITY_RULES",
           "LEGACY_INTENSITY_RULE", "MAX_PIXELS", "Decoded", "ImageReadError", "ImageTooLargeError",
           "NonFiniteImageError", "decode_image", "decode_reduced", "fit_channels", "image_size", "is_colour",
           "list_images", "normalize", "pil_to_array", "preprocess", "read_image", "reduce_factor", "resize",
           "sniff_kind", "to_channels", "to_uint8"]

#: Largest image accepted, in pixels (a 20000x20000 image is refused before decoding). 16384^2 would be 1 GiB
#: of float32; chest X-rays are at most about 4300x4300.
MAX_PIXELS = 64_000_000
#: the intensity rule of this module (see the module docstring); stored in run records and ONNX metadata
INTENSITY_RULE = "voi-window-else-bit-depth"
#: the rule before it: a DICOM without a VOI window stretched to its own min-max (models exported before)
LEGACY_INTENSITY_RULE = "voi-window-else-minmax"
INTENSITY_RULES = (INTENSITY_RULE, LEGACY_INTENSITY_RULE)


class ImageReadError(MedistillError):
    """An image could not be read; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ImageTooLargeError(ImageReadError):
    """An image refused for its pixel count (``max_pixels``, or a decompression bomb) before it was decoded."""


def _is_dicom_bytes(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def sniff_kind(data: bytes) -> str | None:
    """'png', 'jpeg', 'dicom', 'bmp', 'tiff' from the file's first bytes (content, not extension), else None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if _is_dicom_bytes(data):
        return "dicom"
    if data.startswith(b"BM"):
        return "bmp"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    return None


def read_image(path: str | Path, *, max_pixels: int = MAX_PIXELS, min_side: int | None = None,
               intensity: str = INTENSITY_RULE) -> np.ndarray:
    """Read an image file as float32 in [0, 1]: (H, W) grayscale or (H, W, 3) colour; with ``min_side``, reduced
    on load (see :func:`decode_reduced`); ``intensity`` is the rule (see the module docstring)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a folder, expected an image file") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ImageReadError(path, "is a symlink loop (too many levels of symbolic links), expected an image "
                                       "file") from None
        raise ImageReadError(path, f"cannot be read ({e.strerror or e})") from None
    return decode_reduced(data, name=str(path), max_pixels=max_pixels, min_side=min_side, intensity=intensity).image


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of an image or DICOM file, read from its header without decoding the pixels."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except OSError as e:
        raise ImageReadError(path, f"cannot be read ({e.strerror or e})") from None
    if _is_dicom_bytes(head) or (sniff_kind(head) is None and path.suffix.lower() in DICOM_SUFFIXES):
        try:
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            return int(ds.Rows), int(ds.Columns)
        except Exception as e:  # noqa: BLE001 - pydicom raises many types for bad headers
            raise ImageReadError(path, f"DICOM header without a readable Rows/Columns ({e})") from None
    try:
        with Image.open(path) as img:
            return img.size[1], img.size[0]
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(path, f"cannot be read as an image ({e})") from None


@dataclasses.dataclass
class Decoded:
    """A decoded image and the size of the file's image (the array may be smaller: reduced on load)."""

    image: np.ndarray  # (h, w) or (h, w, 3) float32 in [0, 1]
    width: int  # of the image in the file
    height: int


def decode_image(data: bytes, *, name: str = "<bytes>", max_pixels: int = MAX_PIXELS,
                 min_side: int | None = None, intensity: str = INTENSITY_RULE) -> np.ndarray:
    """Decode image bytes (see ``read_image``); the format is taken from the content, not the name."""
    return decode_reduced(data, name=name, max_pixels=max_pixels, min_side=min_side, intensity=intensity).image


def reduce_factor(width: int, height: int, min_side: int | None) -> int:
    """The largest integer factor that keeps the shorter side of a ``width`` x ``height`` image at or above
    ``min_side`` (1: no reduction)."""
    if not min_side or min_side < 1:
        return 1
    return max(1, min(width, height) // int(min_side))


def decode_reduced(data: bytes, *, name: str = "<bytes>", max_pixels: int = MAX_PIXELS,
                   min_side: int | None = None, intensity: str = INTENSITY_RULE) -> Decoded:
    """Decode image bytes, reduced on load by the largest integer factor that keeps the shorter side at or above
    ``min_side`` (None: full size, exactly as ``read_image``).

    The reduction happens before any float conversion: JPEG is decoded at a smaller scale (``Image.draft``, DCT
    scaling), other formats are box-averaged by ``Image.reduce`` on their 8 / 16-bit pixels, so the memory of a
    decode is the file's 8-bit image (width x height x bands bytes) and a float copy of the reduced image only. A
    model input then resized from it (``min_side`` = 3 x the model's side or more) differs from one resized from
    the full image by about one grey level (1/255) at most. DICOM is windowed at full size, then reduced.
    ``intensity`` names the intensity rule (:data:`INTENSITY_RULES`; see the module docstring).
    """
    if intensity not in INTENSITY_RULES:
        raise ValueError(f"intensity rule {intensity!r}: expected one of {list(INTENSITY_RULES)}")
    if len(data) == 0:
        raise ImageReadError(name, "empty file (0 bytes), expected a PNG, JPEG or DICOM image")
    kind = sniff_kind(data)
    if kind == "dicom" or (kind is None and name.lower().endswith(DICOM_SUFFIXES)):
        return _decode_dicom(data, name, max_pixels, min_side, intensity)
    if kind is None:
        raise ImageReadError(name, "not an image: expected PNG, JPEG, BMP, TIFF or DICOM content")
    return _decode_pil(data, name, max_pixels, min_side)


#: modes Image.reduce averages as they are; others are converted first (as pil_to_array would convert them)
_REDUCIBLE = {"L": "L", "LA": "LA", "RGB": "RGB", "RGBA": "RGBA", "I": "I", "F": "F", "1": "L", "P": "RGBA",
              "PA": "RGBA", "I;16": "I", "I;16B": "I", "I;16L": "I", "I;16N": "I"}


def _decode_pil(data: bytes, name: str, max_pixels: int, min_side: int | None = None) -> Decoded:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageTooLargeError(name, f"image is {w}x{h} = {w * h} pixels, more than the limit of "
                                               f"{max_pixels} (a decompression bomb or not a medical image)")
            if reduce_factor(w, h, min_side) == 1:
                img.load()
                return Decoded(pil_to_array(img), w, h)
            if img.format == "JPEG":
                img.draft(None, (int(min_side), int(min_side)))  # DCT scaling: 1/2, 1/4 or 1/8, still >= min_side
            img.load()
            source_mode = img.mode
            img = img.convert(_REDUCIBLE.get(img.mode, "RGB")) if _REDUCIBLE.get(img.mode) != img.mode else img
            k = reduce_factor(img.size[0], img.size[1], min_side)
            if k > 1:
                img = img.reduce(k)  # box average; RGBA/LA with premultiplied alpha
            if source_mode.startswith("I;16"):  # 16-bit data keeps its full-depth scale (as pil_to_array)
                return Decoded(np.asarray(img, dtype=np.float32) / 65535.0, w, h)
            return Decoded(pil_to_array(img), w, h)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLargeError(name, f"refused as a decompression bomb ({e})") from None
    except NonFiniteImageError as e:
        raise ImageReadError(name, str(e)) from None
    except Exception as e:  # noqa: BLE001 - Pillow's decoders raise OSError, SyntaxError, ValueError, struct.error ...
        raise ImageReadError(name, f"cannot be decoded, the file is truncated or corrupt ({_reason(e)})") from None


def _reason(e: BaseException) -> str:
    """An exception's message without the memory address of the in-memory file Pillow was given."""
    text = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(e)) or type(e).__name__
    return " ".join(text.split())


class NonFiniteImageError(ValueError):
    """Float pixel values with NaN or infinity (raised by ``pil_to_array``)."""


def pil_to_array(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> float32 [0, 1], (H, W) or (H, W, 3). Alpha is composited onto black, palettes expanded."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float32)
        if mode == "I":  # 32-bit PNGs are 16-bit data in practice; scale by the actual range
            lo = float(arr.min()) if arr.size else 0.0
            hi = float(arr.max()) if arr.size else 1.0
            if lo < 0:  # signed data (CT in Hounsfield units as a 32-bit TIFF): min-max, as for float images
                return (arr - lo) / (hi - lo)
            return np.clip(arr / (65535.0 if hi > 255 else 255.0), 0, 1)
        return arr / 65535.0
    if mode == "F":
        arr = np.asarray(img).astype(np.float32)
        if not np.isfinite(arr).all():
            raise NonFiniteImageError(f"float pixel values include NaN or infinity "
                                      f"({int((~np.isfinite(arr)).sum())} pixels); expected finite intensities")
        lo, hi = float(arr.min()), float(arr.max())
        return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if mode in ("1", "L"):
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    if mode == "LA" or mode == "RGBA" or mode == "P" or mode == "PA":
        rgba = img.convert("RGBA")
        arr = np.asarray(rgba, dtype=np.float32) / 255.0
        rgb = arr[..., :3] * arr[..., 3:4]
        if mode in ("LA",) or _is_gray(rgb):
            return rgb[..., 0].copy()
        return rgb
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return arr


#: a colour image: its channels differ by more than this on average (in [0, 1] units, about 2 grey levels)
COLOUR_TOLERANCE = 2 / 255


def is_colour(img: np.ndarray) -> bool:
    """Whether a decoded image (H, W) / (H, W, 3) in [0, 1] is colour: three channels that differ by more than
    :data:`COLOUR_TOLERANCE` on average (a grayscale picture stored as RGB, or JPEG noise, is not colour)."""
    if img.ndim != 3 or img.shape[2] < 3:
        return False
    rgb = img[..., :3]
    return float(np.abs(rgb - rgb.mean(axis=2, keepdims=True)).mean()) > COLOUR_TOLERANCE


def _is_gray(rgb: np.ndarray) -> bool:
    return bool(np.allclose(rgb[..., 0], rgb[..., 1]) and np.allclose(rgb[..., 0], rgb[..., 2]))


_quiet_lock = threading.Lock()
_quiet = {"count": 0, "level": logging.NOTSET}


@contextlib.contextmanager
def _pydicom_quiet() -> Iterator[None]:
    """Silence pydicom's own log for the block: when a pixel decoder fails it logs an ERROR with a traceback, beside
    the ImageReadError medistill raises with the same reason (one line is what predict and serve show). The
    ``pydicom`` logger's level is raised while any thread decodes (serve decodes in several at once) and restored
    when the last one ends."""
    logger = logging.getLogger("pydicom")
    with _quiet_lock:
        if _quiet["count"] == 0:
            _quiet["level"] = logger.level
            logger.setLevel(logging.CRITICAL + 1)
        _quiet["count"] += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet["count"] -= 1
            if _quiet["count"] == 0:
                logger.setLevel(_quiet["level"])


def _decode_dicom(data: bytes, name: str, max_pixels: int, min_side: int | None = None,
                  intensity: str = INTENSITY_RULE) -> Decoded:
    try:
        import pydicom  # noqa: F401 - its absence is said here, once
    except ImportError:  # pragma: no cover - pydicom is a core dependency
        raise ImageReadError(name, "DICOM support needs pydicom (pip install pydicom)") from None
    with _pydicom_quiet():
        return _decode_dicom_quietly(data, name, max_pixels, min_side, intensity)


def _decode_dicom_quietly(data: bytes, name: str, max_pixels: int, min_side: int | None,
                          intensity: str) -> Decoded:
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        has_pixels = "PixelData" in ds
    except Exception as e:  # noqa: BLE001 - pydicom raises InvalidDicomError, EOFError, struct.error ... on bad headers
        raise ImageReadError(name, f"not a readable DICOM file ({_reason(e)})") from None
    if not has_pixels:
        if not _is_dicom_bytes(data):
            raise ImageReadError(name, "not DICOM content (no 'DICM' marker and no pixel data); expected a DICOM "
                                       "image")
        raise ImageReadError(name, "DICOM file has no pixel data (PixelData element missing)")
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        bits = int(ds.get("BitsStored", 0) or ds.get("BitsAllocated", 0) or 0)
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    except Exception as e:  # noqa: BLE001 - a non-numeric value in a numeric element, or an unparsable element
        raise ImageReadError(name, f"DICOM header has an invalid Rows, Columns, RescaleSlope or RescaleIntercept "
                                   f"({_reason(e)}); expected numbers") from None
    if rows * cols > max_pixels:
        raise ImageTooLargeError(name, f"DICOM image is {cols}x{rows}, more than the limit of {max_pixels} pixels")
    frames = _frames(ds)  # pydicom decodes every frame before the first is taken: count them all
    if frames > 1 and rows * cols * frames > max_pixels:
        raise ImageTooLargeError(name, f"DICOM image has {frames} frames of {cols}x{rows}, more than the limit of "
                                       f"{max_pixels} pixels in all")
    try:
        center, window = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    except Exception:  # noqa: BLE001 - an unparsable VOI window is ignored: the image's own range is used
        center = window = None
    try:
        arr = ds.pixel_array.astype(np.float32)
    except Exception as e:  # noqa: BLE001 - pydicom raises many types for missing decoders / bad data
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        ts_name = getattr(ts, "name", ts)
        raise ImageReadError(name, f"DICOM pixel data cannot be decoded (transfer syntax {ts_name}): "
                                   f"{_reason(e)}") from None
    # multi-frame (F, H, W) or (F, H, W, 3): take the first frame. pydicom also returns frames beyond the header's
    # NumberOfFrames when the pixel data holds them, so a 3-D array whose last axis is not 3 colour samples is frames
    if arr.ndim == 4 or (arr.ndim == 3 and (frames > 1 or arr.shape[-1] != 3)):
        arr = np.ascontiguousarray(arr[0])
    del ds  # and with it pydicom's decoded copy of the pixels
    arr *= slope  # in place: one float32 image at full size, no further copies
    arr += intercept
    if not np.isfinite(arr).all():
        raise ImageReadError(name, f"DICOM pixel values are not finite after rescaling (RescaleSlope {slope}, "
                                   f"RescaleIntercept {intercept}); expected finite numbers")
    height, width = arr.shape[:2]
    stored = _stored_range(bits, signed, slope, intercept) if intensity == INTENSITY_RULE else None
    if arr.ndim == 3:  # colour DICOM: no VOI window applies
        lo, hi = stored or (float(arr.min()), float(arr.max()))
        arr = _to_unit(np.ascontiguousarray(arr[..., :3]), lo, hi)
        return Decoded(_reduce_float(arr, min_side), width, height)
    if center is not None and window is not None and np.isfinite(center) and np.isfinite(window) and window > 1:
        lo, hi = center - window / 2.0, center + window / 2.0
    elif stored is not None:
        lo, hi = stored
    else:  # the legacy rule, or a file that says nothing of its bit depth: its own range
        lo, hi = float(arr.min()), float(arr.max())
    arr = _to_unit(arr, lo, hi)
    if photometric == "MONOCHROME1":  # 0 is white: invert so that bone is bright, as in MONOCHROME2
        np.subtract(1.0, arr, out=arr)
    return Decoded(_reduce_float(arr, min_side), width, height)


def _stored_range(bits: int, signed: bool, slope: float, intercept: float) -> tuple[float, float] | None:
    """``[lo, hi]`` of the values a DICOM's bit depth allows, through its rescale; None when ``bits`` is unknown."""
    if not 1 <= bits <= 32:
        return None
    lo, hi = (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1) if signed else (0.0, 2.0 ** bits - 1)
    a, b = lo * slope + intercept, hi * slope + intercept
    return (min(a, b), max(a, b))


def _to_unit(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``[lo, hi]`` to ``[0, 1]`` in place (clipped); all zeros when the range is empty."""
    if hi > lo:
        arr -= lo
        arr /= hi - lo
        np.clip(arr, 0, 1, out=arr)
    else:
        arr[...] = 0
    return arr


def _reduce_float(arr: np.ndarray, min_side: int | None) -> np.ndarray:
    """A float32 (H, W) / (H, W, 3) image box-averaged by :func:`reduce_factor` (Image.reduce, per channel)."""
    k = reduce_factor(arr.shape[1], arr.shape[0], min_side)
    if k == 1:
        return arr
    if arr.ndim == 2:
        return np.asarray(Image.fromarray(arr, mode="F").reduce(k), dtype=np.float32)
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(arr[..., c]), mode="F").reduce(k),
                                dtype=np.float32) for c in range(arr.shape[2])], axis=-1)


def _frames(ds: object) -> int:
    try:
        return max(1, int(getattr(ds, "NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _first(v: object) -> float | None:
    if v is None:
        return None
    try:
        if isinstance(v, (list, tuple)) or hasattr(v, "__len__") and not isinstance(v, (str, bytes)):
            v = list(v)[0]  # type: ignore[arg-type]
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError, IndexError):
        return None
