"""``medistill benchmark RUN_DIR_OR_MODEL [--threads N] [--batch 1,8] [--json]``: latency on this CPU."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ..config import ConfigError, option
from ..utils.io import atomic_write_json
from .common import add_config_args, config_from_args, print_json

HELP = ("latency of the student and the teacher in every runtime and precision installed here (PyTorch, ONNX Runtime "
        "fp32 / INT8, OpenVINO fp32 / bf16 / INT8, explain graph), each ratio within one runtime, against the "
        "measured matmul peak")


@dataclasses.dataclass
class BenchmarkOptions:
    """The options of ``medistill benchmark`` (flags, or keys of its ``--config`` YAML)."""

    threads: int | None = option(None, "CPU threads for every runtime; None = all cores")
    batch: str = option("1", "comma-separated batch sizes, e.g. 1,8")
    teacher: str = option("densenet161", "teacher to export and time in the same runtimes and precisions as the "
                                         "student: a timm model name (random weights), a run directory, or 'none'")
    runs: int = option(50, "timed calls per measurement, at least")
    warmup: int = option(10, "untimed calls first")
    min_seconds: float = option(1.0, "time each measurement at least this long")
    int8: bool = option(True, "also time INT8 (--no-int8: skip it)")
    explain: bool = option(True, "also time the explain graph (--no-explain: skip it)")
    runtimes: str | None = option(None, "comma-separated runtimes to time (onnxruntime, openvino); None = every one "
                                        "installed")
    profile: bool = option(True, "also profile ONNX Runtime by operator (--no-profile: skip it)")
    out: str | None = option(None, "also write the results to this JSON file")
    json: bool = option(False, "print the results as JSON")

    def validate(self) -> None:
        _batches(self.batch)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("benchmark", help=HELP, description=HELP + ". Latencies in milliseconds.")
    p.add_argument("target", metavar="RUN_DIR_OR_MODEL", help="a run directory or an exported model.onnx")
    add_config_args(p, BenchmarkOptions)
    p.set_defaults(func=run)


def _batches(text: str) -> list[int]:
    try:
        out = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        out = []
    if not out or any(b < 1 for b in out):
        raise ConfigError(f"--batch {text!r}: expected comma-separated positive integers, e.g. 1,8")
    return out


def run(args: argparse.Namespace) -> int:
    from ..benchmark import benchmark

    o = config_from_args(BenchmarkOptions, args)
    res = benchmark(args.target, threads=o.threads, batches=_batches(o.batch), teacher=o.teacher, runs=o.runs,
                    warmup=o.warmup, min_seconds=o.min_seconds, int8=o.int8, explain=o.explain,
                    runtimes=o.runtimes.split(",") if o.runtimes else None, profile=o.profile,
                    progress=lambda msg: print(f"[benchmark] {msg}", file=sys.stderr))
    if o.out:
        atomic_write_json(o.out, res)
    if o.json:
        print_json(res)
        return 0
    print(f"{res['model']}: {res['params']:,} params, {res['macs'] / 1e6:.0f}M MACs at {res['input']['size']} px; "
          f"{res['threads']} threads; matmul peak {res['matmul_peak_gflops']['peak']:.0f} GFLOP/s -> FLOP limit "
          f"{res['flop_limit_ms']:.2f} ms")
    for batch, lat in res["latency_ms"].items():
        print(f"  {batch}: " + ", ".join(f"{k} {v['median_ms']:.2f} ms (p90 {v['p90_ms']:.2f})" for k, v in lat.items()))
    for k, v in res["ratios"].items():
        if isinstance(v, dict):
            print(f"  {k}: " + ", ".join(f"{rt} {x:.2f}" for rt, x in v.items()))
    for k, v in res["targets"].items():
        print(f"  target {k}: {'met' if v else 'NOT met'} ({res['target_notes'].get(k, '')})")
    return 0
