"""Drawing the phantom's radiographs: the anatomy, each finding inside its own mask, the acquisition.

:func:`draw` gives one image of a phantom (``seed``, ``index``, ``size``) with any findings switched on or off;
:mod:`medistill.data.phantom` writes a dataset of them and reads it back. numpy and Pillow only.

**Each lesion is the only evidence for its label** (version 2). An image is drawn in independent random streams
(seeded by the dataset seed, the image index and the stream): the labels, the anatomy, the acquisition (gain,
offset, noise), the view, and one stream per finding that always draws that finding's geometry, present or not.
The anatomy (torso, lungs with rib shadows and vessel texture, spine, a normal heart) is drawn and blurred first;
each present finding is then painted pixel by pixel inside its own mask only, with a soft profile; the
acquisition is applied last, pixel by pixel. So the same seed with a finding switched off (:func:`draw`) gives an
image identical outside that finding's mask, and the image outside the masks has the same distribution whether
findings are present or not: no global intensity change, no normalisation that depends on the content, no
anatomy that moves with a label. Labels are independent of each other, of the patient and of the split.

Version 1 (before 2026-11-29) painted findings before a blur (lesions leaked a halo outside their masks), let
a finding's random draws shift every later draw of the image, moved the lung lesions with the heart's size, and
drew nodules 5-8 % of the image wide only. ``benchmarks/results/phantom_shortcuts.md`` measures both versions.

Findings and their sizes (``FIELD_MM``: the image spans about 350 mm, a PA chest film):

==============  ================================================================================================
Cardiomegaly    the heart enlarged to a cardiothoracic ratio of 0.58-0.72 (normal hearts: 0.38-0.47); the heart's
                width over the thorax's (the lungs' outer edges). Mask: the enlarged heart
Effusion        dense fluid filling one lung's base, 20-50 % of the lung's height at the lateral wall (30 % lower
                medially: a meniscus), over the lung seen beside the normal heart. Mask: the fluid
Nodule          one (70 %) or two round dense nodules, 5-30 mm across (log-uniform; 1.4-8.6 % of the image
                width, at least 3 px), wholly inside a lung. Mask: the nodules
Pneumothorax    a dark rim without lung markings along one lung's apex and lateral wall, 10-35 mm wide, reaching
                40-75 % down the lung, with the visceral pleural line at its inner edge. Mask: the rim
Consolidation   a patchy, dense region in a lung, 30-90 mm across. Mask: the region
Atelectasis     a plate-like dense band in a lung's mid or lower zone, 3-8 mm thick (at least 2 px), 40-90 mm
                long, slanted up to 20 degrees. Mask: the band
==============  ================================================================================================

Resolution: ``size`` is the image side in pixels (default 128, which keeps the quickstart and the tests fast;
at 128 px a 5 mm nodule would be 2 px across and is drawn 3 px). 256 px or more is the realistic setting
(``medistill.data.phantom.ensure(root, size=256)``); see :func:`medistill.data.phantom.generate` for the
cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from PIL import Image

LABELS = ["Cardiomegaly", "Effusion", "Nodule", "Pneumothorax", "Consolidation", "Atelectasis"]
PREVALENCE = [0.2, 0.2, 0.2, 0.15, 0.2, 0.2]
FIELD_MM = 350.0  # the side of the field the image spans (a PA chest film is about 35 x 43 cm)

# sizes of the findings (see the module docstring); lengths in mm, ratios as shares
CTR_NORMAL = (0.38, 0.47)  # cardiothoracic ratio of a normal heart
CTR_CARDIOMEGALY = (0.58, 0.72)
EFFUSION_HEIGHT = (0.20, 0.50)  # share of the lung's height filled from its base
NODULE_MM = (5.0, 30.0)  # diameter
PNEUMOTHORAX_RIM_MM = (10.0, 35.0)
PNEUMOTHORAX_REACH = (0.40, 0.75)  # share of the lung's height the rim reaches down from the apex
CONSOLIDATION_MM = (30.0, 90.0)  # diameters of the ellipse
ATELECTASIS_THICKNESS_MM = (3.0, 8.0)
ATELECTASIS_LENGTH_MM = (40.0, 90.0)
MIN_NODULE_PX = 3.0  # smallest nodule diameter in pixels (a 3 x 3 disc: visible at small sizes)
MIN_BAND_PX = 2.0  # smallest atelectasis thickness and pneumothorax rim in pixels

# random streams of one image: np.random.default_rng([seed, index, stream])
_LABEL_STREAM, _ANATOMY_STREAM, _VIEW_STREAM, _ACQUISITION_STREAM, _FINDING_STREAM = 0, 1, 2, 3, 10


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, stream])


def sample_labels(seed: int, index: int) -> np.ndarray:
    """The findings present in image ``index`` of a phantom with ``seed``: bool (L,), independent draws."""
    return _rng(seed, index, _LABEL_STREAM).random(len(LABELS)) < np.asarray(PREVALENCE)


def sample_view(seed: int, index: int) -> str:
    """The view of image ``index`` of a phantom with ``seed``: PA (80 %) or AP, from its own stream."""
    return "PA" if _rng(seed, index, _VIEW_STREAM).random() < 0.8 else "AP"


def to_uint8(img: np.ndarray) -> np.ndarray:
    """float [0, 1] -> the stored 8-bit image."""
    return np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)


@dataclass
class Drawing:
    """One drawn radiograph."""

    image: np.ndarray  # float32 (S, S) in [0, 1], before 8-bit quantisation
    masks: np.ndarray  # bool (L, S, S): where each present finding was painted
    lungs: np.ndarray  # bool (2, S, S): the lungs (image left, image right)
    sizes: dict[str, Any] = field(default_factory=dict)  # each present finding's drawn size (and the hearts')


@dataclass
class _Anatomy:
    img: np.ndarray  # float32 (S, S)
    yy: np.ndarray  # (S, S) row coordinates
    xx: np.ndarray  # (S, S) column coordinates
    lungs: list[tuple[np.ndarray, float, float, int]]  # (mask, centre y, centre x, side -1 / +1)
    lung_ry: float
    lung_rx: float
    thorax_width: float  # px between the lungs' outer edges
    heart: tuple[float, float, float, float]  # centre y, centre x, radius x, radius y of the normal heart


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float, angle: float = 0.0) -> np.ndarray:
    """Elliptical radius (1 on the ellipse's outline) of every pixel."""
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    u, v = c * dx + s * dy, -s * dx + c * dy
    return np.sqrt((u / rx) ** 2 + (v / ry) ** 2)


def _smooth_noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    """Low-frequency noise in [0, 1] (bilinear upsampling of a coarse random grid)."""
    coarse = rng.random((max(size // scale, 2), max(size // scale, 2))).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.BILINEAR))


def _anatomy(rng: np.random.Generator, size: int) -> _Anatomy:
    """Torso, lungs with ribs and vessels, spine and a normal heart, blurred; independent of the findings."""
    from scipy.ndimage import gaussian_filter

    s = float(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    jitter = lambda a: rng.uniform(-a, a)  # noqa: E731
    cy, cx = s * (0.52 + jitter(0.03)), s * (0.5 + jitter(0.03))
    img = np.full((size, size), 0.06, np.float32)
    torso = _ellipse(yy, xx, cy, cx, s * 0.46, s * 0.40) <= 1
    img[torso] = 0.55
    lung_ry, lung_rx = s * (0.27 + jitter(0.02)), s * (0.13 + jitter(0.01))
    lungs = []
    for side in (-1, 1):
        ly, lx = cy - s * 0.04, cx + side * s * 0.17
        lungs.append((_ellipse(yy, xx, ly, lx, lung_ry, lung_rx, angle=side * 0.08) <= 1, ly, lx, side))
    lung_any = lungs[0][0] | lungs[1][0]
    img[lung_any] = 0.22
    ribs = 0.5 + 0.5 * np.sin((yy + 0.004 * (xx - cx) ** 2) * (2 * np.pi / (s * 0.085)) + rng.uniform(0, 6.28))
    vessels = _smooth_noise(rng, size, 6)
    img = np.where(lung_any, img + 0.07 * (ribs > 0.75) + 0.06 * vessels, img)
    spine = (np.abs(xx - cx) < s * 0.035) & torso
    img[spine] += 0.25
    cols = np.flatnonzero(lung_any.any(axis=0))
    thorax = float(cols.max() - cols.min() + 1) if len(cols) else s * 0.6
    hrx = rng.uniform(*CTR_NORMAL) * thorax / 2
    heart = (cy + s * 0.13, cx + s * 0.04, hrx, 0.75 * hrx)
    inside = _ellipse(yy, xx, heart[0], heart[1], heart[3], heart[2]) <= 1
    img[inside] = np.maximum(img[inside], 0.62)
    img = 0.7 * img + 0.3 * gaussian_filter(img, sigma=max(s / 128, 0.5))
    return _Anatomy(img.astype(np.float32), yy, xx, lungs, lung_ry, lung_rx, thorax, heart)


def _blend(img: np.ndarray, mask: np.ndarray, alpha: np.ndarray, target: np.ndarray | float) -> None:
    """``img`` moved towards ``target`` by ``alpha`` (in [0, 1]) inside ``mask`` only, in place."""
    t = target[mask] if isinstance(target, np.ndarray) else target
    img[mask] += alpha[mask] * (t - img[mask])


def _pick(rng: np.random.Generator, region: np.ndarray, margin: np.ndarray | None = None,
          radius: float = 0.0) -> tuple[float, float]:
    """A random pixel of ``region`` (where ``margin``, the distance to the region's outside, exceeds ``radius``
    when some pixel allows it)."""
    cand = np.argwhere(region & (margin > radius)) if margin is not None else np.empty((0, 2))
    if len(cand) == 0:
        cand = np.argwhere(region)
    if len(cand) == 0:
        return float(region.shape[0] // 2), float(region.shape[1] // 2)
    y, x = cand[rng.integers(0, len(cand))]
    return float(y), float(x)


@dataclass
class _Scene:
    """What the findings are painted on: the anatomy, the lung regions that lung lesions may use, px per mm."""

    a: _Anatomy
    img: np.ndarray  # float32 (S, S), painted in place
    regions: list[np.ndarray]  # per lung: the lung outside the largest heart this image can have
    normal_heart: np.ndarray  # bool (S, S): the heart of the anatomy
    mm: float  # px per mm

    def margin(self, k: int) -> np.ndarray:
        """Distance of each pixel of lung region ``k`` to its outside (px)."""
        from scipy.ndimage import distance_transform_edt

        return distance_transform_edt(self.regions[k])


def _effusion(r: np.random.Generator, sc: _Scene) -> tuple[np.ndarray, dict[str, Any]]:
    """Fluid from one lung's base up to a meniscus that rises towards the lateral wall."""
    a, yy, xx = sc.a, sc.a.yy, sc.a.xx
    lung, ly, lx, side = a.lungs[int(r.integers(0, 2))]
    lung = lung & ~sc.normal_heart  # the lung seen on the film: fluid may hide an enlarged heart's border
    height = r.uniform(*EFFUSION_HEIGHT)
    rows = np.flatnonzero(lung.any(axis=1))
    lung_h = float(rows.max() - rows.min() + 1) if len(rows) else 2 * a.lung_ry
    base = float(rows.max()) if len(rows) else ly + a.lung_ry
    lateral = np.clip((xx - lx) * side / a.lung_rx, 0, 1)
    # the fluid's top: ``height`` of the lung at the lateral wall, 30 % lower medially
    meniscus = base + 0.5 - lung_h * height * (0.7 + 0.3 * lateral ** 2)
    fluid = lung & (yy > meniscus)
    _blend(sc.img, fluid, np.clip((yy - meniscus) / (0.02 * yy.shape[0]), 0, 1), r.uniform(0.56, 0.62))
    return fluid, {"side": side, "height_share": height}


def _nodules(r: np.random.Generator, sc: _Scene) -> tuple[np.ndarray, dict[str, Any]]:
    """One or two round dense nodules, whole inside a lung; a sphere's thickness profile."""
    yy, xx = sc.a.yy, sc.a.xx
    mask = np.zeros(yy.shape, dtype=bool)
    diameters = []
    for _ in range(1 + int(r.random() < 0.3)):
        d_mm = float(np.exp(r.uniform(*np.log(NODULE_MM))))
        rad = max(d_mm * sc.mm, MIN_NODULE_PX) / 2
        k = int(r.integers(0, 2))
        py, px = _pick(r, sc.regions[k], sc.margin(k), rad)
        dist = np.hypot(yy - py, xx - px)
        disc = (dist < rad) & sc.regions[k]
        sc.img[disc] += r.uniform(0.18, 0.32) * np.sqrt(np.clip(1 - (dist[disc] / rad) ** 2, 0, 1))
        mask |= disc
        diameters.append(d_mm)
    return mask, {"diameters_mm": diameters}


def _pneumothorax(r: np.random.Generator, sc: _Scene) -> tuple[np.ndarray, dict[str, Any]]:
    """A dark rim along a lung's apex and lateral wall, no lung markings, the pleural line at its inner edge."""
    from scipy.ndimage import distance_transform_edt

    a, yy, xx = sc.a, sc.a.yy, sc.a.xx
    k = int(r.integers(0, 2))
    lung, ly, lx, side = a.lungs[k]
    margin = distance_transform_edt(lung)
    rim_px = max(r.uniform(*PNEUMOTHORAX_RIM_MM) * sc.mm, MIN_BAND_PX)
    rows = np.flatnonzero(lung.any(axis=1))
    top, lung_h = ((float(rows.min()), float(rows.max() - rows.min() + 1)) if len(rows)
                   else (ly - a.lung_ry, 2 * a.lung_ry))
    bottom = top + lung_h * r.uniform(*PNEUMOTHORAX_REACH)
    rim = sc.regions[k] & (margin <= rim_px) & ((xx - lx) * side > -0.3 * a.lung_rx) & (yy < bottom)
    fade = np.clip((bottom - yy) / (0.05 * yy.shape[0]), 0, 1)
    line = rim & (margin > rim_px - max(yy.shape[0] / 128, 1.0))
    _blend(sc.img, rim, fade, 0.09)
    _blend(sc.img, line, fade, 0.40)
    return rim, {"side": side, "rim_mm": rim_px / sc.mm}


def _consolidation(r: np.random.Generator, sc: _Scene) -> tuple[np.ndarray, dict[str, Any]]:
    """A patchy dense region with a soft border."""
    yy, xx = sc.a.yy, sc.a.xx
    k = int(r.integers(0, 2))
    d1, d2 = sorted(float(d) for d in r.uniform(*CONSOLIDATION_MM, size=2))
    py, px = _pick(r, sc.regions[k])
    rho = _ellipse(yy, xx, py, px, d1 * sc.mm / 2, d2 * sc.mm / 2, angle=r.uniform(0, np.pi))
    blob = (rho < 1) & sc.regions[k]
    patch = _smooth_noise(r, yy.shape[0], 3)
    _blend(sc.img, blob, np.clip((1 - rho) / 0.35, 0, 1) * (0.55 + 0.45 * patch), r.uniform(0.50, 0.58))
    return blob, {"diameters_mm": [d1, d2]}


def _atelectasis(r: np.random.Generator, sc: _Scene) -> tuple[np.ndarray, dict[str, Any]]:
    """A plate-like band in a lung's mid or lower zone, slanted up to 20 degrees."""
    a, yy, xx = sc.a, sc.a.yy, sc.a.xx
    k = int(r.integers(0, 2))
    ly = a.lungs[k][1]
    thick = max(r.uniform(*ATELECTASIS_THICKNESS_MM) * sc.mm, MIN_BAND_PX)
    length = r.uniform(*ATELECTASIS_LENGTH_MM) * sc.mm
    ang = r.uniform(-0.35, 0.35)
    # the centre: in the lung's mid or lower zone, as far inside the lung as the band's length allows
    py, px = _pick(r, sc.regions[k] & (yy >= ly - 0.1 * a.lung_ry), sc.margin(k), min(length / 2, a.lung_rx * 0.6))
    u = (xx - px) * np.cos(ang) + (yy - py) * np.sin(ang)  # along the band
    v = -(xx - px) * np.sin(ang) + (yy - py) * np.cos(ang)  # across it
    band = sc.regions[k] & (np.abs(v) < thick / 2) & (np.abs(u) < length / 2)
    profile = np.clip(1 - (2 * v / thick) ** 2, 0.2, 1) * np.clip((length / 2 - np.abs(u)) / (0.15 * length), 0.2, 1)
    _blend(sc.img, band, profile, 0.58)
    return band, {"thickness_mm": thick / sc.mm, "length_mm": length / sc.mm}


_PAINTERS = {"Effusion": _effusion, "Nodule": _nodules, "Pneumothorax": _pneumothorax,
             "Consolidation": _consolidation, "Atelectasis": _atelectasis}


def draw(seed: int, index: int, size: int, present: Sequence[bool] | np.ndarray | None = None) -> Drawing:
    """Image ``index`` of a phantom with ``seed`` at ``size`` px, with the findings ``present`` (bool (L,);
    default: the image's own labels, :func:`sample_labels`). Switching a finding off changes the image inside
    that finding's mask only: each finding draws from its own stream, painted pixel by pixel inside its mask."""
    present = sample_labels(seed, index) if present is None else np.asarray(present, dtype=bool)
    if present.shape != (len(LABELS),):
        raise ValueError(f"present: expected {len(LABELS)} flags ({', '.join(LABELS)}), got shape {present.shape}")
    a = _anatomy(_rng(seed, index, _ANATOMY_STREAM), size)
    yy, xx = a.yy, a.xx
    masks = np.zeros((len(LABELS), size, size), dtype=bool)
    sizes: dict[str, Any] = {}

    # Cardiomegaly: the heart enlarged about the same centre and aspect (the normal heart lies inside it); its
    # size is drawn for every image, since lung lesions keep out of the largest heart the image can have
    r = _rng(seed, index, _FINDING_STREAM)
    hy, hx, hrx, hry = a.heart
    big_rx = max(r.uniform(*CTR_CARDIOMEGALY) * a.thorax_width / 2, hrx + 1.0)
    rho = _ellipse(yy, xx, hy, hx, hry * big_rx / hrx, big_rx)
    big_heart = rho < 1
    sc = _Scene(a, a.img.copy(), [lung & ~big_heart for lung, *_ in a.lungs],
                _ellipse(yy, xx, hy, hx, hry, hrx) <= 1, size / FIELD_MM)
    sizes["Cardiomegaly"] = {"ctr": 2 * big_rx / a.thorax_width, "ctr_normal": 2 * hrx / a.thorax_width}
    if present[0]:
        masks[0] = big_heart
        _blend(sc.img, big_heart, np.clip((1 - rho) / 0.12, 0, 1), np.maximum(sc.img, 0.62))
    for k, lab in enumerate(LABELS[1:], start=1):
        if present[k]:  # an absent finding draws nothing: its stream is its own
            masks[k], sizes[lab] = _PAINTERS[lab](_rng(seed, index, _FINDING_STREAM + k), sc)

    # acquisition: gain, offset and noise, pixel by pixel, drawn independently of the findings
    r = _rng(seed, index, _ACQUISITION_STREAM)
    img = sc.img * r.uniform(0.9, 1.1) + r.uniform(-0.04, 0.04) + r.normal(0, 0.02, sc.img.shape).astype(np.float32)
    return Drawing(np.clip(img, 0, 1).astype(np.float32), masks, np.stack([m for m, *_ in a.lungs]), sizes)
