"""Training speed of knowledge distillation: medistill (cached / online teacher) vs torchdistill's standard KD.

    pip install --no-deps --target /tmp/td-env torchdistill    # torchdistill only; the venv's torch is used
    PYTHONPATH=/tmp/td-env nice -n 10 .venv/bin/python benchmarks/kd_speed.py --teacher RUN_DIR

The same teacher (a trained medistill run, e.g. the paper B DenseNet121), student architecture (kdfmv, same
initial weights), the same image tensors (medistill's dataset and image cache, a fixed slice of brain tumour MRI),
image size, batch size, optimiser (AdamW, constant lr), epochs and threads, timed one after the other in one
process:

- ``torchdistill``: ``DistillationBox`` with ``KDLoss`` (Hinton KD, the teacher runs every step), the loop of its
  image-classification example, plus a validation pass per epoch (medistill validates every epoch too);
- ``medistill online``: ``run_training`` with ``cache_teacher false`` (the teacher runs every step);
- ``medistill offline``: ``run_training`` with the teacher's logits cached once (``augment none``);
- ``plain_aug``: the same student without KD, with light augmentation (the cost KD should stay close to);
- ``medistill_online_aug``: consistent online KD with light augmentation (the teacher sees every view);
- ``medistill_views``: cached consistent KD (FKD, ``--teacher-views``): the teacher's outputs on V augmented views
  per image computed once before epoch 1, each epoch replays one view per image.

Seconds per epoch come from medistill's history (training + validation + checkpoint writing) and, for
torchdistill, from the same span measured around its loop. Results: ``benchmarks/results/kd_speed.json`` / ``.md``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench as B  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", required=True, help="teacher run directory (medistill train)")
    p.add_argument("--student", default="kdfmv")
    p.add_argument("--root", default="/work/shared/data/brain-tumor-mri")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=512, help="images per split (train slice and validation)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", default="runs/bench/kd_speed")
    p.add_argument("--cache-dir", default="runs/bench/image-cache")
    p.add_argument("--order", default="torchdistill,medistill_online,plain_aug,medistill_online_aug,medistill_views",
                   help=f"comma list of torchdistill and {list(MODES)}")
    p.add_argument("--rounds", type=int, default=2, help="rounds of all modes; odd rounds run the reverse order")
    p.add_argument("--summarise-only", action="store_true", help="rewrite the ratios and the .md from the JSON")
    p.add_argument("--prewarm", action=argparse.BooleanOptionalAction, default=True,
                   help="fill the decoded-image cache before timing, so no framework pays JPEG decoding")
    return p.parse_args()


def run_cfg(a: argparse.Namespace, out: Path, cache_teacher: str, *, augment: str = "none", views: int = 0,
            kd: bool = True):
    from medistill.config import DataConfig, DistillConfig, ModelConfig, RunConfig, TrainConfig

    return RunConfig(
        out=str(out),
        data=DataConfig(dataset="folder", root=a.root, image_size=a.image_size, limit=a.limit, augment=augment,
                        cache_dir=a.cache_dir),
        model=ModelConfig(name=a.student, in_chans=1, drop_rate=0.2),
        train=TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, optimizer="adamw", weight_decay=1e-4,
                          scheduler="none", seed=0, device="cpu", threads=a.threads),
        distill=DistillConfig(teacher=a.teacher, kd="kl", alpha=a.alpha, temperature=a.temperature,
                              cache_teacher=cache_teacher, teacher_views=views) if kd else DistillConfig())


MODES = {  # mode -> run_cfg keywords
    "medistill_online": {"cache_teacher": "false"},
    "medistill_offline": {"cache_teacher": "true"},
    "plain_aug": {"cache_teacher": "auto", "augment": "light", "kd": False},
    "medistill_online_aug": {"cache_teacher": "false", "augment": "light"},
    "medistill_views": {"cache_teacher": "auto", "augment": "light", "views": 2},
}


def run_medistill(a: argparse.Namespace, mode: str) -> dict[str, Any]:
    from medistill.train.loop import run_training

    out = Path(a.runs) / mode
    shutil.rmtree(out, ignore_errors=True)
    cfg = run_cfg(a, out, **MODES[mode])
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    run_training(cfg)
    total = time.perf_counter() - t0
    hist = B.history(out)
    info = B.runs.RunDir(out).info()
    return {"epoch_seconds": [r["seconds"] for r in hist], "total_wall_s": total,
            "val_accuracy": [r["val_accuracy"] for r in hist], "distill_mode": info.get("distill_mode"),
            "load_average_before": load0, "load_average_after": os.getloadavg(),
            "command": B.cli_command(cfg, distill=bool(cfg.distill.teacher)),
            "note": "epoch seconds = training + validation + checkpoint writing; total also includes data "
                    "set-up and (offline) the one teacher pass that fills the logit cache"}


class _Tuples:
    """medistill dataset -> (image, class index) pairs, the form torchdistill's loaders expect."""

    def __init__(self, ds: Any):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        item = self.ds[i]
        return item["image"], int(item["target"].argmax())


