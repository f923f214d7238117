"""Atomic writes: a temporary file in the same folder, fsync, then ``os.replace``.

A crash (even SIGKILL) leaves either the old file or the new one, never a half-written file. The file's
permissions are what the umask gives any new file (``0666 & ~umask``, as ``open(path, "w")`` creates it):
``tempfile.mkstemp`` would make every model and record 0600, unreadable by a service account that serves it.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import stat
from pathlib import Path
from typing import Any, Callable

from ..errors import MedistillError


def atomic_write(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` then atomically move ``tmp_path`` onto ``path``."""
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
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


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


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def _json_default(o: Any) -> Any:
    import numpy as np

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


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n")


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
