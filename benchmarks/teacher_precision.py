"""Teacher forward time in fp32 vs bf16 autocast on this CPU (why ``--teacher-precision auto`` picks bf16 on CPUs
with native bf16, AVX512-BF16 / AMX): batch 32, inference mode, 2 threads, each precision timed twice in turns.

    .venv/bin/python benchmarks/teacher_precision.py
"""

from __future__ import annotations

import time

import timm
import torch


def main() -> None:
    torch.set_num_threads(2)
    for name, size in (("efficientnet_lite0", 192), ("densenet121", 128), ("resnet18", 128)):
        model = timm.create_model(name, num_classes=4, in_chans=1).eval()
        x = torch.randn(32, 1, size, size)
        for mode in ("fp32", "bf16", "fp32", "bf16"):
            ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16")
            with torch.inference_mode(), ctx:
                model(x)  # warm-up
                t = time.perf_counter()
                for _ in range(3):
                    model(x)
                print(f"{name} {size} px {mode}: {(time.perf_counter() - t) / 3 * 1000:.0f} ms per batch of 32",
                      flush=True)


if __name__ == "__main__":
    main()
