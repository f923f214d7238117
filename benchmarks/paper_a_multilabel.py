"""Paper A (multi-label chest X-ray KD) at small scale: phantom and the 621-image NIH sample, on CPU.

    nice -n 10 .venv/bin/python benchmarks/paper_a_multilabel.py --dataset phantom
    nice -n 10 .venv/bin/python benchmarks/paper_a_multilabel.py --dataset nih

The paper's pipeline shrunk to fit a shared 2-core CPU: a DenseNet121 CNN teacher and a DeiT-Tiny transformer
teacher (img_size = the input size), an EEEA-Net-C2 student distilled from the DenseNet121 teacher (per-label
binary KD, focal hard loss) and the same student without KD, 1 seed, a few epochs, 64 px. Each run is evaluated
on the test split: macro AUC, per-label AUC, params, MACs. The full-scale setups are the YAML files in configs/.
Runs are resumable (a finished, evaluated run is skipped). Results: ``benchmarks/results/paper_a_<dataset>.json``
and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench as B  # noqa: E402

ROOTS = {"phantom": "/tmp/phantom", "nih": "/work/shared/data/nih-chestxray14-sample"}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="phantom", choices=tuple(ROOTS))
    p.add_argument("--root", default=None)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=128, help="cap on images per split")
    p.add_argument("--teacher-epochs", type=int, default=2)
    p.add_argument("--student-epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", default="runs/bench/paper_a")
    p.add_argument("--cache-dir", default="runs/bench/image-cache")
    p.add_argument("--models", default="teacher_densenet121,teacher_deit_tiny,student_kd,student_nokd")
    return p.parse_args()


def cfg_for(a: argparse.Namespace, runs_dir: Path, name: str):
    from medistill.config import DataConfig, DistillConfig, ModelConfig, RunConfig, TrainConfig

    model = {"teacher_densenet121": "densenet121", "teacher_deit_tiny": "deit_tiny_patch16_224"}.get(name, "eeea_net_c2")
    epochs = a.teacher_epochs if name.startswith("teacher") else a.student_epochs
    cfg = RunConfig(
        out=str(runs_dir / name),
        data=DataConfig(dataset=a.dataset, root=a.root or ROOTS[a.dataset], image_size=a.image_size, limit=a.limit,
                        augment="none", cache_dir=a.cache_dir),
        model=ModelConfig(name=model, in_chans=1, drop_rate=0.1),
        train=TrainConfig(epochs=epochs, batch_size=a.batch_size, lr=a.lr, optimizer="adamw", weight_decay=1e-4,
                          scheduler="cosine", loss="focal", seed=0, device="cpu", threads=a.threads))
    if name == "student_kd":
        cfg.distill = DistillConfig(teacher=str(runs_dir / "teacher_densenet121"), kd="bce", alpha=0.5,
                                    temperature=4.0, cache_teacher="true")
    return cfg


def main() -> None:
    a = parse()
    import torch

    torch.set_num_threads(a.threads)
    runs_dir = Path(a.runs) / f"{a.dataset}_{a.image_size}px_l{a.limit}"
    res_json = B.RESULTS / f"paper_a_{a.dataset}.json"
    out: dict[str, Any] = B.read_json(res_json) if res_json.is_file() else {}
    out.update({"experiment": "paper A (multi-label KD), small scale", "dataset": a.dataset, "settings": vars(a),
                "command": f"nice -n 10 .venv/bin/python benchmarks/paper_a_multilabel.py --dataset {a.dataset}",
                "machine": B.machine()})
    out.setdefault("runs", {})
    for name in a.models.split(","):
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        r = B.train_and_evaluate(cfg_for(a, runs_dir, name))
        keep = ("command", "model", "macro_auc", "auc_ci95", "micro_auc", "per_label_auc", "macro_auc_labels",
                "params", "macs", "latency_ms", "num_images", "train_wall_s", "epoch_seconds")
        if not r.get("skipped") or name not in out["runs"]:
            out["runs"][name] = {k: r.get(k) for k in keep}
        print(f"    macro AUC {r.get('macro_auc')}", flush=True)
        out["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        B.write_json(res_json, out)
        (B.RESULTS / f"paper_a_{a.dataset}.md").write_text(markdown(out, a))


def markdown(out: dict[str, Any], a: argparse.Namespace) -> str:
    runs = out["runs"]
    labels: list[str] = []
    for r in runs.values():
        for lab in (r.get("per_label_auc") or {}):
            if lab not in labels:
                labels.append(lab)
    lines = [f"### Paper A pipeline on {a.dataset}, {a.image_size} px, limit {a.limit} per split, 1 seed, "
             f"teachers {a.teacher_epochs} / students {a.student_epochs} epochs, CPU", "",
             f"Reproduce: `{out['command']}`", "",
             "| run | model | test macro AUC (95% CI) | params | MACs | " + " | ".join(labels) + " |",
             "|---|---|---|---|---|" + "---|" * len(labels)]
    for name, r in runs.items():
        ci = r.get("auc_ci95") or [None, None]
        auc = "n/a" if r.get("macro_auc") is None else f"{r['macro_auc']:.3f}"
        if ci[0] is not None:
            auc += f" ({ci[0]:.3f}-{ci[1]:.3f})"
        per = r.get("per_label_auc") or {}
        cells = ["n/a" if per.get(lab) is None or per[lab] != per[lab] else f"{per[lab]:.2f}" for lab in labels]
        lines.append(f"| {name} | {r['model']} | {auc} | {B.si(r['params'])} | {B.si(r['macs'])} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
