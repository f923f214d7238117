"""The decoded-image cache: each image decoded and resized once into a uint8 memory-mapped array.

Where it lives is decided in one place, :func:`medistill.data.image_cache_dir`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..utils.io import atomic_write
from . import images as im


class ImageCache:
    """uint8 memory-mapped array ``(N, C, S, S)`` of decoded, resized images, filled on first access.

    One file: the N * C * S * S image bytes (e.g. 5,000 x 1 x 128 x 128 = 82 MB), then one byte per row marking it
    filled. It is paged in by the OS, so memory use stays bounded. Concurrent DataLoader workers write disjoint
    rows. The file is created whole under a temporary name and moved into place, never truncated in place: the
    ranks of a ``torchrun`` job build their datasets at once, and a rank that recreated the file in place while
    another had it open made that one fail (``mmap length is greater than file size``, or SIGBUS). A rank that
    loses the race keeps a consistent private copy (images and flags are one inode) and only repeats some decoding.
    """

    def __init__(self, folder: Path, key: str, n: int, channels: int, size: int):
        folder.mkdir(parents=True, exist_ok=True)
        self.shape = (n, channels, size, size)
        self.path = folder / f"{key}-{n}x{channels}x{size}.u8"
        self._flags_at = int(np.prod(self.shape))  # the images' bytes, then one flag per row
        self._bytes = self._flags_at + n
        if not self._whole():
            # absent, resized, or written by an older layout (images only, flags in a .done sidecar): start afresh
            atomic_write(self.path, lambda p: os.truncate(p, self._bytes))  # sparse zeros: no row filled
            self.path.with_suffix(".done").unlink(missing_ok=True)
        self._data: np.memmap | None = None
        self._done: np.memmap | None = None

    def _whole(self) -> bool:
        return self.path.is_file() and self.path.stat().st_size == self._bytes

    def _open(self) -> None:
        if self._data is None:
            whole = np.memmap(self.path, dtype=np.uint8, mode="r+", shape=(self._bytes,))
            self._data = whole[: self._flags_at].reshape(self.shape)
            self._done = whole[self._flags_at:]

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
