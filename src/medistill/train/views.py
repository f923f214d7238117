"""Cached consistent KD (Shen & Xing, "A Fast Knowledge Distillation Framework for Visual Recognition", FKD,
ECCV 2022): the teacher's outputs on ``V`` random augmented views of every training image are computed once and
stored with what makes each view (its seed); each epoch the student sees one of those views per image, replayed
exactly, and reads the teacher's logits for it, so KD stays consistent (the teacher saw the very same view) while
an epoch costs what a plain student epoch costs. Filling the cache is KD's set-up cost: its ``.json`` records the
seconds it took (``seconds``), so that a comparison with plain training can count it.

A view is identified by ``(image index, view number)``: its augmentation runs under a torch RNG seeded from those
two numbers and the cache seed, so replaying it needs no stored crop boxes. The cache (:class:`ViewCache`: the
logits ``(N, V, L)``, for explanation losses the teacher's Grad-CAM maps too, and a ``.json`` with its key and the
views done) is keyed by the teachers (path and a digest of their weights), their precision, the image list, the
load size, the augmentation and ``V``; a stale cache is recomputed, a partial one (killed while caching) continues
from the first view not done.
Offline KD (no augmentation: every view is the same) is the same cache with ``V = 1``.

With mixup / CutMix (Beyer et al. 2022's function matching) a view is image ``i``'s augmented view ``v`` mixed
with a partner image's view ``v``; partner, mixing kind and ``lam`` come from the same seed, so the mixed view
replays exactly and the teacher's outputs on it are cached like any other (the mixing is part of the cache key).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data import collate
from ..runs import waiting_lock
from ..utils.io import atomic_write, atomic_write_json
from .mixing import Mixer

log = logging.getLogger(__name__)

VIEW_SEED_STRIDE = 1_000_003


def view_seed(seed: int, index: int, view: int) -> int:
    """The torch seed of view ``view`` of image ``index`` (fits in 63 bits)."""
    return (seed * VIEW_SEED_STRIDE + index) * 1009 + view


class ViewDataset(Dataset):
    """A training dataset whose item ``i`` is view ``view_of(i)`` of image ``i``, replayed from its seed.

    ``view_of`` is set per epoch (:meth:`set_epoch`) or fixed (:meth:`fix_view`, to cache one view of every image).
    Items carry ``"view"`` besides the base dataset's keys. With an enabled ``mixer`` each view is mixed with a
    partner image's view (see the module's docstring); then training must not mix batches again.
    """

    def __init__(self, base: Any, views: int, seed: int, mixer: Mixer | None = None):
        self.base, self.views, self.seed = base, int(views), int(seed)
        self.mixer = mixer if mixer is not None and mixer.enabled and len(base) > 1 else None
        self._choice: np.ndarray | None = None
        self._fixed: int | None = None

    def __len__(self) -> int:
        return len(self.base)

    def __getattr__(self, name: str) -> Any:  # targets, masks, labels, data ... of the base dataset
        if name in ("base", "views", "seed", "mixer", "_choice", "_fixed"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def set_epoch(self, train_seed: int, epoch: int) -> None:
        """Choose each image's view for this epoch (deterministic in ``(train_seed, epoch)``, so resume is exact)."""
        rng = np.random.default_rng([self.seed, train_seed, epoch])
        self._choice = rng.integers(0, self.views, size=len(self.base))
        self._fixed = None

    def fix_view(self, view: int) -> None:
        self._fixed, self._choice = int(view), None

    def __getitem__(self, i: int) -> dict[str, Any]:
        v = self._fixed if self._fixed is not None else int(self._choice[i]) if self._choice is not None else 0
        item = self._augmented(i, v)
        if self.mixer is not None:
            rng = np.random.default_rng([self.seed, i, v])
            if rng.random() < self.mixer.prob:
                j = int(rng.integers(0, len(self.base) - 1))
                item = self.mixer.mix_pair(item, self._augmented(j + (j >= i), v), rng)
        item["view"] = v
        return item

    def _augmented(self, i: int, v: int) -> dict[str, Any]:
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only (augmentation draws from it), the same stream torch.manual_seed gives: on a
            # CUDA build without an initialised GPU, torch.manual_seed also queues a CUDA seeding that records the
            # Python stack each call, about a tenth of a cached-KD epoch (py-spy, kdfmv at 64 px)
            torch.default_generator.manual_seed(view_seed(self.seed, i, v))
            return self.base[i]


def collate_views(batch: list[dict[str, Any]]) -> dict[str, Any]:
    out = collate(batch)
    out["view"] = torch.tensor([b["view"] for b in batch])
    return out