def run_torchdistill(a: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader, RandomSampler, SequentialSampler
    from torchdistill.core.distillation import get_distillation_box

    from medistill import runs
    from medistill.data import Preprocess, build_dataset
    from medistill.models import create_model, input_config
    from medistill.utils.runtime import seed_everything

    torch.set_num_threads(a.threads)
    cfg = run_cfg(a, Path(a.runs) / "torchdistill", "false")
    seed_everything(0)
    teacher, _ = runs.load_model(a.teacher)
    probe = build_dataset(cfg.data, "train", Preprocess(size=8, channels=1), cache_dir=None)
    student = create_model(a.student, num_classes=len(probe.labels), in_chans=1, image_size=a.image_size,
                           drop_rate=0.2)
    s_in = input_config(student)
    pre = Preprocess(s_in.size, s_in.channels, s_in.mean, s_in.std, "none")
    data = {"train": _Tuples(build_dataset(cfg.data, "train", pre, cache_dir=Path(a.cache_dir))),
            "val": _Tuples(build_dataset(cfg.data, "val", pre, cache_dir=Path(a.cache_dir)))}
    train_config = {  # torchdistill's sample KD config (resnet18_from_resnet34.yaml), as a dict
        "num_epochs": a.epochs,
        "train_data_loader": {"dataset_id": "train", "sampler": {"class_or_func": RandomSampler, "kwargs": {}},
                              "kwargs": {"batch_size": a.batch_size, "num_workers": 0, "drop_last": False}},
        "val_data_loader": {"dataset_id": "val", "sampler": {"class_or_func": SequentialSampler, "kwargs": {}},
                            "kwargs": {"batch_size": a.batch_size * 2, "num_workers": 0}},
        "teacher": {"forward_proc": "forward_batch_only", "sequential": [], "requires_grad": False},
        "student": {"forward_proc": "forward_batch_only", "adaptations": None, "sequential": [],
                    "requires_grad": True, "frozen_modules": []},
        "optimizer": {"key": "AdamW", "kwargs": {"lr": a.lr, "weight_decay": 1e-4}},
        "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {"kd": {
            "criterion": {"key": "KDLoss", "kwargs": {
                "student_module_path": ".", "student_module_io": "output", "teacher_module_path": ".",
                "teacher_module_io": "output", "temperature": a.temperature, "alpha": a.alpha,
                "reduction": "batchmean"}},
            "weight": 1.0}}}},
    }
    device = torch.device("cpu")
    box = get_distillation_box(teacher, student, data, train_config, device, None, False, 1)
    load0 = os.getloadavg()
    t_all = time.perf_counter()
    epoch_s, val_acc = [], []
    for epoch in range(a.epochs):
        t0 = time.perf_counter()
        box.pre_epoch_process(epoch=epoch)
        for sample_batch, targets, supp_dict in box.train_data_loader:
            loss = box.forward_process(sample_batch.to(device), targets.to(device), supp_dict)
            box.post_forward_process(loss=loss)
        box.post_epoch_process()
        box.student_model.eval()  # validation, as in torchdistill's example loop
        correct = n = 0
        with torch.inference_mode():
            for x, y in DataLoader(data["val"], batch_size=a.batch_size * 2):
                correct += int((box.student_model(x).argmax(1) == y).sum())
                n += len(y)
        box.student_model.train()
        val_acc.append(correct / max(n, 1))
        epoch_s.append(time.perf_counter() - t0)
    return {"epoch_seconds": epoch_s, "total_wall_s": time.perf_counter() - t_all, "val_accuracy": val_acc,
            "load_average_before": load0, "load_average_after": os.getloadavg(),
            "torchdistill_version": __import__("torchdistill").__version__,
            "command": "PYTHONPATH=/tmp/td-env nice -n 10 .venv/bin/python benchmarks/kd_speed.py --teacher "
                       f"{a.teacher}",
            "note": "epoch seconds = training + a validation pass (no checkpoint writing)"}


