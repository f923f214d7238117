"""Memory format and precision on this CPU: what a teacher's forward and a student's training step cost.

    nice -n 10 .venv/bin/python benchmarks/cpu_speed.py --threads 2

Why medistill trains students in NHWC (``train.channels_last``, default true) and runs teachers in NHWC with bf16
autocast where the CPU computes bf16 natively (``distill.teacher_precision auto``): this measures both choices
against the alternatives, on the models medistill ships as teachers and students, in alternating rounds (each
round times every variant once, in a rotated order) so that a change in the machine's load hits every variant.

- teacher forward (``torch.inference_mode``, batch 32, 1-channel input): NCHW / NHWC x fp32 / bf16 autocast;
- student training step (forward, cross-entropy, backward, AdamW step, batch 32): NCHW / NHWC.

Results: ``benchmarks/results/cpu_speed.json`` / ``.md`` (median over rounds of each variant's best-of-``--reps``
seconds per batch, and its ratio to NCHW fp32).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench as B  # noqa: E402

TEACHERS = "tf_efficientnet_lite0:192,tf_efficientnet_lite0:128,densenet121:128,densenet121:64,resnet18:128"
STUDENTS = "kdfmv:128,eeea_net_c2:128,resnet10t:96"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teachers", default=TEACHERS, help="model:px pairs timed as teachers (inference)")
    p.add_argument("--students", default=STUDENTS, help="model:px pairs timed as students (training steps)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=3, help="timed calls per variant and round (the best is kept)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results", default=str(Path(__file__).resolve().parent / "results" / "cpu_speed.json"))
    return p.parse_args()


def best_of(fn: Callable[[], Any], reps: int) -> float:
    fn()  # warm-up: oneDNN picks its kernels on the first call of a shape
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def rounds(variants: dict[str, Callable[[], Any]], n: int, reps: int) -> dict[str, list[float]]:
    names = list(variants)
    out: dict[str, list[float]] = {k: [] for k in names}
    for r in range(n):
        for k in names[r % len(names):] + names[:r % len(names)]:
            out[k].append(best_of(variants[k], reps))
    return out


def teacher_variants(name: str, size: int, batch: int) -> dict[str, Callable[[], Any]]:
    import torch

    from medistill.models import create_model

    nchw = create_model(name, num_classes=4, in_chans=1, image_size=size).eval()
    nhwc = create_model(name, num_classes=4, in_chans=1, image_size=size).eval()
    nhwc.load_state_dict(nchw.state_dict())
    nhwc = nhwc.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 1, size, size)
    xc = x.contiguous(memory_format=torch.channels_last)

    def run(model, inp, bf16: bool) -> Callable[[], Any]:
        def f():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return model(inp)
        return f

    return {"nchw_fp32": run(nchw, x, False), "nchw_bf16": run(nchw, x, True),
            "nhwc_fp32": run(nhwc, xc, False), "nhwc_bf16": run(nhwc, xc, True)}


def student_variants(name: str, size: int, batch: int) -> dict[str, Callable[[], Any]]:
    import torch

    from medistill.models import create_model

    def step_fn(channels_last: bool) -> Callable[[], Any]:
        torch.manual_seed(0)
        model = create_model(name, num_classes=4, in_chans=1, image_size=size).train()
        x = torch.randn(batch, 1, size, size)
        y = torch.randint(0, 4, (batch,))
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), 1e-3)

        def f():
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return f

    return {"nchw": step_fn(False), "nhwc": step_fn(True)}


def summarise(times: dict[str, list[float]], base: str) -> dict[str, Any]:
    med = {k: statistics.median(v) for k, v in times.items()}
    return {k: {"seconds": med[k], "per_round": v, "ratio": med[k] / med[base]} for k, v in times.items()}


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = ["# Memory format and precision on CPU", "",
             f"Machine: {m.get('cpu', '')}, {res['threads']} threads, {m.get('shared', '')}; batch {res['batch_size']}, "
             f"{res['rounds']} alternating rounds, best of {res['reps']} calls per round, median over rounds.", "",
             f"Reproduce: `{res['command']}`", "", "## Teacher forward (inference_mode), seconds per batch", "",
             "| teacher | px | NCHW fp32 | NCHW bf16 | NHWC fp32 | NHWC bf16 |", "|---|---|---|---|---|---|"]
    for key, r in res["teachers"].items():
        name, px = key.rsplit(":", 1)
        cells = [f"{r[v]['seconds']:.3f} ({r[v]['ratio']:.2f}x)" for v in ("nchw_fp32", "nchw_bf16", "nhwc_fp32",
                                                                          "nhwc_bf16")]
        lines.append(f"| {name} | {px} | " + " | ".join(cells) + " |")
    lines += ["", "## Student training step (forward, loss, backward, AdamW), seconds per batch", "",
              "| student | px | NCHW | NHWC |", "|---|---|---|---|"]
    for key, r in res["students"].items():
        name, px = key.rsplit(":", 1)
        lines.append(f"| {name} | {px} | {r['nchw']['seconds']:.3f} | {r['nhwc']['seconds']:.3f} "
                     f"({r['nhwc']['ratio']:.2f}x) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    a = parse()
    import os

    import torch

    torch.set_num_threads(a.threads)
    load0 = os.getloadavg()
    res: dict[str, Any] = {"threads": a.threads, "batch_size": a.batch_size, "rounds": a.rounds, "reps": a.reps,
                           "command": "nice -n 10 .venv/bin/python benchmarks/cpu_speed.py --threads "
                                      f"{a.threads} --rounds {a.rounds} --reps {a.reps}",
                           "teachers": {}, "students": {}}
    for pair in a.teachers.split(","):
        name, px = pair.split(":")
        res["teachers"][pair] = summarise(rounds(teacher_variants(name, int(px), a.batch_size), a.rounds, a.reps),
                                          "nchw_fp32")
        print(pair, {k: round(v["ratio"], 2) for k, v in res["teachers"][pair].items()}, flush=True)
    for pair in a.students.split(","):
        name, px = pair.split(":")
        res["students"][pair] = summarise(rounds(student_variants(name, int(px), a.batch_size), a.rounds, a.reps),
                                          "nchw")
        print(pair, {k: round(v["ratio"], 2) for k, v in res["students"][pair].items()}, flush=True)
    res["machine"] = {**B.machine(), "load_average_at_start": load0}
    out = Path(a.results)
    B.write_json(out, res)
    out.with_suffix(".md").write_text(markdown(res))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
