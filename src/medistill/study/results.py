"""A study's results: every run's scores, the arms chosen on validation, KD minus no-KD at each size, and the two
sentences that answer the study's question.

Selection is the plan's rule and nothing else: at each size, among the KD arms and among the no-KD arms, the arm
with the best mean validation score over its seeds (the kd arm at the alpha / T point its seed 0 chose on
validation). Test scores are read only for the chosen arms' headline, and for a secondary table of every arm.
KD minus no-KD is the difference of the two chosen arms' seed means, with :func:`~medistill.evaluate.compare.
seed_mean_gain`'s two-level bootstrap (test patients and seeds).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from .. import runs
from ..evaluate.bootstrap import bootstrap_unit, patient_groups, resampled_metric
from ..evaluate.compare import seed_mean_gain
from ..evaluate.metrics import majority_baseline
from ..evaluate.runner import run_predictions
from ..export.onnx import export_onnx
from ..inference import INPUT, open_session
from ..inference.timing import machine_load, measure_interleaved
from ..models import count_macs, count_params
from ..task import get_task
from .options import ARMS
from .plan import Plan, PlannedRun, Size, StudyError

log = logging.getLogger(__name__)


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def metric_value(metric: str, pred: dict[str, np.ndarray]) -> float:
    """``metric`` of one set of predictions (probs / targets / mask ``(N, L)``)."""
    ones = np.ones((len(pred["targets"]), 1))
    return float(resampled_metric(metric, pred["probs"], pred["targets"], pred["mask"], ones)[0])


def load_scores(run_dir: Path, metric: str, task: str) -> dict[str, Any]:
    """A scored run's validation and test ``metric``, its test accuracy / balanced accuracy (single-label), its test
    predictions, and its training time (the sum of its epochs' seconds)."""
    run = runs.RunDir(run_dir)
    val = _load(run.file(runs.predictions_file("val")))
    test = _load(run.file(runs.predictions_file("test")))
    out: dict[str, Any] = {"run": str(run_dir), "val": metric_value(metric, val), "test": metric_value(metric, test),
                           "pred": test}
    if not get_task(task).multilabel:
        out.update(accuracy=metric_value("accuracy", test), balanced_accuracy=metric_value("balanced_accuracy", test))
    history = runs.RunDir(run_dir).file(runs.HISTORY_FILE)
    if history.is_file():
        with open(history, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        out["train_seconds"] = float(sum(float(r.get("seconds") or 0) for r in rows))
        out["epochs"] = len(rows)
    return out


def teacher_scores(plan: Plan, *, weights: str = "best") -> dict[str, Any]:
    """The teacher's predictions on the study's validation and test images (an ensemble: its members' mean
    probabilities), with its task, MACs and parameters (summed over members)."""
    members, preds = [], {"val": [], "test": []}
    task = None
    for path in plan.teachers:
        model, record = runs.load_model(path)
        task = task or record["task"]
        inp = record["input"]
        members.append({"run": str(path), "model": record["model"], "image_size": inp["size"],
                        "macs": count_macs(model, inp["size"], inp["channels"]), "params": count_params(model)})
        for split in preds:
            preds[split].append(run_predictions(path, split, weights=weights, data=plan.data))
    if not members:
        raise StudyError("the study has no teacher")
    ens = {split: {**ps[0], "probs": np.mean([p["probs"] for p in ps], axis=0)} for split, ps in preds.items()}
    metric = plan.cfg.metric if plan.cfg.metric != "auto" else get_task(task).main_metric
    if get_task(task).multilabel and metric != "macro_auc":
        raise StudyError(f"metric {metric!r}: a multi-label study is compared on macro_auc")
    out = {"task": task, "metric": metric, "members": members, "pred": ens,
           "macs": int(sum(m["macs"] for m in members)), "params": int(sum(m["params"] for m in members)),
           "val": metric_value(metric, ens["val"]), "test": metric_value(metric, ens["test"])}
    if not get_task(task).multilabel:
        out.update(accuracy=metric_value("accuracy", ens["test"]),
                   balanced_accuracy=metric_value("balanced_accuracy", ens["test"]))
    if len(members) > 1:
        for m, v, t in zip(members, preds["val"], preds["test"]):
            m.update(val=metric_value(metric, v), test=metric_value(metric, t))
    return out


class Results:
    """The scores of a study's runs as they arrive, and the summary they give (see the module docstring)."""

    def __init__(self, plan: Plan, teacher: dict[str, Any]):
        self.plan, self.teacher = plan, teacher
        self.metric, self.task = teacher["metric"], teacher["task"]
        self._scores: dict[PlannedRun, dict[str, Any]] = {}
        self._model: dict[str, dict[str, Any]] = {}  # size key -> macs / params of its model

    # --- runs ----------------------------------------------------------------------------------------------
    def add(self, r: PlannedRun) -> None:
        s = load_scores(self.plan.run_dir(r), self.metric, self.task)
        t = self.teacher["pred"]["test"]
        if s["pred"]["targets"].shape != t["targets"].shape or not np.array_equal(s["pred"]["targets"],
                                                                                  t["targets"]):
            raise StudyError(f"{self.plan.run_dir(r)}: scored on other test images than the teacher: the study's "
                             f"runs and teacher must share the test split")
        self._scores[r] = s
        if r.size.key not in self._model:
            model, record = runs.load_model(self.plan.run_dir(r))
            inp = record["input"]
            self._model[r.size.key] = {"macs": count_macs(model, inp["size"], inp["channels"]),
                                       "params": count_params(model)}

    def __len__(self) -> int:
        """How many runs are scored."""
        return len(self._scores)

    def scores(self, r: PlannedRun) -> dict[str, Any]:
        return self._scores[r]

    def chosen_point(self, size: Size) -> tuple[float, float] | None:
        """The kd arm's alpha / T at ``size``: the grid point whose seed 0 scored best on validation (the first on
        a tie); None until every grid point is scored."""
        grid = self.plan.grid_runs(size)
        if not grid or any(g not in self._scores for g in grid):
            return None
        best = max(grid, key=lambda g: (self._scores[g]["val"], -grid.index(g)))
        return best.point

    def arm_runs(self, size: Size, arm: str, seeds: int | None = None) -> list[PlannedRun]:
        """The runs of ``arm`` at ``size`` (the kd arm's at its chosen point), its first ``seeds`` seeds if given."""
        if arm == "kd":
            point = self.chosen_point(size)
            rs = self.plan.runs_of(size, arm, point) if point is not None else []
        else:
            rs = self.plan.runs_of(size, arm)
        return rs if seeds is None else [r for r in rs if r.seed < seeds]

    def common_seeds(self, size: Size) -> int:
        """How many seeds (0, 1, ... in order) every arm at ``size`` has scored: the seeds a size is summarised at,
        so that a study stopped early compares every arm over the same seeds."""
        k = self.plan.cfg.seeds
        for arm in self.plan.cfg.arms:
            rs = self.arm_runs(size, arm)
            have = next((i for i, r in enumerate(rs) if r not in self._scores), len(rs)) if rs else 0
            k = min(k, have)
        return k

    # --- the summary ----------------------------------------------------------------------------------------
    def arm_summary(self, size: Size, arm: str, seeds: int | None = None) -> dict[str, Any]:
        rs = self.arm_runs(size, arm, seeds)
        got = [self._scores[r] for r in rs if r in self._scores]
        out: dict[str, Any] = {"arm": arm, "kd": ARMS[arm].kd, "complete": bool(rs) and len(got) == len(rs),
                               "runs": [s["run"] for s in got], "val": [s["val"] for s in got],
                               "test": [s["test"] for s in got]}
        for key in ("accuracy", "balanced_accuracy", "train_seconds"):
            if got and all(key in s for s in got):
                out[key] = [s[key] for s in got]
        if "train_seconds" in out:  # wall seconds of a training epoch, this arm at this size (validation included)
            out["epoch_seconds"] = float(np.mean([s["train_seconds"] / max(s.get("epochs", 1), 1) for s in got]))
        if got:
            out.update(val_mean=float(np.mean(out["val"])), test_mean=float(np.mean(out["test"])),
                       test_std=float(np.std(out["test"], ddof=1)) if len(got) > 1 else None)
        if arm == "kd":
            point = self.chosen_point(size)
            out["point"] = None if point is None else {"alpha": point[0], "temperature": point[1]}
            out["grid"] = {f"{g.point[0]:g}:{g.point[1]:g}": self._scores[g]["val"]
                           for g in self.plan.grid_runs(size) if g in self._scores}
        return out

    def size_summary(self, size: Size, n_bootstrap: int) -> dict[str, Any]:
        k = self.common_seeds(size)  # every arm over the same seeds: all of them once the study is complete
        arms = {a: self.arm_summary(size, a, k or None) for a in self.plan.cfg.arms}
        out: dict[str, Any] = {"name": size.title, "key": size.key, "model": size.model, "width": size.width,
                               "image_size": size.image_size, "seeds_summarised": k,
                               **self._model.get(size.key, {"macs": None, "params": None})}
        if out["macs"]:
            out["macs_vs_teacher"] = out["macs"] / self.teacher["macs"]
        for side, kd in (("kd", True), ("nokd", False)):
            cands = [a for a in arms.values() if a["kd"] == kd]
            # the rule: every arm of the side complete, then the best mean validation score (the first on a tie)
            out[side] = (max(cands, key=lambda a: (a["val_mean"], -list(arms).index(a["arm"])))
                         if k and cands and all(a["complete"] for a in cands) else None)
        out["gain"] = (self._gain(size, out["kd"], out["nokd"], n_bootstrap, k) if k and out["kd"] and out["nokd"]
                       else None)
        out["arms"] = arms
        return out

    def _gain(self, size: Size, kd: dict[str, Any], nokd: dict[str, Any], n_bootstrap: int,
              seeds: int) -> dict[str, Any]:
        pk = [self._scores[r]["pred"] for r in self.arm_runs(size, kd["arm"], seeds)]
        pn = [self._scores[r]["pred"] for r in self.arm_runs(size, nokd["arm"], seeds)]
        ref = pk[0]
        groups = patient_groups(ref.get("patients"))
        g = seed_mean_gain(self.task, [p["probs"] for p in pk], [p["probs"] for p in pn], ref["targets"],
                           ref["mask"], n_bootstrap=max(n_bootstrap, 1), groups=groups, metric=self.metric)
        out = {k: g[k] for k in ("value", "ci_low", "ci_high")}
        if n_bootstrap == 0:  # partial results: the point value only
            out.update(ci_low=None, ci_high=None, verdict="pending")
        else:
            out["verdict"] = ("KD helped" if out["ci_low"] > 0 else "KD hurt" if out["ci_high"] < 0
                              else "no clear difference")
        out["method"] = (f"difference of the two chosen arms' seed means; 95 % CI from {n_bootstrap} resamples of "
                         f"the test {bootstrap_unit(groups)} (shared by both arms) and of each arm's seeds")
        out["seed_spread"] = {"kd": kd.get("test_std"), "nokd": nokd.get("test_std")}
        return out

    def summary(self, *, n_bootstrap: int, latency: dict[str, Any] | None = None) -> dict[str, Any]:
        """``study.json``'s content from the runs scored so far."""
        plan, cfg, t = self.plan, self.plan.cfg, self.teacher
        sizes = [self.size_summary(s, n_bootstrap) for s in plan.sizes]
        sizes.sort(key=lambda s: (s["macs"] is None, s["macs"] or 0))
        if latency:
            for s in sizes:
                if s["key"] in latency.get("models", {}):
                    s["latency_ms"] = latency["models"][s["key"]]["min_ms"]
                    s["latency_vs_teacher"] = s["latency_ms"] / latency["teacher_ms"]
        teacher = {k: v for k, v in t.items() if k not in ("pred", "task", "metric")}
        teacher["runs"] = [m["run"] for m in t["members"]]
        if latency:
            teacher["latency_ms"] = latency["teacher_ms"]
        planned = plan.planned_runs()
        out: dict[str, Any] = {
            "question": plan.record()["question"], "metric": self.metric, "task": self.task, "stop": cfg.stop,
            "seeds": cfg.seeds, "epochs": cfg.epochs, "within": cfg.within,
            "data": {"dataset": plan.data.dataset, "root": plan.data.root, "hygiene": plan.hygiene},
            "arms": {a: ARMS[a].as_dict() for a in cfg.arms}, "teacher": teacher, "sizes": sizes,
            "runs_scored": len(self._scores), "runs_planned": planned,
            "seeds_summarised": min((s["seeds_summarised"] for s in sizes), default=0),
        }
        test = t["pred"]["test"]
        out["test_images"] = int(len(test["targets"]))
        groups = patient_groups(test.get("patients"))
        out["test_patients"] = int(len(np.unique(groups))) if groups is not None else out["test_images"]
        if not get_task(self.task).multilabel:
            out.update(self._majority())
        out["complete"] = all(s["gain"] is not None for s in sizes) and len(self._scores) >= planned
        out["sentences"] = sentences(out)
        if latency:
            out["latency"] = latency
        out["costs"] = self._costs()
        return out

    def _majority(self) -> dict[str, Any]:
        if not self._scores:
            return {}
        any_run = runs.RunDir(next(iter(self._scores.values()))["run"])
        counts = any_run.info().get("train_label_counts") or {}
        test = self.teacher["pred"]["test"]
        labels = list(counts)
        if len(labels) != test["targets"].shape[1]:
            return {}
        m = majority_baseline([counts[k] for k in labels], test["targets"], test["mask"], labels)
        return {k: m[k] for k in ("majority_class", "majority_rate", "majority_balanced_accuracy", "chance")}

    def _costs(self) -> dict[str, Any]:
        """The teacher-view caches' fill time (KD's set-up cost) and the teachers' training time; seconds per
        epoch of each arm at each size are in the sizes' ``arms``."""
        caches = {}
        for meta in sorted(self.plan.views_dir().glob("teacher_views-*.json")):
            try:
                m = json.loads(meta.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            caches[meta.stem] = {"views": m.get("views"), "seconds": m.get("seconds"), "mixed": m.get("mixed")}
        teacher_seconds = []
        for path in self.plan.teachers:
            h = runs.RunDir(path).file(runs.HISTORY_FILE)
            if h.is_file():
                with open(h, newline="", encoding="utf-8") as f:
                    teacher_seconds.append(sum(float(r.get("seconds") or 0) for r in csv.DictReader(f)))
        return {"view_caches": caches, "teacher_train_seconds": teacher_seconds}

    # --- latency ---------------------------------------------------------------------------------------------
    def time_latency(self) -> dict[str, Any]:
        """Every student size and every teacher member exported to ONNX (fp32) and timed in turns in ONNX Runtime
        at batch 1 (:func:`medistill.inference.timing.measure_interleaved`), so all see the same machine; an
        ensemble's time is its members' sum."""
        folder = self.plan.out / "latency"
        folder.mkdir(parents=True, exist_ok=True)
        models: dict[str, Path] = {}
        for size in self.plan.sizes:
            done = [r for r in self._scores if r.size == size]
            if done:
                models[size.key] = self.plan.run_dir(done[0])
        for i, path in enumerate(self.plan.teachers):
            models[f"teacher{i}"] = path
        sessions, feeds = {}, {}
        for key, run_dir in models.items():
            model, record = runs.load_model(run_dir)
            onnx_path = export_onnx(model, folder / f"{key}.onnx", labels=record["labels"], task=record["task"])
            sessions[key] = open_session(onnx_path, threads=self.plan.cfg.latency_threads)
            inp = record["input"]
            feeds[key] = {INPUT: np.zeros((1, inp["channels"], inp["size"], inp["size"]), np.float32)}
        before = machine_load()
        times = measure_interleaved({k: (lambda s=s, f=feeds[k]: s.run(None, f)) for k, s in sessions.items()},
                                    warmup=10, runs=100, min_seconds=3.0)
        teacher_ms = sum(times[f"teacher{i}"]["min_ms"] for i in range(len(self.plan.teachers)))
        return {"runtime": f"ONNX Runtime {onnxruntime.__version__}, fp32, CPUExecutionProvider, batch 1, "
                           f"{self.plan.cfg.latency_threads} thread(s); minimum of repeated calls, in turns",
                "models": {k: v for k, v in times.items() if not k.startswith("teacher")},
                "teacher_members": {k: v for k, v in times.items() if k.startswith("teacher")},
                "teacher_ms": teacher_ms, "machine_load": {"before": before, "after": machine_load()}}


# ---------------------------------------------------------------------------------------------------------
# the answer in words
# ---------------------------------------------------------------------------------------------------------

def _pts(v: float, metric: str) -> str:
    return f"{100 * v:+.2f} points" if metric != "macro_auc" else f"{v:+.4f}"


def sentences(s: dict[str, Any]) -> list[str]:
    """Two sentences generated from the figures: the smallest student within ``within`` of the teacher with and
    without KD (how many times smaller KD lets it be), and the sizes where KD's interval is above 0."""
    sizes = [x for x in s["sizes"] if x["kd"] and x["nokd"] and x["macs"]]
    metric, within, teacher = s["metric"], s["within"], s["teacher"]["test"]
    unit = "point" if metric != "macro_auc" else f"{within:g} macro AUC"
    how_close = f"within {100 * within:g} {unit}{'s' if 100 * within != 1 else ''}" if metric != "macro_auc" \
        else f"within {within:g} macro AUC"
    if not sizes:
        return ["No student size has both a KD and a no-KD arm scored yet: nothing to conclude."]
    k = s.get("seeds_summarised", s["seeds"])
    partial = "" if s.get("complete") else (f" (partial: {s['runs_scored']} of {s['runs_planned']} runs scored; every "
                                            f"arm compared over the {k} of {s['seeds']} seeds all have)")

    def smallest(side: str) -> dict[str, Any] | None:
        ok = [x for x in sizes if x[side]["test_mean"] >= teacher - within]
        return min(ok, key=lambda x: x["macs"]) if ok else None

    kd, nokd = smallest("kd"), smallest("nokd")

    def name(x: dict[str, Any]) -> str:
        return f"{x['name']} ({x['macs'] / 1e6:.2f}M MACs, 1/{s['teacher']['macs'] / x['macs']:.0f} of the teacher's)"

    if kd and nokd:
        ratio = nokd["macs"] / kd["macs"]
        first = (f"The smallest student {how_close} of the teacher ({metric} {teacher:.4f} on test) is {name(kd)} "
                 f"with KD and {name(nokd)} without: ")
        first += (f"KD lets the student be {ratio:.1f}x smaller." if ratio > 1.0001 else
                  "KD does not let the student be smaller (the same size)." if ratio > 0.9999 else
                  f"KD does not let the student be smaller (without KD it can be {1 / ratio:.1f}x smaller).")
    elif kd or nokd:
        have, lack = ("with KD", "without KD") if kd else ("without KD", "with KD")
        best_other = max(sizes, key=lambda x: x["nokd" if kd else "kd"]["test_mean"])
        gap = teacher - best_other["nokd" if kd else "kd"]["test_mean"]
        first = (f"{have[0].upper()}{have[1:]}, the smallest student {how_close} of the teacher ({metric} "
                 f"{teacher:.4f} on test) is {name(kd or nokd)}; {lack}, no size studied is (the closest, "
                 f"{best_other['name']}, is {_pts(gap, metric).lstrip('+')} below)")
        first += (": only with KD does a student studied come that close." if kd else
                  ": KD does not help a student come that close.")
    else:
        best = max(sizes, key=lambda x: max(x["kd"]["test_mean"], x["nokd"]["test_mean"]))
        gap = teacher - max(best["kd"]["test_mean"], best["nokd"]["test_mean"])
        first = (f"No student size studied is {how_close} of the teacher ({metric} {teacher:.4f} on test), with or "
                 f"without KD; the closest, {best['name']}, is {_pts(gap, metric).lstrip('+')} below.")
    above = [x for x in sizes if x["gain"] and x["gain"].get("ci_low") is not None and x["gain"]["ci_low"] > 0]
    below = [x for x in sizes if x["gain"] and x["gain"].get("ci_high") is not None and x["gain"]["ci_high"] < 0]

    def gain(x: dict[str, Any]) -> str:
        g = x["gain"]
        return (f"{x['name']} ({_pts(g['value'], metric)}, CI {_pts(g['ci_low'], metric)} to "
                f"{_pts(g['ci_high'], metric)})")

    if any(x["gain"] and x["gain"].get("ci_low") is None for x in sizes):
        second = "KD minus no-KD intervals are computed when the study finishes."
    elif above:
        second = f"KD's interval is above 0 at {len(above)} of {len(sizes)} sizes: {'; '.join(map(gain, above))}."
    else:
        second = f"KD's interval is above 0 at none of the {len(sizes)} sizes studied."
    if below:
        second += f" It is below 0 (KD hurt) at: {'; '.join(map(gain, below))}."
    return [first + partial, second]