def main() -> None:
    a = parse()
    import torch

    torch.set_num_threads(a.threads)
    if a.summarise_only:
        summarise(B.read_json(B.RESULTS / "kd_speed.json"), a)
        return
    res: dict[str, Any] = {"experiment": "KD training speed: medistill vs torchdistill", "settings": vars(a),
                           "machine": B.machine(), "results": {}}
    if a.prewarm:
        prewarm(a)
    # The machine's speed drifts over minutes, which favours whichever mode runs first; so the modes run in
    # rounds, every other round in the reverse order, and each mode's figures pool all its rounds.
    order = a.order.split(",")
    for rnd in range(a.rounds):
        for mode in order if rnd % 2 == 0 else order[::-1]:
            print(f"[{time.strftime('%H:%M:%S')}] round {rnd + 1}: {mode} ...", flush=True)
            r = run_torchdistill(a) if mode == "torchdistill" else run_medistill(a, mode)
            print(f"    epoch seconds {[round(s, 1) for s in r['epoch_seconds']]}", flush=True)
            agg = res["results"].setdefault(mode, {"rounds": [], "epoch_seconds": []})
            agg["rounds"].append(r)
            agg["epoch_seconds"] += r["epoch_seconds"]
            agg["total_wall_s"] = sum(x["total_wall_s"] for x in agg["rounds"]) / len(agg["rounds"])
            B.write_json(B.RESULTS / "kd_speed.json", res)
    summarise(res, a)


def prewarm(a: argparse.Namespace) -> None:
    """Decode every train / val image of the slice into medistill's image cache once, before any timing."""
    from medistill.data import Preprocess, build_dataset

    cfg = run_cfg(a, Path(a.runs) / "prewarm", "false")
    for split in ("train", "val"):
        ds = build_dataset(cfg.data, split, Preprocess(a.image_size, 1, (0.449,), (0.226,), "none"),
                           cache_dir=Path(a.cache_dir))
        for i in range(len(ds)):
            ds[i]


def summarise(res: dict[str, Any], a: argparse.Namespace) -> None:
    td = res["results"].get("torchdistill")
    if td:
        def last_epoch(r: dict[str, Any]) -> float:  # the last epoch of each round (warm caches), averaged
            rounds = r.get("rounds") or [r]
            return sum(x["epoch_seconds"][-1] for x in rounds) / len(rounds)

        last = last_epoch(td)
        res["ratio_last_epoch_vs_torchdistill"] = {m: last_epoch(r) / last for m, r in res["results"].items()}
        base = sum(td["epoch_seconds"]) / len(td["epoch_seconds"])
        res["ratio_vs_torchdistill"] = {m: (sum(r["epoch_seconds"]) / len(r["epoch_seconds"])) / base
                                        for m, r in res["results"].items()}
    means = {m: sum(r["epoch_seconds"]) / len(r["epoch_seconds"]) for m, r in res["results"].items()}
    if "plain_aug" in means:
        res["ratio_vs_plain_student"] = {m: v / means["plain_aug"] for m, v in means.items()}
    res.setdefault("machine_after", B.machine())
    B.write_json(B.RESULTS / "kd_speed.json", res)
    a = argparse.Namespace(**{**vars(a), **{k: v for k, v in res["settings"].items() if k in ("student", "teacher",
                                                  "limit", "image_size", "batch_size", "epochs", "threads")}})
    lines = [f"### KD training speed, {a.student} from {Path(a.teacher).name}, {a.limit} train images at "
             f"{a.image_size} px, batch {a.batch_size}, {a.epochs} epochs, {a.threads} threads, CPU", "",
             f"Modes run in {len(next(iter(res['results'].values())).get('rounds', [0]))} rounds, every other "
             "round in the reverse order; each row pools its rounds (epochs listed round by round).", "",
             "| framework / mode | seconds per epoch (each epoch) | mean s/epoch | ratio to torchdistill (mean) | "
             "ratio to torchdistill (last epoch) | total wall s (mean per round) |",
             "|---|---|---|---|---|---|"]
    for m, r in res["results"].items():
        mean = sum(r["epoch_seconds"]) / len(r["epoch_seconds"])
        ratio = res.get("ratio_vs_torchdistill", {}).get(m)
        rl = res.get("ratio_last_epoch_vs_torchdistill", {}).get(m)
        lines.append(f"| {m} | {', '.join(f'{s:.1f}' for s in r['epoch_seconds'])} | {mean:.1f} | "
                     f"{'n/a' if ratio is None else f'{ratio:.2f}'} | {'n/a' if rl is None else f'{rl:.2f}'} | "
                     f"{r['total_wall_s']:.1f} |")
    if "ratio_vs_plain_student" in res:
        lines += ["", "Mean seconds per epoch relative to the same student without KD (`plain_aug`, light "
                  "augmentation): " + ", ".join(f"{m} {v:.2f}x" for m, v in res["ratio_vs_plain_student"].items())]
    (B.RESULTS / "kd_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
