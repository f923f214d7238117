"""``medistill serve``: try an exported model in a web page (upload an image, see findings and heatmaps).

``create_app(model_path)`` builds the FastAPI application (see :mod:`medistill.serve.app`); ``medistill serve``
runs it under uvicorn. Serving is torch-free: ONNX Runtime, numpy, Pillow, pydicom, FastAPI.
FastAPI, uvicorn and python-multipart come with the ``serve`` extra (``pip install 'medistill[serve]'``).
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import MedistillError

#: importable module -> the distribution that provides it (all in the ``serve`` extra)
SERVE_MODULES = {"fastapi": "fastapi", "starlette": "fastapi", "python_multipart": "python-multipart",
                 "uvicorn": "uvicorn"}


def require(module: str) -> Any:
    """Import one of the ``serve`` extra's modules, or a MedistillError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        missing = (e.name or module).split(".")[0]
        if missing not in SERVE_MODULES:
            raise
        raise MedistillError(f"medistill serve needs {SERVE_MODULES[missing]} (not installed): "
                             f"pip install 'medistill[serve]'") from None


def create_app(model_path: Any, **kwargs: Any) -> Any:
    """The FastAPI application serving ``model_path``; see :func:`medistill.serve.app.create_app`."""
    for module in ("fastapi", "python_multipart"):
        require(module)
    from .app import create_app as _create_app

    return _create_app(model_path, **kwargs)


__all__ = ["create_app", "require"]
