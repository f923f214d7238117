"""Seeding, device choice and version records."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import random
import subprocess
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[Any]:
    """Put a torch ``model`` in eval mode for the block and restore its mode (train or eval) afterwards."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def resolve_device(name: str = "auto"):
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            return torch.device(f"cuda:{local_rank}")
        return torch.device("cpu")
    return torch.device(name)


#: what run.json, export reports and benchmarks record: medistill and every library constraints.txt pins
PACKAGES = ("medistill", "torch", "torchvision", "timm", "numpy", "pillow", "pandas", "scipy", "scikit-learn",
            "onnx", "onnxruntime", "onnxscript", "grad-cam", "opencv-python-headless", "captum", "pydicom",
            "safetensors", "matplotlib", "openvino")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            out[n] = None
    return out


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the medistill checkout (or ``path``), when git knows it."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


#: the instruction-set flags that decide which kernels a runtime uses (INT8 dot products: VNNI; bf16; AMX)
CPU_FLAGS = frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
                       "amx_int8", "amx_tile"})


def machine_info() -> dict[str, object]:
    info: dict[str, object] = {"platform": platform.platform(), "processor": platform.processor() or None,
                               "cpu_count": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and "cpu_model" not in info:
                info["cpu_model"] = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and "cpu_flags" not in info:
                flags = set(line.split(":", 1)[1].split())
                info["cpu_flags"] = sorted(flags & CPU_FLAGS)
            if "cpu_model" in info and "cpu_flags" in info:
                break
    except OSError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - machine info is best effort
        pass
    return info
