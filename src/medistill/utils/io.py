"""Atomic writes: a temporary file in the same folder, fsync, then ``os.replace``.

A crash (even SIGKILL) leaves either the old file or the new one, never a half-written file. The file's
permissions are what the umask gives any new file (``0666 & ~umask``, as ``open(path, "w")`` creates it):
``tempfile.mkstemp`` would make every model and record 0600, unreadable by a service account that serves it.
"""

from __future__ import annotations

import errno
import json
import math
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import MedistillError


class DiskFullError(MedistillError):
    """A write failed because its file system is full (or the user's quota is spent)."""


def atomic_write(path: str | Path, writer: Callable[[Path], None], *, shown_as: str | Path | None = None) -> Path:
    """Call ``writer(tmp_path)`` then atomically move ``tmp_path`` onto ``path``; a full disk raises
    :class:`DiskFullError` naming ``shown_as`` (default ``path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _new_temp(path)
    mode = stat.S_IMODE(tmp_path.stat().st_mode)  # 0666 & ~umask
    try:
        writer(tmp_path)
        if stat.S_IMODE(tmp_path.stat().st_mode) != mode:  # a writer that made its own file (safetensors: 0600)
            os.chmod(tmp_path, mode)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException as e:
        tmp_path.unlink(missing_ok=True)
        full = disk_full_error(e, shown_as or path)
        if full is not None:
            raise full from None
        raise
    return path


#: errno values of a full file system or a spent quota, and how libraries that wrap them (safetensors' Rust, a
#: torch zip writer) word them
_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_FULL_TEXTS = ("no space left on device", "os error 28", "disk quota exceeded", "os error 122")


def disk_full_error(e: BaseException, path: str | Path) -> DiskFullError | None:
    """The :class:`DiskFullError` that ``e``, raised while writing ``path``, stands for (None when ``e`` is about
    something else): one line naming the file and the space left on its file system."""
    if not isinstance(e, Exception):
        return None
    if not (isinstance(e, OSError) and e.errno in _FULL_ERRNOS or any(t in str(e).lower() for t in _FULL_TEXTS)):
        return None
    path = Path(path)
    what = "disk quota exceeded" if isinstance(e, OSError) and e.errno == getattr(errno, "EDQUOT", None) \
        or "quota" in str(e).lower() else "no space left on device"
    try:
        free = f"{_human_bytes(shutil.disk_usage(path.parent).free)} free in {path.parent}"
    except OSError:
        free = f"free space of {path.parent} unknown"
    return DiskFullError(f"{path}: cannot write it: {what} ({free}); free some space or write elsewhere, then run "
                         f"the command again")


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _new_temp(path: Path) -> Path:
    """A new empty hidden file ``.NAME.<random>.tmp`` beside ``path``, created ``0666 & ~umask`` (``mkstemp``'s
    0600 ignores the umask)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"{path.parent}: no free temporary name for {path.name}")  # pragma: no cover


def staged_write(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Write the new content of ``path`` whole (as :func:`atomic_write`) under a hidden name beside it,
    ``.NAME.<pid>.staged.tmp``, and return that name: the caller makes it ``path`` with ``os.replace`` once the
    files that belong with it are written too (or unlinks it). Errors name ``path``."""
    path = Path(path)
    return atomic_write(path.with_name(f".{path.name}.{os.getpid()}.staged.tmp"), writer, shown_as=path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _nan_to_none(o: Any) -> Any:
    """JSON has no NaN: write null so every reader (browsers, jq) can parse the file."""
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return None
    if isinstance(o, dict):
        return {k: _nan_to_none(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_nan_to_none(v) for v in o]
    return o


def to_jsonable(o: Any) -> Any:
    return _nan_to_none(json.loads(json.dumps(o, default=_json_default)))


def json_text(obj: Any) -> str:
    """``obj`` as the text of a JSON file (indented; NaN and infinities as null)."""
    return json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n"


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json_text(obj))


class JsonFileError(MedistillError):
    """A JSON file that cannot be used: not UTF-8, not JSON, or not the kind of value expected; the message names
    the file and what was expected."""


def read_json(path: str | Path, what: str = "JSON") -> Any:
    """The value in the JSON file ``path``; JsonFileError naming the file and ``what`` was expected when it is not
    UTF-8 JSON, FileNotFoundError when it is missing."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise JsonFileError(f"{path}: is a folder; expected {what}") from None
    except UnicodeDecodeError as e:
        raise JsonFileError(f"{path}: not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}); "
                            f"expected {what}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise JsonFileError(f"{path}: not valid JSON ({e}); expected {what}") from None


def read_json_object(path: str | Path, what: str = "a JSON object") -> dict[str, Any]:
    """``read_json`` of a file that must hold a JSON object (a mapping at the top level)."""
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise JsonFileError(f"{path}: holds a JSON {type(data).__name__}, expected {what}")
    return data
