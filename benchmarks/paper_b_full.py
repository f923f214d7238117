"""Paper B (KD-FMV) at full scale on the real MRI sets: does distillation pay?

    nice -n 10 .venv/bin/python benchmarks/paper_b_full.py --dataset brain-tumor-mri
    nice -n 10 .venv/bin/python benchmarks/paper_b_full.py --dataset alzheimer-mri

Every image (train / validation from ``Training/`` with a seeded stratified 10 % validation share, test =
``Testing/``). Steps, each a medistill run directory under ``--runs`` (a finished and evaluated run is skipped,
a half-done one resumed, so re-running continues where it stopped):

1. teacher: EfficientNet-Lite0 with its ImageNet weights (the strongest teacher that installs offline), fine-tuned
   at ``--teacher-size`` px; its validation curve is plotted (``paper_b_full_<dataset>_teacher.png``);
2. students at ``--image-size`` px (the teacher saw more pixels than the student: the reason to distil), each
   with and without KD under the same augmentation and schedule; KD is cached consistent KD (FKD): the teacher's
   outputs on ``--views`` augmented views per image are computed once, shared by every KD run, and each epoch
   replays one view per image;
3. alpha / T chosen on the *validation* split from a small grid on seed 0 of the first student; then every
   student at every seed, KD and no-KD;
4. every run evaluated on the test split; KD minus no-KD with a paired bootstrap CI (``medistill compare``).

Results: ``benchmarks/results/paper_b_full.json`` (one object per dataset) and ``paper_b_full.md``, rewritten
after each run, so a partial benchmark still leaves its numbers.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench as B  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GRID = "0.5:4,0.1:1"  # alpha:T points: KD-FMV's form, and near pure function matching at T = 1


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="brain-tumor-mri", choices=("brain-tumor-mri", "alzheimer-mri"))
    p.add_argument("--data-root", default=None, help="dataset folder (default ../shared/data/<dataset>)")
    p.add_argument("--teacher-size", type=int, default=192)
    p.add_argument("--teacher-epochs", type=int, default=6)
    p.add_argument("--teacher-recipe", default=None, choices=("finetune",),
                   help="fine-tune the teacher with a named recipe (label smoothing, AdamW, cosine, EMA of weights); "
                        "default: the plain settings the brain tumour teacher was trained with")
    p.add_argument("--group-similar", type=float, default=None,
                   help="draw the validation share by groups of near-identical images (data.group_similar, e.g. "
                        "0.98: the slices of one scan), so it holds unseen patients; give it its own --runs")
    p.add_argument("--split-seed", type=int, default=0,
                   help="data.split_seed: which patients the drawn validation (and test) shares hold; another draw "
                        "is another experiment, so give it its own --runs")
    p.add_argument("--image-size", type=int, default=128, help="the students' input size")
    p.add_argument("--students", default="kdfmv,eeea_net_c2")
    p.add_argument("--student-epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--views", type=int, default=4, help="augmented views per image cached for KD (FKD)")
    p.add_argument("--mixup", type=float, default=0.0,
                   help="mixup Beta(a, a) for every student, KD and no-KD alike (KD: function matching on cached "
                        "mixed views); 0 = off")
    p.add_argument("--cutmix", type=float, default=0.0, help="CutMix Beta(a, a), as --mixup")
    p.add_argument("--mix-prob", type=float, default=1.0, help="share of images (views) mixed")
    p.add_argument("--channels-last", default="true", choices=("true", "false"),
                   help="students in NHWC (medistill's default since 2026-11-30; the runs before it were NCHW)")
    p.add_argument("--phase", default="all", choices=("all", "kd", "nokd"),
                   help="kd / nokd: only the KD / no-KD students, so that two processes can train them side by side "
                        "(the KD gain is computed by whichever finishes when both sides are done)")
    p.add_argument("--grid", default=GRID, help="alpha:T points tried on seed 0 of the first student; the best "
                                                "validation accuracy is used for every other run")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", default="runs/bench/paper_b_full", help="parent of the run directories (git-ignored)")
    p.add_argument("--cache-dir", default="runs/bench/image-cache")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--near-copies", type=float, default=0.98,
                   help="also score every run on the test images without a near copy in training (thumbnail "
                        "correlation at this value or more, data.similar.near_copies) and on the copies alone; 0 = off")
    p.add_argument("--results", default=str(Path(__file__).resolve().parent / "results" / "paper_b_full.json"),
                   help="results JSON (the Markdown and plots go beside it)")
    return p.parse_args()


def teacher_cfg(a: argparse.Namespace, out: Path):
    from medistill.config import build, RunConfig

    recipe = {"recipe": a.teacher_recipe} if a.teacher_recipe else {}
    return build(RunConfig, overrides={
        **recipe, "out": str(out), "data.dataset": "folder", "data.root": a.data_root,
        "data.image_size": str(a.teacher_size), "data.augment": "light", "data.cache_dir": a.cache_dir,
        "model.name": "efficientnet_lite0",
        "model.pretrained": "true", "model.in_chans": "1", "train.epochs": str(a.teacher_epochs),
        "train.batch_size": "32", "train.lr": "0.001", "train.warmup_epochs": "1", "train.seed": "0",
        "train.threads": str(a.threads), **split(a)})  # the recipe's epochs / lr / warm-up yield to these


def split(a: argparse.Namespace) -> dict[str, str]:
    """How the drawn splits are made: the same for the teacher and every student."""
    over = {"data.split_seed": str(a.split_seed)}
    return over | ({"data.group_similar": str(a.group_similar)} if a.group_similar is not None else {})


def student_cfg(a: argparse.Namespace, runs_dir: Path, model: str, seed: int, kd: tuple[float, float] | None):
    from medistill.config import build, RunConfig

    tag = f"{model}_{schedule(a)}"  # the schedule is part of the name: a longer or mixed one is another run
    name = f"{tag}_nokd_s{seed}" if kd is None else f"{tag}_kd_a{kd[0]:g}_T{kd[1]:g}_s{seed}"
    over = {"out": str(runs_dir / name), "data.dataset": "folder", "data.root": a.data_root,
            "data.image_size": str(a.image_size), "data.augment": "light", "data.cache_dir": a.cache_dir,
            "model.name": model, "model.in_chans": "1", "train.epochs": str(a.student_epochs),
            "train.batch_size": str(a.batch_size), "train.lr": str(a.lr), "train.warmup_epochs": "1",
            "train.seed": str(seed), "train.threads": str(a.threads), "train.mixup": str(a.mixup),
            "train.cutmix": str(a.cutmix), "train.mix_prob": str(a.mix_prob), "train.channels_last": a.channels_last,
            **split(a)}
    if kd is not None:
        over.update({"distill.teacher": str(runs_dir / "teacher"), "distill.alpha": str(kd[0]),
                     "distill.temperature": str(kd[1]), "distill.teacher_views": str(a.views),
                     "distill.teacher_views_dir": str(runs_dir / "teacher_views")})
    return name, build(RunConfig, overrides=over)


def plot_curve(run_dir: Path, png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = B.history(run_dir)
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=110)
    ax.plot([r["epoch"] for r in h], [100 * r["val_accuracy"] for r in h], "o-", label="validation accuracy")
    ax.set_xlabel("epoch")
    ax.set_ylabel("%")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)


def main() -> None:
    a = parse()
    import torch

    torch.set_num_threads(a.threads)
    a.data_root = a.data_root or str(DATA / a.dataset)
    runs_dir = Path(a.runs) / a.dataset
    res_json = Path(a.results)
    allres = B.read_json(res_json) if res_json.is_file() else {}
    res: dict[str, Any] = allres.get(a.dataset, {})
    res.update({"image_size": a.image_size, "teacher_image_size": a.teacher_size, "settings": vars(a),
                "command": B.niced(".venv/bin/python benchmarks/paper_b_full.py ") + " ".join(
                    f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items()
                    if k not in ("runs", "cache_dir", "data_root", "results") and v is not None)
                + (f" --data-root {a.data_root}" if a.data_root != str(DATA / a.dataset) else "")})
    res.setdefault("runs", {})

    trained: set[str] = set()  # the students whose runs this process trained (not found done)

    def save() -> None:
        res["machine"] = B.machine()
        if schedule(a) in res.get("schedules", {}):  # schedules written in other sessions keep their own machine
            stamp_machine(res["schedules"][schedule(a)], sorted(trained), res["machine"])
        if res_json.is_file():  # another dataset's run, or a --phase process beside this one, may have written
            now = B.read_json(res_json)
            allres.update({k: v for k, v in now.items() if k != a.dataset})
            merge_written(res, now.get(a.dataset, {}), schedule(a))
        allres[a.dataset] = summarise(res)
        B.write_json(res_json, allres)
        res_json.with_suffix(".md").write_text(markdown(allres, res_json))

    def record(name: str, cfg) -> dict[str, Any] | None:
        from medistill.runs import RunLockedError

        print(f"[{time.strftime('%H:%M:%S')}] {a.dataset} {name} ...", flush=True)
        try:
            r = B.train_and_evaluate(cfg, n_bootstrap=200)
        except RunLockedError as e:  # a second process of this benchmark is training it
            print(f"    skipped: {e}", flush=True)
            return None
        info = B.runs.RunDir(cfg.out).info()
        row = {k: r.get(k) for k in ("command", "out", "accuracy", "macro_f1", "balanced_accuracy", "per_class_recall",
                                     "params", "macs", "model", "kind", "train_wall_s", "epoch_seconds")}
        row.update(best_val_accuracy=info.get("best_val_accuracy"), best_epoch=info.get("best_epoch"),
                   distill_mode=info.get("distill_mode"), seed=info.get("seed"))
        if not r.get("skipped") or name not in res["runs"]:
            res["runs"][name] = row
        if not r.get("skipped") and name != "teacher":
            trained.add(cfg.model.name)
        print(f"    test acc {row['accuracy']:.4f}, val {row['best_val_accuracy']:.4f}", flush=True)
        save()
        return row

    def record_when_done(name: str, cfg) -> dict[str, Any]:
        """A run another process is training: wait until it is finished, then record it."""
        row = None
        while row is None:
            time.sleep(60)
            if B.is_done(cfg.out):
                row = record(name, cfg)
        return row

    tcfg = teacher_cfg(a, runs_dir / "teacher")
    teacher = record("teacher", tcfg)  # None: another process is training it
    if teacher is None and a.phase != "nokd":  # KD needs the finished teacher, not its weights so far
        teacher = record_when_done("teacher", tcfg)
    if teacher:
        plot_curve(runs_dir / "teacher", res_json.parent / f"{res_json.stem}_{a.dataset}_teacher.png",
                   f"EfficientNet-Lite0 (ImageNet) fine-tuned on {a.dataset}, {a.teacher_size} px")
    if a.phase == "nokd":
        for model in a.students.split(","):
            for seed in range(a.seeds):
                record(*student_cfg(a, runs_dir, model, seed, None))
        return
    students = a.students.split(",")
    first = students[0]
    if a.phase == "all":
        record(*student_cfg(a, runs_dir, first, 0, None))
    grid = [tuple(float(v) for v in point.split(":")) for point in a.grid.split(",")]
    for kd in grid:
        record(*student_cfg(a, runs_dir, first, 0, kd))
    for kd in grid:  # a grid run another process is training: wait for it, then read its result
        name, cfg = student_cfg(a, runs_dir, first, 0, kd)
        if name not in res["runs"]:
            record_when_done(name, cfg)
    best = max(grid, key=lambda kd: res["runs"][student_cfg(a, runs_dir, first, 0, kd)[0]]["best_val_accuracy"])
    sched = res.setdefault("schedules", {}).setdefault(schedule(a), {})
    sched.update(student_epochs=a.student_epochs, image_size=a.image_size, mixup=a.mixup, cutmix=a.cutmix,
                 mix_prob=a.mix_prob, views=a.views,
                 command=schedule_command(re.sub(r" --phase \w+", "", res["command"]),  # the whole schedule
                                          [*sched.get("students", {}), *students]),
                 chosen_alpha_T={"alpha": best[0], "T": best[1], "grid": a.grid,
                                 "by": f"best validation accuracy of {first}, seed 0, over {a.grid}" if len(grid) > 1
                                 else "one point, set before any run (nothing chosen on data)"})
    res["current"] = schedule(a)
    for model in students:
        for seed in range(a.seeds):
            if a.phase == "all":
                record(*student_cfg(a, runs_dir, model, seed, None))
            record(*student_cfg(a, runs_dir, model, seed, best))
        done = all(B.is_done(runs_dir / student_cfg(a, runs_dir, model, s, kd)[0])
                   for s in range(a.seeds) for kd in (None, best))
        if done:
            sched.setdefault("kd_gain", {})[model] = kd_gain(a, runs_dir, model, best)
            if a.near_copies:
                sched.setdefault("without_near_copies", {})[model] = without_near_copies(a, runs_dir, model, best)
            sched.setdefault("last_epoch", {})[model] = last_epoch(a, runs_dir, model, best)
        else:
            print(f"    {model}: not every KD and no-KD run is finished (another --phase process is on them); "
                  f"re-run when they are for the KD gain")
        save()


def merge_written(res: dict[str, Any], written: dict[str, Any], current: str) -> None:
    """Take into ``res`` (this process's results for a dataset) what another process wrote to the same file:
    runs this process has not recorded, other schedules whole, and for this process's schedule ``current`` the
    students whose KD gain (or near-copy scores) only the other process computed, having trained their last run."""
    for name, row in written.get("runs", {}).items():
        res["runs"].setdefault(name, row)
    for key, sched in written.get("schedules", {}).items():
        mine = res.setdefault("schedules", {}).get(key)
        if key != current or mine is None:
            res["schedules"][key] = sched
            continue
        for part in ("kd_gain", "without_near_copies", "last_epoch", "machines"):
            for model, value in (sched.get(part) or {}).items():
                if value is not None:
                    mine.setdefault(part, {}).setdefault(model, value)


def schedule_command(command: str, models: list[str]) -> str:
    """One process's command with ``--students`` naming every student of the schedule: its own, in their order
    (the first one's seed 0 chooses alpha / T on a grid), then the other ``models``, each once. The students of
    one schedule differ in nothing else, so this one command reproduces them all when some were added by another
    process (or session)."""
    own = re.search(r"--students (\S+)", command)
    if own is None:
        return command
    names = ",".join(dict.fromkeys([*own.group(1).split(","), *models]))
    return command[:own.start(1)] + names + command[own.end(1):]


def stamp_machine(sched: dict[str, Any], models: list[str], machine: dict[str, Any]) -> None:
    """Record ``machine`` as the one the runs of ``models`` (the students this process trained) in this schedule
    were last trained on (``machines``, per student) and as the schedule's; nothing when it trained none (a re-run
    that only reads finished runs). A student written before machines were kept per student keeps the schedule's
    machine of then."""
    if not models:
        return
    per = sched.setdefault("machines", {})
    for old in sched.get("students", {}):
        if old not in models and old not in per and sched.get("machine"):
            per[old] = sched["machine"]
    for model in models:
        per[model] = machine
    sched["machine"] = machine


def schedule(a: argparse.Namespace) -> str:
    """The student schedule's key: ``e<epochs>``, with ``_px<size>`` when the students' input is not 128 px (the
    first runs' size, whose names carry none), ``_online`` for online consistent KD (``--views 0``: the teacher on
    every batch instead of cached views), ``_mu<a>`` / ``_cm<a>`` (and ``_p<share>`` when not every image is mixed)
    when the students mix."""
    mixed = a.mixup or a.cutmix
    return (f"e{a.student_epochs}" + (f"_px{a.image_size}" if a.image_size != 128 else "")
            + ("_online" if not a.views else "")
            + (f"_mu{a.mixup:g}" if a.mixup else "") + (f"_cm{a.cutmix:g}" if a.cutmix else "")
            + (f"_p{a.mix_prob:g}" if mixed and a.mix_prob != 1.0 else ""))


def kd_gain(a: argparse.Namespace, runs_dir: Path, model: str, best: tuple[float, float]) -> dict[str, Any] | None:
    from medistill.evaluate.compare import compare_runs, kd_gain as gain

    kd = [runs_dir / student_cfg(a, runs_dir, model, s, best)[0] for s in range(a.seeds)]
    nokd = [runs_dir / student_cfg(a, runs_dir, model, s, None)[0] for s in range(a.seeds)]
    # runs evaluated since 2026-12-01 carry their patients and kd_gain reads them; the runs this benchmark made
    # before that (paper_b_full_alzheimer_subjects) do not, so the groups are passed
    return gain(compare_runs([runs_dir / "teacher", *kd, *nokd]), n_bootstrap=a.bootstrap,
                groups=test_patients(student_cfg(a, runs_dir, model, 0, None)[1]) if a.group_similar else None)


def near_copy_mask(cfg, threshold: float) -> np.ndarray:
    """Per test image, in the order of the runs' test predictions: whether a training image is its near copy."""
    import dataclasses

    from medistill.data import build_dataset
    from medistill.data.similar import near_copies

    data = dataclasses.replace(cfg.data, cache=False)
    train, test = (build_dataset(data, s).data.records["path"].tolist() for s in ("train", "test"))
    copy, _, _ = near_copies(train + test, ["train"] * len(train) + ["test"] * len(test), threshold)
    return copy[len(train):]


def without_near_copies(a: argparse.Namespace, runs_dir: Path, model: str,
                        best: tuple[float, float]) -> dict[str, Any]:
    """Test accuracy of the teacher and of every KD / no-KD seed on the test images that have no near copy in
    training (what the test says about new images) and on the copies alone (memory), with the paired bootstrap
    KD gain of seed 0 on the former (over patients when the predictions record patients with several images)."""
    from medistill import runs
    from medistill.evaluate.bootstrap import patient_groups
    from medistill.evaluate.compare import paired_bootstrap_gain

    copy = near_copy_mask(student_cfg(a, runs_dir, model, 0, None)[1], a.near_copies)

    def scores(run: Path) -> tuple[float, float, dict[str, np.ndarray]]:
        with np.load(runs.RunDir(run).file(runs.predictions_file("test"))) as z:
            p = {k: z[k] for k in ("probs", "targets", "mask", "patients") if k in z.files}
        right = p["probs"].argmax(1) == p["targets"].argmax(1)
        valid = p["mask"].all(1) if "mask" in p else np.ones(len(right), bool)  # as the metrics count a sample
        new, old = valid & ~copy, valid & copy
        return (float(right[new].mean()), float(right[old].mean()) if old.any() else float("nan"),
                {k: v[~copy] for k, v in p.items()})

    out: dict[str, Any] = {"threshold": a.near_copies, "test_images": int(len(copy)),
                           "near_copies": int(copy.sum()), "teacher": scores(runs_dir / "teacher")[:2]}
    arrays = {}
    for side, kd in (("kd", best), ("nokd", None)):
        rows = [scores(runs_dir / student_cfg(a, runs_dir, model, s, kd)[0]) for s in range(a.seeds)]
        out[side], out[f"{side}_on_copies"] = [r[0] for r in rows], [r[1] for r in rows]
        arrays[side] = rows[0][2]
    out["mean_gain"] = float(np.mean(out["kd"]) - np.mean(out["nokd"]))
    k, n = arrays["kd"], arrays["nokd"]
    out["gain_seed0"] = paired_bootstrap_gain("multiclass", k["probs"], n["probs"], k["targets"], k["mask"],
                                              n_bootstrap=a.bootstrap, groups=patient_groups(k.get("patients")))
    return out


def last_epoch(a: argparse.Namespace, runs_dir: Path, model: str, best: tuple[float, float]) -> dict[str, Any]:
    """Test accuracy of every KD / no-KD seed with its last epoch's weights, beside the best-validation-epoch
    weights every other figure uses: with a small validation split the best epoch is partly chance (on Alzheimer's
    20 validation subjects some 40-epoch students peak in their first epochs), and a patient schedule means the
    whole schedule."""
    from medistill.evaluate.metrics import multiclass_metrics
    from medistill.evaluate.runner import run_predictions
    from medistill.models import ModelError

    def accuracy(run: Path) -> float | None:
        try:
            p = run_predictions(run, "test", weights="last")
        except ModelError as e:  # a run without last.safetensors: no figure, not a failed benchmark
            print(f"    no last-epoch score: {e}", flush=True)
            return None
        # the accuracy every best-epoch figure comes from (evaluate's), without its bootstrap
        return multiclass_metrics(p["probs"], p["targets"], p["mask"], None, n_bootstrap=0)["accuracy"]

    out = {side: [accuracy(runs_dir / student_cfg(a, runs_dir, model, s, kd)[0]) for s in range(a.seeds)]
           for side, kd in (("kd", best), ("nokd", None))}
    whole = None not in out["kd"] + out["nokd"]
    return out | {"mean_gain": float(np.mean(out["kd"]) - np.mean(out["nokd"])) if whole else None}


def test_patients(cfg) -> np.ndarray:
    """The patient (group) of each test image, in the order the runs' test predictions are stored: the test split
    as evaluation builds it (same rows, same limit), without its image cache."""
    import dataclasses

    from medistill.data import build_dataset

    return build_dataset(dataclasses.replace(cfg.data, cache=False), "test").data.records["patient_id"].to_numpy()


def summarise(res: dict[str, Any]) -> dict[str, Any]:
    """The contract's fields (teacher, students: kd / nokd accuracies per seed, macs) beside the raw runs.

    Each student schedule (``e<epochs>``) keeps its own chosen alpha / T, students and KD gain under
    ``schedules``; the top-level ``students``, ``kd_gain`` and ``chosen_alpha_T`` are those of the schedule run last.
    """
    r = res["runs"]
    out = dict(res)
    if "teacher" in r:
        out["teacher"] = {"model": "efficientnet_lite0", "accuracy": r["teacher"]["accuracy"],
                          "macs": r["teacher"]["macs"], "per_class_recall": r["teacher"].get("per_class_recall")}
    for key, sched in res.get("schedules", {}).items():
        chosen = sched.get("chosen_alpha_T")
        students: dict[str, Any] = {}
        for name, row in sorted(r.items()):
            model = row.get("model")
            if name == "teacher" or not re.match(rf"{re.escape(f'{model}_{key}')}_(nokd|kd)_", name):
                continue
            s = students.setdefault(model, {"kd": [], "nokd": [], "macs": row["macs"], "kd_recall": [],
                                            "nokd_recall": []})
            if "_nokd_" in name:
                s["nokd"].append(row["accuracy"])
                s["nokd_recall"].append(row.get("per_class_recall"))
            elif chosen and f"_a{chosen['alpha']:g}_T{chosen['T']:g}_" in name:
                s["kd"].append(row["accuracy"])
                s["kd_recall"].append(row.get("per_class_recall"))
        sched["students"] = students
    cur = res.get("schedules", {}).get(res.get("current", ""), {})
    for k in ("students", "kd_gain", "chosen_alpha_T", "student_epochs", "image_size"):
        if k in cur:
            out[k] = cur[k]
    return out


def recall_table(students: dict[str, Any], teacher: dict[str, Any] | None) -> list[str]:
    """Markdown lines: each class's test recall (%) for the teacher and, mean +- sd over seeds, each student with and
    without KD; nothing when no run recorded recalls. A class absent from the test split reads n/a."""
    rows = [(m, s) for m, s in students.items() if any(s.get("kd_recall") or []) or any(s.get("nokd_recall") or [])]
    if not rows:
        return []
    classes = next(r for _, s in rows for r in s.get("kd_recall", []) + s.get("nokd_recall", []) if r)
    t = (teacher or {}).get("per_class_recall") or {}
    out = ["", "Per-class test recall (%), mean ± sd over seeds:", "",
           "| class | teacher | " + " | ".join(f"{m} KD | {m} no KD" for m, _ in rows) + " |",
           "|---|---|" + "---|---|" * len(rows)]
    for c in classes:
        cells = [B.fmt_ms(B.mean_std([(r or {}).get(c) for r in s.get(side) or []]))
                 for _, s in rows for side in ("kd_recall", "nokd_recall")]
        out.append(f"| {c} | {'n/a' if t.get(c) is None else f'{100 * t[c]:.2f}'} | " + " | ".join(cells) + " |")
    return out


def markdown(allres: dict[str, Any], res_json: Path = Path("paper_b_full.json")) -> str:
    """The results file ``res_json`` as markdown, naming the teacher-curve images written beside it."""
    from medistill.evaluate.compare import describe_gain

    lines = ["# Paper B at full scale (every image, real MRI)", ""]
    for ds, res in allres.items():
        lines += [f"## {ds}", ""]
        scheds = res.get("schedules", {}).values()
        if res.get("machine") and not (scheds and all(s.get("machine") for s in scheds)):  # e.g. a teacher alone
            lines += [f"{B.machine_line(res.get('machine'))} (when this file was last written)", ""]
        t = res.get("teacher")
        if t:
            curve = res_json.parent / f"{res_json.stem}_{ds}_teacher.png"
            lines.append(f"Teacher EfficientNet-Lite0 (ImageNet init) at {res['teacher_image_size']} px: test accuracy "
                         f"{100 * t['accuracy']:.2f} %, {B.si(t['macs'])} MACs"
                         + (f"; validation curve: `{curve.name}`." if curve.is_file() else "."))
        for key, sched in sorted(res.get("schedules", {}).items(), key=lambda kv: -kv[1]["student_epochs"]):
            mix = " and ".join(f"{k} {sched[k]:g}" for k in ("mixup", "cutmix") if sched.get(k))
            mix += f" on {sched['mix_prob']:.0%} of images" if mix and sched.get("mix_prob", 1.0) != 1.0 else ""
            mix = f", {mix} (KD: function matching on {sched.get('views')} cached mixed views per image)" if mix else ""
            px = sched.get("image_size", 128)
            lines += ["", f"### Students trained {sched['student_epochs']} epochs at {px} px{mix}"
                          f"{' (the current result)' if key == res.get('current') else ''}", "",
                      f"Reproduce: `{schedule_command(sched.get('command', ''), list(sched.get('students', {})))}`",
                      ""]
            machines = {m: B.machine_line(v) for m, v in (sched.get("machines") or {}).items()}
            if len(set(machines.values())) > 1:  # students of this schedule trained under different loads or sessions
                lines += [f"{line} (for {m})" for m, line in machines.items()] + [""]
            elif sched.get("machine"):
                lines += [B.machine_line(sched["machine"]), ""]
            if sched.get("chosen_alpha_T"):
                c = sched["chosen_alpha_T"]
                lines.append(f"alpha = {c['alpha']}, T = {c['T']} ({c['by']}).")
            lines += ["", "| student | px | MACs | KD test acc (%) | no-KD test acc (%) | KD - no-KD (points) |",
                      "|---|---|---|---|---|---|"]
            for model, s in sched.get("students", {}).items():
                kd, nk = B.mean_std(s["kd"]), B.mean_std(s["nokd"])
                diff = "n/a" if kd["mean"] is None or nk["mean"] is None else f"{100 * (kd['mean'] - nk['mean']):+.2f}"
                seeds = {k: f" ({v['n']} seeds)" if v["n"] > 1 else "" for k, v in (("kd", kd), ("nk", nk))}
                lines.append(f"| {model} | {px} | {B.si(s['macs'])} | {B.fmt_ms(kd)}{seeds['kd']} | "
                             f"{B.fmt_ms(nk)}{seeds['nk']} | {diff} |")
            lines += recall_table(sched.get("students", {}), res.get("teacher"))
            for model, g in (sched.get("kd_gain") or {}).items():
                if g:
                    lines.append(f"\n{describe_gain(g)}")
            for model, w in (sched.get("last_epoch") or {}).items():
                kd, nk = B.mean_std(w["kd"]), B.mean_std(w["nokd"])
                gain = "n/a" if w["mean_gain"] is None else f"{100 * w['mean_gain']:+.2f}"
                seeds = {side: ", ".join("n/a" if v is None else f"{100 * v:.2f}" for v in w[side])
                         for side in ("kd", "nokd")}
                lines += ["", f"{model} with its last epoch's weights instead of its best validation epoch's: KD "
                              f"{B.fmt_ms(kd)} %, no KD {B.fmt_ms(nk)} %, KD - no-KD {gain} points (per seed: KD "
                              f"{seeds['kd']}; no KD {seeds['nokd']})."]
            none_said = False  # the test images are every student's: say once that none has a copy
            for model, w in (sched.get("without_near_copies") or {}).items():
                if not w["near_copies"]:
                    if not none_said:
                        lines += ["", f"None of the {w['test_images']} test images has a near copy in training "
                                      f"(thumbnail correlation >= {w['threshold']:g})."]
                    none_said = True
                    continue
                g, kd, nk = w["gain_seed0"], B.mean_std(w["kd"]), B.mean_std(w["nokd"])
                lines += ["", f"{model} on the {w['test_images'] - w['near_copies']} test images without a near copy "
                              f"in training ({w['near_copies']} of {w['test_images']} have one: thumbnail correlation "
                              f">= {w['threshold']:g}): KD {B.fmt_ms(kd)} %, no KD {B.fmt_ms(nk)} %, mean gain "
                              f"{100 * w['mean_gain']:+.2f} points (seed 0: {100 * g['value']:+.2f}, paired bootstrap "
                              f"CI {100 * g['ci_low']:+.2f} to {100 * g['ci_high']:+.2f}); teacher "
                              f"{100 * w['teacher'][0]:.2f} %. On the copies alone: KD "
                              f"{B.fmt_ms(B.mean_std(w['kd_on_copies']))} %, no KD "
                              f"{B.fmt_ms(B.mean_std(w['nokd_on_copies']))} %, teacher {100 * w['teacher'][1]:.2f} %."]
        lines += ["", "All runs (test accuracy, best validation accuracy, epoch seconds):", "",
                  "| run | test acc (%) | val acc (%) | mode | s / epoch |", "|---|---|---|---|---|"]
        for name, row in res.get("runs", {}).items():
            secs = [x for x in (row.get("epoch_seconds") or []) if x]
            lines.append(f"| {name} | {100 * (row.get('accuracy') or 0):.2f} | "
                         f"{100 * (row.get('best_val_accuracy') or 0):.2f} | {row.get('distill_mode') or 'train'} | "
                         f"{(sum(secs) / len(secs)) if secs else 0:.0f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
