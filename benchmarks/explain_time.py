"""Explanation time per image, teacher vs student, at 224 px on this machine's CPU (Grad-CAM and SHAP).

    .venv/bin/python benchmarks/explain_time.py [--threads 2] [--images 4] [--repeats 3] [--out benchmarks/explain_time]

Teacher DenseNet121, students EEEA-Net-C2 (the CXR paper's) and the KD-FMV five-layer CNN, each with 14 outputs
(the NIH ChestX-ray14 labels), 3 channels, 224 px and random weights: the time of a map does not depend on what
the weights learned. Each model explains ``--images`` images (real NIH sample X-rays when ../shared/data has them,
else random inputs), one label per image (its top prediction), through ``medistill.explain.explain_maps``:

- ``gradcam``: pytorch-grad-cam Grad-CAM at ``models.cam_layer``, one forward and one backward pass per batch;
- ``gradientshap``: captum GradientShap (SHAP's expected gradients) with ``--n-samples`` random points per image
  and a background of ``--background`` other images (the KD-FMV paper used shap's GradientExplainer).

Per (model, method): one untimed warm-up call, then ``--repeats`` timed calls over the images; the median time
divided by the number of images is the figure, as wall-clock seconds and as process CPU seconds (all threads;
less sensitive to other work on a shared machine than wall-clock time). Writes ``<out>.json`` (everything, with
the machine) and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench as B  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NIH_SAMPLE = Path(os.environ.get("MEDISTILL_SHARED_DATA", REPO.parent / "shared" / "data")) / "nih-chestxray14-sample"
MODELS = {"densenet121": "teacher", "eeea_net_c2": "student (CXR paper)", "kdfmv": "student (KD-FMV)"}


def inputs(count: int, size: int, seed: int):
    """(count, 3, size, size) normalised inputs: NIH sample X-rays when present, else random."""
    import numpy as np
    import torch

    from medistill.data import images as im

    files = sorted((NIH_SAMPLE / "images").glob("*.png"))[:count] if NIH_SAMPLE.is_dir() else []
    if len(files) < count:
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(count, 3, size, size, generator=gen), "random normal inputs"
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = np.stack([im.preprocess(im.read_image(f), size, 3, mean, std) for f in files])
    return torch.from_numpy(x), f"NIH ChestX-ray14 sample images ({NIH_SAMPLE.name})"


def machine() -> dict:
    """CPU, cores, load average and versions (``_bench.machine``), plus platform and niceness."""
    import platform

    info = B.machine()
    return {**info, "platform": platform.platform(), "nice": os.nice(0),
            "load_average_1_5_15": list(info["load_average_1_5_15"] or [])}


def time_method(model, x, labels, method: str, repeats: int, background, n_samples: int
                ) -> tuple[list[float], list[float]]:
    """Wall-clock and process CPU seconds of ``repeats`` calls explaining all of ``x``."""
    from medistill.explain import explain_maps

    kwargs = {"background": background, "n_samples": n_samples} if method == "gradientshap" else {}
    explain_maps(model, x, labels, method, **kwargs)  # warm-up at the timed shapes: lazy imports, kernels
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        maps = explain_maps(model, x, labels, method, **kwargs)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        assert maps.shape == (len(x), x.shape[-1], x.shape[-1])
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--markdown-only", action="store_true", help="rewrite <out>.md from an existing <out>.json")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2: all cores here)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=4, help="images explained per timed call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-samples", type=int, default=16, help="GradientShap random points per image")
    parser.add_argument("--background", type=int, default=16, help="GradientShap background images")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated; the first is the teacher")
    parser.add_argument("--methods", default="gradcam,gradientshap")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "explain_time"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.markdown_only:
        out.with_suffix(".md").write_text(markdown(json.loads(out.with_suffix(".json").read_text())))
        return 0

    import torch

    from medistill.data.nih import LABELS
    from medistill.models import count_macs, count_params, create_model

    torch.set_num_threads(args.threads)
    x, source = inputs(args.images + args.background, args.size, seed=0)
    x, background = x[:args.images], x[args.images:]
    models, methods = args.models.split(","), args.methods.split(",")
    machine_before = machine()
    rows = []
    for name in models:
        torch.manual_seed(0)
        model = create_model(name, num_classes=len(LABELS), in_chans=3, image_size=args.size, drop_rate=0.0).eval()
        with torch.no_grad():
            labels = model(x).argmax(dim=1).tolist()  # top prediction of each image
        info = {"model": name, "role": MODELS.get(name, "student"), "params": count_params(model),
                "macs": count_macs(model, args.size, 3)}
        for method in methods:
            wall, cpu = time_method(model, x, labels, method, args.repeats, background, args.n_samples)
            per_image, cpu_per_image = statistics.median(wall) / len(x), statistics.median(cpu) / len(x)
            rows.append({**info, "method": method, "seconds_per_image": per_image,
                         "cpu_seconds_per_image": cpu_per_image, "call_seconds": wall, "call_cpu_seconds": cpu,
                         "images_per_call": len(x)})
            print(f"{name:12s} {method:12s} {per_image:8.3f} s/image (CPU {cpu_per_image:.3f} s)", file=sys.stderr)
    teacher = models[0]
    ratios: dict[str, dict[str, float]] = {"wall": {}, "cpu": {}}
    for method in methods:
        t = next(r for r in rows if r["model"] == teacher and r["method"] == method)
        for r in rows:
            if r["model"] != teacher and r["method"] == method:
                key = f"{method}: {teacher} / {r['model']}"
                ratios["wall"][key] = t["seconds_per_image"] / r["seconds_per_image"]
                ratios["cpu"][key] = t["cpu_seconds_per_image"] / r["cpu_seconds_per_image"]
    result = {"what": "explanation time per image on CPU, teacher vs students, random weights",
              "size": args.size, "channels": 3, "num_labels": len(LABELS), "threads": args.threads,
              "images_per_call": args.images, "repeats": args.repeats, "statistic": "median call / images",
              "gradientshap": {"n_samples": args.n_samples, "background": len(background), "stdevs": 0.0},
              "inputs": source, "weights": "random (timing does not depend on learned weights)",
              "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "machine_before": machine_before, "machine_after": machine(),
              "results": rows, "speedup_teacher_over_student": ratios}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(f"written {out.with_suffix('.json')} and {out.with_suffix('.md')}", file=sys.stderr)
    return 0


def markdown(r: dict) -> str:
    m = r["machine_before"]
    lines = [
        "# Explanation time per image: teacher vs student (CPU)",
        "",
        f"Measured by `benchmarks/explain_time.py` at {r['size']} px, {r['channels']} channels, {r['num_labels']} "
        f"labels, one label per image, {r['images_per_call']} images per call, median of {r['repeats']} calls. "
        f"Weights are **random** (the time of a map does not depend on what the weights learned); inputs: "
        f"{r['inputs']}. GradientShap: captum, {r['gradientshap']['n_samples']} samples per image, a background of "
        f"{r['gradientshap']['background']} images.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} with {r['threads']} threads, Python "
        f"{m['python']}, run at nice {m['nice']}; load average (1, 5, 15 min) before "
        f"{fmt_load(m['load_average_1_5_15'])}, after {fmt_load(r['machine_after']['load_average_1_5_15'])}. "
        + ("Other jobs shared the machine (load above this run's threads), so wall-clock times are inflated and "
           "noisy; " if B.other_jobs(m['load_average_1_5_15'][0], r['threads']) else "No other heavy jobs ran when it started; ")
        + "CPU seconds and the ratios between models measured in the same run are the more reliable figures.",
        "",
        "| model | role | params | MACs | method | wall s / image | CPU s / image |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    for row in r["results"]:
        lines.append(f"| {row['model']} | {row['role']} | {row['params'] / 1e6:.2f} M | {row['macs'] / 1e9:.2f} G | "
                     f"{row['method']} | {row['seconds_per_image']:.3f} | {row['cpu_seconds_per_image']:.3f} |")
    macs = {row["model"]: row["macs"] for row in r["results"]}
    lines += ["", "Teacher time / student time (same method), wall-clock and CPU, beside the ratio of their MACs:", ""]
    for k, v in r["speedup_teacher_over_student"]["wall"].items():
        teacher, student = k.split(": ", 1)[1].split(" / ")
        lines.append(f"- {k}: {v:.1f}x wall, {r['speedup_teacher_over_student']['cpu'][k]:.1f}x CPU "
                     f"(MACs {macs[teacher] / macs[student]:.1f}x)")
    lines += ["", "KD-FMV (Jiang et al. 2025) reports that distillation cuts SHAP time about four-fold. Time does not "
              "follow MACs: on a CPU depthwise convolutions (EEEA-Net-C2) are typically bound by memory traffic, so it "
              "gains well under its MACs ratio, while the five plain convolutions of the KD-FMV student come much closer "
              "to theirs.", ""]
    return "\n".join(lines)


def fmt_load(load) -> str:
    return "n/a" if not load else ", ".join(f"{v:.1f}" for v in load)


if __name__ == "__main__":
    sys.exit(main())
