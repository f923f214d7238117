"""On-device benchmark of the paper's student: EEEA-Net-C2 at 224 px, batch 1, on this machine's CPU.

    .venv/bin/python benchmarks/ondevice.py [--threads 2] [--batch 1,8] [--runs 100] [--out benchmarks/ondevice]

Builds a run directory with EEEA-Net-C2 (14 NIH ChestX-ray14 labels, 3 channels, 224 px; random weights: latency
does not depend on the weights) whose data config points at the NIH sample in ../shared/data (INT8 calibration
images come from its training split; random inputs when it is absent), then runs ``medistill.benchmark.benchmark``
on it: PyTorch eager fp32, ONNX Runtime fp32 / INT8, the explain graph, and a DenseNet161 teacher in PyTorch
(random weights), next to the measured matmul peak. Writes ``<out>.json`` (everything) and ``<out>.md`` (a table and
whether the issue's targets are met). The targets are benchmark figures, not timed tests.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench as B  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NIH_SAMPLE = Path(os.environ.get("MEDISTILL_SHARED_DATA", REPO.parent / "shared" / "data")) / "nih-chestxray14-sample"


def build_run(path: Path, size: int) -> Path:
    import torch

    from medistill.config import DataConfig, ModelConfig, RunConfig
    from medistill.data.nih import LABELS
    from medistill.models import create_model
    from medistill.runs import RunDir, save_model

    data = DataConfig(dataset="nih", root=str(NIH_SAMPLE), image_size=size, cache=False) if NIH_SAMPLE.is_dir() \
        else DataConfig(image_size=size)
    cfg = RunConfig(out=str(path), data=data, model=ModelConfig(name="eeea_net_c2"))
    torch.manual_seed(0)
    model = create_model("eeea_net_c2", num_classes=len(LABELS), in_chans=3, image_size=size, drop_rate=0.0).eval()
    save_model(RunDir.create(path, cfg, kind="train"), model, labels=LABELS, task="multilabel")
    return path


def markdown(res: dict) -> str:
    b1 = res["latency_ms"].get("batch_1", {})
    r, t = res["ratios"], res["targets"]
    lines = [
        "# On-device benchmark: EEEA-Net-C2 vs DenseNet161 (CPU)",
        "",
        f"Written by `benchmarks/ondevice.py` on {res['date']}. Machine: {res['machine'].get('cpu_model', '?')}, "
        f"{res['machine'].get('cpu_count')} logical CPUs, {res['threads']} threads for every runtime. 1-minute load "
        f"average when the script started: {res.get('load_average_at_start', res['load_average_before'])[0]:.2f}"
        + (" - **the machine was shared with other jobs while this ran**, so latencies are pessimistic and noisy."
           if res.get("shared_machine") else "."),
        "",
        f"Student: `{res['model']}`, {res['params']:,} parameters, {res['macs'] / 1e6:.0f}M MACs at "
        f"{res['input']['size']} px ({res['input']['channels']} channels, {res['labels']} labels). Teacher: "
        f"`{res['teacher']['model']}`, {res['teacher']['params']:,} parameters, {res['teacher']['macs'] / 1e9:.2f}G MACs."
        if "teacher" in res else "",
        f"Measured float32 matmul peak: {res['matmul_peak_gflops']['peak']:.0f} GFLOP/s (numpy "
        f"{res['matmul_peak_gflops']['numpy']:.0f}, torch {res['matmul_peak_gflops']['torch']:.0f}), so the "
        f"student's FLOP limit is {res['flop_limit_ms']:.2f} ms.",
        "",
        "Runtimes are timed in turns (per round: 5 untimed calls, then a block of 25 timed ones each; the teacher 1 call) "
        "so that they share the machine's load alike.",
        "",
        "| batch | runtime | median ms | p90 ms | fastest ms | runs |",
        "|---|---|---|---|---|---|",
    ]
    for batch, lat in res["latency_ms"].items():
        for k, v in lat.items():
            lines.append(f"| {batch.split('_')[1]} | {k} | {v['median_ms']:.2f} | {v['p90_ms']:.2f} | {v['min_ms']:.2f} "
                         f"| {v['runs']} |")
    rb = res.get("ratios_best", {})
    lines += ["", "File sizes: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in res["file_bytes"].items()), "",
              "## Targets (batch 1)", "",
              "Judged on the medians; the last column repeats each ratio from the fastest call of every runtime "
              "(the least disturbed by other jobs on a shared machine).", "",
              "| target | measured (medians) | met | from fastest calls |", "|---|---|---|---|"]

    def best(key: str, fmt: str) -> str:
        return format(rb[key], fmt) + "x" if key in rb else "n/a"

    if "ort_fp32_vs_flop_limit" in r:
        lines.append(f"| ORT fp32 within 3x of the FLOP limit | {b1['ort_fp32']['median_ms']:.2f} ms = "
                     f"{r['ort_fp32_vs_flop_limit']:.2f}x of {res['flop_limit_ms']:.2f} ms | "
                     f"{'yes' if t['ort_fp32_within_3x_flop_limit'] else '**no**'} | "
                     f"{b1['ort_fp32']['min_ms']:.2f} ms = {best('ort_fp32_vs_flop_limit', '.2f')} |")
    if "teacher_vs_ort_fp32" in r:
        lines.append(f"| at least 30x faster than the teacher in PyTorch | {r['teacher_vs_ort_fp32']:.1f}x | "
                     f"{'yes' if t['teacher_at_least_30x_slower'] else '**no**'} | {best('teacher_vs_ort_fp32', '.1f')} |")
    if "explain_vs_plain" in r:
        lines.append(f"| explain graph at most 1.5x the plain graph | {r['explain_vs_plain']:.2f}x | "
                     f"{'yes' if t['explain_within_1_5x'] else '**no**'} | {best('explain_vs_plain', '.2f')} |")
    if "int8_speedup" in r:
        lines += ["", f"INT8 vs fp32 (ONNX Runtime, batch 1): {r['int8_speedup']:.2f}x "
                  + ("(INT8 is **slower** than fp32 on this CPU)" if r["int8_slower"] else "faster") + "."]
    if res.get("notes"):
        lines += ["", "Notes:", *[f"- {n}" for n in res["notes"]]]
    return "\n".join(line for line in lines if line is not None) + "\n"


def main(argv: list[str] | None = None) -> int:
    import datetime as dt

    from medistill.benchmark import benchmark
    from medistill.utils.io import atomic_write_json, atomic_write_text

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--teacher", default="densenet161")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "ondevice"), help="output path without extension")
    args = ap.parse_args(argv)
    # Load of other jobs: read before this script does any work (its own export and matmul probe raise the
    # 1-minute average by itself, so the figure inside benchmark() cannot tell a shared machine from a busy one).
    load_at_start = list(os.getloadavg())
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("onnxscript", "onnx_ir", "torch"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="medistill-ondevice-") as tmp:
        run = build_run(Path(tmp) / "eeea", args.size)
        res = benchmark(run, threads=args.threads, batches=[int(b) for b in args.batch.split(",")],
                        teacher=args.teacher, runs=args.runs, warmup=args.warmup, min_seconds=args.min_seconds,
                        calibration_images=64, progress=lambda m: print(f"[ondevice] {m}", file=sys.stderr))
    res["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    res["source"] = "EEEA-Net-C2 run directory built by benchmarks/ondevice.py (random weights)"
    res["load_average_at_start"] = load_at_start
    res["shared_machine"] = B.other_jobs(load_at_start[0], own_threads=0)
    atomic_write_json(args.out + ".json", res)
    atomic_write_text(args.out + ".md", markdown(res))
    print(json.dumps({"ratios": res["ratios"], "ratios_best": res["ratios_best"], "targets": res["targets"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
