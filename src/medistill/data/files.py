"""Finding image files: folders expanded recursively into image and DICOM paths (``medistill predict``, datasets of
image folders), symlink loops and dangling links reported rather than skipped unseen. Standard library only.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand files and folders (recursively, sorted) into image/DICOM paths; files are kept as given.

    Inside a folder, a symlink with an image name whose target cannot be reached (a symlink loop, or a target that
    is missing) is listed all the same, so that the caller reports it like any unreadable file instead of
    skipping it unseen; a symlink to a folder is not followed, with a warning (one that loops back above itself
    says so).
    """
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = []
            for q in p.rglob("*"):
                image_name = q.suffix.lower() in IMAGE_SUFFIXES + DICOM_SUFFIXES
                if q.is_symlink() and not q.is_file() and not q.is_dir():
                    if image_name:
                        found.append(q)  # a loop or a dangling link: reading it gives the reason
                    else:
                        log.warning("%s: %s, skipped", q, _broken_link_reason(q))
                elif q.is_symlink() and q.is_dir():
                    loops = _loops_back(q)
                    log.warning("%s: a symlink to a folder, not followed%s", q,
                                " (a symlink loop: it points to a folder above it)" if loops else "")
                elif image_name and q.is_file():
                    found.append(q)
            out.extend(sorted(found))
        else:
            out.append(p)
    return out


def _broken_link_reason(q: Path) -> str:
    try:
        q.resolve(strict=True)
    except (RuntimeError, OSError) as e:
        if isinstance(e, RuntimeError) or getattr(e, "errno", None) == errno.ELOOP:
            return "a symlink loop"
    return "a symlink to a missing file"


def _loops_back(q: Path) -> bool:
    """Whether the folder symlink ``q`` points to the folder holding it or one above it."""
    try:
        target = q.resolve(strict=True)
        return target == q.parent.resolve() or target in q.parent.resolve().parents
    except (RuntimeError, OSError):
        return True
