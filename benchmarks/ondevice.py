"""On-device benchmark of the papers' students on this machine's CPU: EEEA-Net-C2 (DenseNet161 teacher) and kdfmv
(DenseNet121 teacher) at 224 px, every runtime and precision installed, every ratio within one runtime.

    .venv/bin/python benchmarks/ondevice.py [--models eeea_net_c2,kdfmv] [--threads 2] [--batch 1,8] [--runs 100]
                                            [--out benchmarks/ondevice]

For each student: a run directory (14 NIH ChestX-ray14 labels, 3 channels, 224 px; random weights: latency does not
depend on the weights) whose data config points at the NIH sample in ../shared/data (INT8 calibration images come
from its training split; random inputs when it is absent), then ``medistill.benchmark.benchmark`` on it: PyTorch
eager fp32, ONNX Runtime fp32 / INT8, OpenVINO fp32 / bf16 / INT8 (with ``medistill[openvino]``; bf16 where the CPU
has it), the explain graph, and the teacher (random weights) exported, quantized and timed in the same runtimes and
precisions, next to the measured matmul peak. EEEA-Net-C2 is timed at ``--batch``, kdfmv at batch 1; the teachers
at batch 1. Writes ``<out>.json`` (everything, with the machine: CPU model and its VNNI / bf16 flags, cores,
threads, load before and after) and ``<out>.md`` (tables, the issue's targets, and which operators ran in INT8 and
which in fp32). The targets are benchmark figures, not timed tests. INT8 accuracy is ``int8_accuracy.py``'s.

Run it on a quiet machine: every job sharing the CPU inflates and scatters the timings (the file says whether other
jobs ran: 1-minute load average when the script started, and per model before and after).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench as B  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NIH_SAMPLE = Path(os.environ.get("MEDISTILL_SHARED_DATA", REPO.parent / "shared" / "data")) / "nih-chestxray14-sample"
#: student -> (teacher of its paper, batches timed by default)
MODELS = {"eeea_net_c2": ("densenet161", "1,8"), "kdfmv": ("densenet121", "1")}
NAMES = {"torch": "PyTorch eager", "ort": "ONNX Runtime", "openvino": "OpenVINO"}


def build_run(path: Path, name: str, size: int) -> Path:
    import torch

    from medistill.config import DataConfig, ModelConfig, RunConfig
    from medistill.data.nih import LABELS
    from medistill.models import create_model
    from medistill.runs import RunDir, save_model

    data = DataConfig(dataset="nih", root=str(NIH_SAMPLE), image_size=size, cache=False) if NIH_SAMPLE.is_dir() \
        else DataConfig(image_size=size)
    cfg = RunConfig(out=str(path), data=data, model=ModelConfig(name=name))
    torch.manual_seed(0)
    model = create_model(name, num_classes=len(LABELS), in_chans=3, image_size=size, drop_rate=0.0).eval()
    save_model(RunDir.create(path, cfg, kind="train"), model, labels=LABELS, task="multilabel")
    return path


def label(key: str) -> str:
    """``ort_int8`` -> ``ONNX Runtime INT8``."""
    prefix, _, rest = key.partition("_")
    return f"{NAMES.get(prefix, prefix)} {rest.replace('int8', 'INT8')}"


def fmt_x(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}x"


def model_markdown(res: dict[str, Any]) -> list[str]:
    r, rb, t = res["ratios"], res.get("ratios_best", {}), res["targets"]
    teacher = res.get("teacher")
    lines = [f"## {res['model']}", "",
             f"`{res['model']}`: {res['params']:,} parameters, {res['macs'] / 1e6:.0f}M MACs at {res['input']['size']} "
             f"px ({res['input']['channels']} channels, {res['labels']} labels)"
             + (f"; teacher `{teacher['model']}`: {teacher['params']:,} parameters, {teacher['macs'] / 1e9:.2f}G MACs "
                f"({teacher['macs'] / res['macs']:.1f}x the student's), exported to ONNX and INT8 like the student."
                if teacher else "."),
             f"FLOP limit: {res['flop_limit_ms']:.2f} ms ({res['flops'] / 1e6:.0f} MFLOP at the measured "
             f"{res['matmul_peak_gflops']['peak']:.0f} GFLOP/s). Load per CPU before / after: "
             f"{res['machine_load_before'].get('load_per_cpu')} / {res['machine_load_after'].get('load_per_cpu')}.", ""]
    for batch, lat in res["latency_ms"].items():
        b = batch.split("_")[1]
        keys = [k for k in lat if not k.startswith("teacher_")]
        with_teacher = any(f"teacher_{k}" in lat for k in keys)
        head = "| runtime, precision | median ms | p90 ms | fastest ms | runs |"
        sep = "|---|---|---|---|---|"
        if with_teacher:
            head += " teacher median ms | teacher / student (same runtime) |"
            sep += "---|---|"
        lines += [f"Batch {b}:", "", head, sep]
        for k in keys:
            v = lat[k]
            row = f"| {label(k)} | {v['median_ms']:.2f} | {v['p90_ms']:.2f} | {v['min_ms']:.2f} | {v['runs']} |"
            if with_teacher:
                tv = lat.get(f"teacher_{k}")
                row += (f" {tv['median_ms']:.1f} | {tv['median_ms'] / v['median_ms']:.1f}x |" if tv else " | |")
            lines.append(row)
        lines.append("")
    lines += ["Targets (batch 1), judged on the medians; the last column repeats each ratio from the fastest call of "
              "each (the least disturbed by other jobs on a shared machine):", "",
              "| target | compared | measured (medians) | met | from fastest calls |", "|---|---|---|---|---|"]
    notes = res.get("target_notes", {})
    for key, met in t.items():
        if key == "teacher_at_least_30x_slower":
            group, sub = "teacher_vs_student", "ort_fp32"
        elif "flop_limit" in key:
            group, sub = "fp32_vs_flop_limit", key.split("_fp32")[0]
        elif "int8_at_least" in key:
            group, sub = "int8_speedup", key.split("_int8")[0]
        else:
            group, sub = "explain_vs_plain", key.split("_explain")[0]
        lines.append(f"| {key} | {notes.get(key, '')} | {fmt_x(r.get(group, {}).get(sub))} | "
                     f"{'yes' if met else '**no**'} | {fmt_x(rb.get(group, {}).get(sub))} |")
    lines += ["", "Other ratios, each within one runtime (medians): "
              + "; ".join(f"{group.replace('_', ' ')}: " + ", ".join(f"{label(k) if '_' in k else NAMES.get(k, k)} "
                                                                     f"{v:.2f}x" for k, v in r[group].items())
                          for group in ("int8_speedup", "bf16_speedup", "teacher_vs_student") if r.get(group)) + ".",
              ""]
    ops = res.get("int8_ops", {}).get("student")
    if ops:
        lines.append("INT8 graph as ONNX Runtime runs it: integer kernels "
                     + ", ".join(f"{op} x{n}" for op, n in ops["integer"].items()) + "; in fp32: "
                     + (", ".join(f"{op} x{n}" for op, n in ops["float"].items()) or "nothing") + ".")
        lines.append("")
    prof = res.get("profile_ms", {})
    if prof:
        cats = sorted({c for p in prof.values() for c in p}, key=lambda c: -max(p.get(c, 0.0) for p in prof.values()))
        lines += ["Where ONNX Runtime spends a batch-1 call (its profiler, ms per call, at the benchmark's threads "
                  "and at 1 thread: what does not drop with more threads ran in one task; the profiler's own cost "
                  "inflates all alike):", "",
                  "| operator | " + " | ".join(f"{label(k.split('@')[0])}, {k.split('@')[1]} thr." if "@" in k
                                                else label(k) for k in prof) + " |",
                  "|---|" + "---|" * len(prof)]
        for c in cats[:12]:
            lines.append(f"| {c} | " + " | ".join(f"{p[c]:.3f}" if c in p else "" for p in prof.values()) + " |")
        lines.append("")
    if res.get("notes"):
        lines += ["Notes:", *[f"- {n}" for n in res["notes"]], ""]
    return lines


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    first = next(iter(doc["models"].values()))
    lines = [
        "# On-device benchmark: students and teachers in one runtime at a time (CPU)", "",
        f"Written by `benchmarks/ondevice.py` on {doc['date']}: `{doc['command']}`. Machine: "
        f"{m.get('cpu_model', '?')}, {m.get('cpu_count')} logical CPUs, flags {', '.join(m.get('cpu_flags', []))}; "
        f"{first['threads']} threads for every runtime. 1-minute load average when the script started: "
        f"{doc['load_average_at_start'][0]:.2f}"
        + (" - **the machine was shared with other jobs while this ran**, so latencies are pessimistic and noisy, "
           "and ratios between runtimes are only roughly those of a quiet machine." if doc["shared_machine"] else "."),
        "", "Runtimes: " + ", ".join(f"{v['name']} {v['version']} ({', '.join(v['precisions'])})"
                                     for v in first["runtimes"].values())
        + f"; PyTorch {first['versions'].get('torch')} eager as the reference. Everything is timed in turns (per "
          "round: 5 untimed calls, then a block of 25 timed ones each; the teachers 1 call), so that all share the "
          "machine's load alike. Every ratio compares one runtime and precision with itself.", "",
    ]
    for res in doc["models"].values():
        lines += model_markdown(res)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    import datetime as dt

    from medistill.benchmark import benchmark
    from medistill.utils.io import atomic_write_json, atomic_write_text
    from medistill.utils.runtime import machine_info

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"students, of {list(MODELS)}")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch", default=None, help="batches for every model (default: 1,8 for eeea_net_c2, 1 else)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--no-teacher", action="store_true", help="skip the teachers")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "ondevice"), help="output path without extension")
    args = ap.parse_args(argv)
    # Load of other jobs: read before this script does any work (its own export and matmul probe raise the
    # 1-minute average by itself, so the figure inside benchmark() cannot tell a shared machine from a busy one).
    load_at_start = list(os.getloadavg())
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # medistill's progress; of the libraries (onnxruntime.quantization logs every bias copy on the root logger)
    # only errors
    logging.getLogger().handlers[0].addFilter(lambda r: r.name.startswith("medistill") or r.levelno >= logging.ERROR)
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        ap.error(f"--models {unknown}: expected some of {list(MODELS)}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="medistill-ondevice-") as tmp:
        for name in models:
            teacher, batches = MODELS[name]
            run = build_run(Path(tmp) / name, name, args.size)
            res = benchmark(run, threads=args.threads, batches=[int(b) for b in (args.batch or batches).split(",")],
                            teacher=None if args.no_teacher else teacher, runs=args.runs, warmup=args.warmup,
                            min_seconds=args.min_seconds, calibration_images=64,
                            progress=lambda m, n=name: print(f"[ondevice {n}] {m}", file=sys.stderr))
            res["source"] = f"{name} run directory built by benchmarks/ondevice.py (random weights)"
            results[name] = res
    doc = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "command": B.niced(".venv/bin/python benchmarks/ondevice.py"
                              + "".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv))),
           "machine": machine_info(), "load_average_at_start": load_at_start,
           "load_average_at_end": list(os.getloadavg()),
           "shared_machine": B.other_jobs(load_at_start[0], own_threads=0), "models": results}
    atomic_write_json(args.out + ".json", doc)
    atomic_write_text(args.out + ".md", markdown(doc))
    print(json.dumps({n: {"ratios": r["ratios"], "targets": r["targets"]} for n, r in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