def cache_key(parts: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ViewCache:
    """The teachers' outputs on every view of every image, by name: ``"logits"`` ``(N, V, L)`` float32 in
    ``<stem>.npy`` and, for explanation losses, ``"maps"`` ``(N, V, L, h, w)`` float16 in ``<stem>-maps.npy``;
    ``<stem>.json`` holds the key and how many views are done. Offline KD is the case ``V = 1`` without
    augmentation."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.meta_path = self.path.with_suffix(".json")

    def file(self, name: str) -> Path:
        return self.path if name == "logits" else self.path.with_name(f"{self.path.stem}-{name}.npy")

    def _meta(self) -> dict[str, Any]:
        """The cache's ``.json`` ({} when there is none); _Corrupt when it is not a JSON object."""
        if not self.meta_path.exists():
            return {}
        try:
            meta = json.loads(self.meta_path.read_bytes().decode("utf-8"))
        except (OSError, ValueError) as e:  # UnicodeDecodeError, JSONDecodeError
            raise _Corrupt(self.meta_path, f"not a JSON object ({type(e).__name__})") from None
        if not isinstance(meta, dict):
            raise _Corrupt(self.meta_path, f"not a JSON object (a JSON {type(meta).__name__})")
        return meta

    def _cached(self, key: str, n: int, V: int) -> tuple[dict[str, np.ndarray], int]:
        """The arrays and the number of views done of a cache made for ``key`` with ``n`` images and ``V`` views
        ({} and 0 when there is none, or one for another key); _Corrupt naming the file and what is wrong when it
        cannot be used (a truncated ``.npy``, an array of another shape, a ``views_done`` that is not a count)."""
        meta = self._meta()
        if meta.get("key") != key:
            return {}, 0
        done, names = meta.get("views_done", 0), meta.get("names", [])
        if isinstance(done, bool) or not isinstance(done, int) or not 0 <= done <= V:
            raise _Corrupt(self.meta_path, f"views_done: expected 0 to {V}, got {done!r:.40}")
        if not isinstance(names, list) or not all(isinstance(k, str) and k.isidentifier() for k in names):
            raise _Corrupt(self.meta_path, f"names: expected a list of output names, got {names!r:.60}")
        if not names or not done or not all(self.file(k).is_file() for k in names):
            return {}, 0
        arrays = {}
        for k in names:
            path = self.file(k)
            try:
                a = np.load(path, allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:
                raise _Corrupt(path, f"cannot be read ({type(e).__name__}: {' '.join(str(e).split())[:120]})") \
                    from None
            want = meta.get("shapes", {}).get(k) if isinstance(meta.get("shapes"), dict) else None
            want = tuple(want) if isinstance(want, list) and len(want) >= 2 else (n, V, *a.shape[2:])
            if a.shape != want or want[:2] != (n, V):
                raise _Corrupt(path, f"an array of shape {tuple(a.shape)}, expected {(n, V, *want[2:])} for {n} "
                                     f"images x {V} views")
            if a.dtype.kind != "f":
                raise _Corrupt(path, f"holds {a.dtype} values, expected floats")
            arrays[k] = a
        return arrays, done

    def load_or_compute(self, key: str, ds: ViewDataset, batch_size: int,
                        teacher: Callable[[torch.Tensor], dict[str, torch.Tensor]], device: torch.device,
                        on_view: Callable[[int, int], None] | None = None,
                        on_batch: Callable[[int, int, int, int], None] | None = None) -> dict[str, torch.Tensor]:
        """The cached outputs as float32 tensors ``(N, V, ...)``; computes the views not cached yet, one whole view
        at a time, writing the files after each (a killed run continues from there). ``teacher`` maps a loaded
        batch to named outputs ``(B, ...)``. ``on_view(views done, V)`` after each view, ``on_batch(view, V,
        images done, N)`` after each batch (progress bars live in the CLI). Runs sharing the cache's folder take
        turns: while another process fills it (``<stem>.lock``), this one waits, then reads what it wrote."""
        with waiting_lock(self.path.with_suffix(".lock"),
                          on_wait=lambda: log.info("waiting for another process filling %s", self.path)):
            return self._load_or_compute(key, ds, batch_size, teacher, device, on_view, on_batch)

    def _load_or_compute(self, key: str, ds: ViewDataset, batch_size: int,
                         teacher: Callable[[torch.Tensor], dict[str, torch.Tensor]], device: torch.device,
                         on_view: Callable[[int, int], None] | None,
                         on_batch: Callable[[int, int, int, int], None] | None) -> dict[str, torch.Tensor]:
        n, V = len(ds), ds.views
        try:
            arrays, done = self._cached(key, n, V)
            seconds = float(self._meta().get("seconds", 0.0)) if done else 0.0  # its cost so far (KD's set-up)
        except (_Corrupt, TypeError, ValueError) as e:  # (TypeError, ValueError: a "seconds" that is not a number)
            log.warning("%s; rebuilding the cache", e if isinstance(e, _Corrupt) else
                        f"{self.meta_path}: seconds: not a number")
            arrays, done, seconds = {}, 0, 0.0
        if done >= V:
            log.info("reusing the teacher's cached outputs on %d view(s) per image (%s)", V, self.path)
        for v in range(done, V):
            t0 = time.perf_counter()
            ds.fix_view(v)
            loader = DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate_views)
            seen = 0
            for batch in loader:
                idx = batch["index"].numpy()
                for name, out in teacher(batch["image"].to(device)).items():
                    if name not in arrays:
                        dtype = np.float32 if name == "logits" else np.float16
                        arrays[name] = np.zeros((n, V, *out.shape[1:]), dtype)
                    arrays[name][idx, v] = out.detach().cpu().numpy()
                seen += len(idx)
                if on_batch:
                    on_batch(v + 1, V, seen, n)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for name, arr in arrays.items():
                atomic_write(self.file(name), lambda p, a=arr: _save(p, a))
            seconds += time.perf_counter() - t0
            atomic_write_json(self.meta_path, {"key": key, "views": V, "views_done": v + 1, "names": sorted(arrays),
                                               "shapes": {k: list(a.shape) for k, a in arrays.items()},
                                               "seconds": round(seconds, 3), "mixed": ds.mixer is not None})
            log.info("cached the teacher's outputs on view %d/%d of %d images", v + 1, V, n)
            if on_view:
                on_view(v + 1, V)
        return {k: torch.from_numpy(a.astype(np.float32)) for k, a in arrays.items()}


class _Corrupt(Exception):
    """A file of a view cache that cannot be used; the message names it and says what is wrong."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path}: {problem}")


def _save(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, arr)
