"""The upload of ``medistill serve``: the multipart body read as it streams in, counted against the size limit
and a deadline, the image part kept in memory or spooled to the application's temporary folder."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import anyio
from fastapi import Request

from .guards import ServeError, printable

FIELD = "file"  # the multipart field holding the image
#: an uploaded part larger than this is spooled to the application's temporary folder instead of memory
SPOOL_BYTES = 2**20
#: seconds an upload has before its minimum rate applies (TCP slow start, a client reading its file)
MIN_RATE_GRACE_S = 5.0


class Upload:
    """The image part of a request: its base name and bytes, in memory or in a file of the temporary folder."""

    def __init__(self, part: Any):
        self.part = part  # python_multipart File (has file_object) or Field (has value)
        raw = getattr(part, "file_name", None) or b"upload"
        name = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        # the base name, with control characters and terminal escapes escaped: it is logged and shown
        self.name = printable(Path(name.replace("\\", "/")).name) or "upload"

    def head(self, n: int = 132) -> bytes:
        if hasattr(self.part, "file_object"):
            f = self.part.file_object
            f.seek(0)
            return f.read(n)
        return bytes(self.part.value or b"")[:n]

    def read(self) -> bytes:
        if hasattr(self.part, "file_object"):
            f = self.part.file_object
            f.seek(0)
            return f.read()
        return bytes(self.part.value or b"")

    @property
    def size(self) -> int:
        return int(self.part.size) if hasattr(self.part, "file_object") else len(self.part.value or b"")

    def close(self) -> None:
        if hasattr(self.part, "close"):
            self.part.close()  # a spooled part's temporary file is deleted on close


def _too_large(size: int | str, limit: int) -> ServeError:
    return ServeError(413, "upload_too_large", f"the upload is {size} bytes, more than the limit of {limit} bytes "
                                               f"({limit / 2**20:.1f} MiB)", close=True)


async def read_upload(request: Request, limit: int, spool_dir: Path, *, deadline: float | None = None,
                      min_rate: float = 0.0) -> Upload:
    """The ``file`` part of a multipart request, the body counted against ``limit`` bytes as it streams in; 408
    when the body has not arrived whole by ``deadline`` (``time.monotonic()`` seconds), or when, after
    :data:`MIN_RATE_GRACE_S` seconds, it has arrived slower than ``min_rate`` bytes per second on average (0: no
    minimum): a body trickling in costs its connection seconds, not the whole deadline."""
    from python_multipart import create_form_parser
    from python_multipart.exceptions import FormParserError

    content_type = request.headers.get("content-type", "")
    mime = content_type.split(";")[0].strip().lower()
    if mime != "multipart/form-data":
        raise ServeError(415, "not_multipart", f"expected a multipart/form-data upload with the image in the field "
                                               f"{FIELD!r}, got Content-Type {mime or 'none'!r}")
    declared = request.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(declared, limit)
    parts: list[Any] = []  # every part is kept until the end so that each one is closed (temp files deleted)

    def on_part(part: Any) -> None:
        parts.append(part)

    config = {"UPLOAD_DIR": str(spool_dir), "MAX_MEMORY_FILE_SIZE": SPOOL_BYTES, "UPLOAD_DELETE_TMP": True,
              "UPLOAD_KEEP_FILENAME": False, "UPLOAD_KEEP_EXTENSIONS": False}
    try:
        parser = create_form_parser({"Content-Type": content_type}, on_part, on_part, config=config)
        received = 0
        started = time.monotonic()
        chunks = request.stream().__aiter__()
        while True:
            # the body must be in by the deadline, and each byte by the time the minimum rate allows for it
            wait = [deadline - time.monotonic()] if deadline is not None else []
            if min_rate > 0:
                wait.append(started + MIN_RATE_GRACE_S + received / min_rate - time.monotonic())
            try:
                with anyio.fail_after(max(0.0, min(wait)) if wait else None):
                    chunk = await chunks.__anext__()
            except StopAsyncIteration:
                break
            except TimeoutError:
                if deadline is not None and time.monotonic() >= deadline - 1e-3:
                    raise
                rate = received / max(time.monotonic() - started, 1e-9)
                raise ServeError(408, "upload_too_slow", f"the upload arrived at {rate:.0f} bytes/s ({received} "
                                                         f"bytes), under the minimum of {min_rate / 1024:.1f} KiB/s; "
                                                         f"send it over a faster connection", close=True) from None
            received += len(chunk)
            if received > limit:
                raise _too_large(f"more than {limit}", limit)
            if chunk:
                parser.write(chunk)
        parser.finalize()
        images = [p for p in parts if p.field_name == FIELD.encode()]
        if not images:
            names = sorted({(p.field_name or b"").decode("utf-8", "replace") for p in parts})
            raise ServeError(422, "missing_file", f"no {FIELD!r} field in the upload (fields: "
                                                  f"{', '.join(names) or 'none'}); send the image as {FIELD}=@IMAGE")
        if len(images) > 1:
            raise ServeError(422, "several_files", f"{len(images)} {FIELD!r} fields; send one image per request")
    except ServeError:
        for p in parts:
            _close(p)
        raise
    except TimeoutError:
        for p in parts:
            _close(p)
        raise ServeError(408, "upload_timeout", f"the request did not arrive whole in time ({received} bytes "
                                                f"received); send it faster or in a smaller file", close=True) from None
    except (FormParserError, ValueError) as e:  # python-multipart: malformed body or boundary
        for p in parts:
            _close(p)
        raise ServeError(422, "malformed_upload", f"the multipart body cannot be parsed ({e})") from None
    except BaseException:  # ClientDisconnect, cancellation: no part left open
        for p in parts:
            _close(p)
        raise
    for p in parts:
        if p is not images[0]:
            _close(p)
    return Upload(images[0])


def _close(part: Any) -> None:
    with contextlib.suppress(Exception):
        part.close()
