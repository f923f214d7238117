"""The decoded-image cache: each image decoded and resized once into a uint8 memory-mapped array.

Where it lives is decided in one place, :func:`medistill.data.image_cache_dir`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import images as im


class ImageCache:
    """uint8 memory-mapped array ``(N, C, S, S)`` of decoded, resized images, filled on first access.

    Size on disk is N * C * S * S bytes (e.g. 5,000 x 1 x 128 x 128 = 82 MB) and it is paged in by the OS, so
    memory use stays bounded. A sidecar ``.done`` array marks filled rows; concurrent DataLoader workers
    write disjoint rows.
    """

    def __init__(self, folder: Path, key: str, n: int, channels: int, size: int):
        folder.mkdir(parents=True, exist_ok=True)
        self.shape = (n, channels, size, size)
        self.path = folder / f"{key}-{n}x{channels}x{size}.u8"
        self.done_path = folder / f"{key}-{n}x{channels}x{size}.done"
        whole = (self.path.is_file() and self.path.stat().st_size == int(np.prod(self.shape))
                 and self.done_path.is_file() and self.done_path.stat().st_size == n)
        if not whole:  # absent, resized, or left half-made by a crash between the two files: start afresh
            np.memmap(self.path, dtype=np.uint8, mode="w+", shape=self.shape).flush()
            np.memmap(self.done_path, dtype=np.uint8, mode="w+", shape=(n,)).flush()
        self._data: np.memmap | None = None
        self._done: np.memmap | None = None

    def _open(self) -> None:
        if self._data is None:
            self._data = np.memmap(self.path, dtype=np.uint8, mode="r+", shape=self.shape)
            self._done = np.memmap(self.done_path, dtype=np.uint8, mode="r+", shape=(self.shape[0],))

    def get(self, i: int, load: Callable[[], np.ndarray]) -> np.ndarray:
        """Row ``i`` as uint8 (C, S, S); ``load()`` gives the float [0, 1] (C, S, S) image when not cached."""
        self._open()
        assert self._data is not None and self._done is not None
        if self._done[i]:
            return np.asarray(self._data[i])
        arr = im.to_uint8(load())
        self._data[i] = arr
        self._done[i] = 1
        return arr

    def __getstate__(self) -> dict[str, Any]:  # memmaps are reopened in each worker
        return {**self.__dict__, "_data": None, "_done": None}
