"""Compare evaluated runs (``medistill compare``): roles, one row per run, and whether distillation paid.

:func:`kd_gain` answers the question a distillation tool exists for: the KD student's main metric minus the same
student's without KD, on the same test images, with a paired bootstrap confidence interval (both models scored on
each resample of the images, so the interval is about the difference, not two separate noises). With several
seeds of each, the mean gain over seeds and its spread are given too, and the verdict uses both.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import runs
from ..config import NOT_RECIPE, differences
from ..errors import MedistillError
from ..task import Task, get_task
from .bootstrap import (RESAMPLED_METRICS, bootstrap_unit, patient_groups, percentile_ci, resample_counts,
                        resampled_metric)

KD, NOKD, TEACHER = "student (KD)", "student (no KD)", "teacher"


class CompareError(MedistillError):
    """Runs that cannot be compared (not evaluated, other test images); the message names the run and the fix."""


def role_of(run_dir: Path, others: list[Path]) -> str:
    """teacher / student (KD) / student (no KD) / model, from the run records."""
    info = runs.RunDir(run_dir).info()
    if info.get("kind") == "distill":
        return KD
    resolved = str(Path(run_dir).resolve())
    for o in others:
        oi = runs.RunDir(o).info()
        if resolved in (oi.get("teachers") or []) or oi.get("teacher") == resolved:
            return TEACHER
    students = [runs.RunDir(o).info() for o in others if runs.RunDir(o).info().get("kind") == "distill"]
    if any(s.get("model") == info.get("model") for s in students):
        return NOKD
    return "model"


def compare_runs(run_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """One row per run: role, model, the task's main metric with CI, macro AUC, macro F1, params, MACs, size,
    latency."""
    paths = [Path(p) for p in run_dirs]
    rows = []
    for p in paths:
        m = runs.RunDir(p).metrics()
        if "task" not in m:
            raise CompareError(f"{p}: no evaluation in metrics.json; run `medistill evaluate {p}` first")
        task = get_task(m["task"])
        rows.append({"run": str(p), "role": role_of(p, [o for o in paths if o != p]), "model": m.get("model"),
                     "metric": task.main_metric, "value": m.get(task.main_metric), "ci95": m.get(task.main_metric_ci),
                     "macro_auc": m.get("macro_auc"), "macro_f1": m.get("macro_f1"),
                     "balanced_accuracy": m.get("balanced_accuracy"), "majority_rate": m.get("majority_rate"),
                     "majority_class": m.get("majority_class"), "chance": m.get("chance"),
                     "params": m.get("params"), "macs": m.get("macs"), "size_bytes": m.get("size_bytes"),
                     "latency_ms": m.get("latency_ms"), "split": m.get("split"), "num_images": m.get("num_images"),
                     "seed": runs.RunDir(p).info().get("seed")})
    return rows


# ---------------------------------------------------------------------------------------------------------
# did KD pay?
# ---------------------------------------------------------------------------------------------------------

def paired_bootstrap_gain(task: str | Task, probs_a: np.ndarray, probs_b: np.ndarray, targets: np.ndarray,
                          mask: np.ndarray, *, n_bootstrap: int = 1000, seed: int = 0,
                          groups: np.ndarray | None = None, metric: str | None = None) -> dict[str, float]:
    """``metric`` (default: the task's main metric) of ``a`` minus that of ``b`` on the same images ``(N, L)``:
    the point value and a 95 % percentile CI from ``n_bootstrap`` paired resamples of the images (each resample
    scores both models), or of the patients when ``groups`` names each image's patient (see
    :func:`.bootstrap.resample_counts`). Metrics: :func:`.bootstrap.resampled_metric` (multi-label macro AUC
    respects the mask per label; single-label accuracy counts rows with a full mask).
    """
    g = seed_mean_gain(task, [probs_a], [probs_b], targets, mask, n_bootstrap=n_bootstrap, seed=seed,
                       groups=groups, metric=metric)
    return {k: g[k] for k in ("value", "ci_low", "ci_high")}


def seed_mean_gain(task: str | Task, probs_kd: Sequence[np.ndarray], probs_nokd: Sequence[np.ndarray],
                   targets: np.ndarray, mask: np.ndarray, *, n_bootstrap: int = 1000, seed: int = 0,
                   groups: np.ndarray | None = None, metric: str | None = None) -> dict[str, Any]:
    """The mean ``metric`` over the seeds of one arm (``probs_kd``: one ``(N, L)`` array per seed) minus that of
    another (``probs_nokd``), on the same images, with a 95 % CI from a two-level bootstrap: each resample draws
    the test patients (``groups``; else the images), shared by both arms (paired), and, within each arm, as many
    seeds as it has with replacement, so the interval holds both the test set's and the seeds' variation.

    Returns ``value``, ``ci_low``, ``ci_high``, and ``kd`` / ``nokd``: each seed's metric. With one seed per arm
    this is the paired bootstrap of :func:`paired_bootstrap_gain`.
    """
    t = get_task(task)
    metric = metric or t.main_metric
    if metric not in RESAMPLED_METRICS or (t.multilabel and metric != "macro_auc"):
        raise CompareError(f"metric: got {metric!r}, expected macro_auc for multi-label runs, or one of "
                           f"{list(RESAMPLED_METRICS)} for single-label runs")
    if not probs_kd or not probs_nokd:
        raise CompareError("seed_mean_gain: each arm needs at least one run")
    ones = np.ones((len(targets), 1))
    point_a = [float(resampled_metric(metric, p, targets, mask, ones)[0]) for p in probs_kd]
    point_b = [float(resampled_metric(metric, p, targets, mask, ones)[0]) for p in probs_nokd]
    rng = np.random.default_rng([seed, 7])  # the seed draws; the image / patient draws use ``seed`` itself
    diffs = []
    for counts in resample_counts(len(targets), n_bootstrap, seed, groups=groups):
        b = counts.shape[1]
        side = []
        for arm in (probs_kd, probs_nokd):
            per = np.stack([resampled_metric(metric, p, targets, mask, counts) for p in arm])  # (S, b)
            if len(arm) > 1:
                per = np.take_along_axis(per, rng.integers(0, len(arm), size=(len(arm), b)), axis=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                side.append(np.nanmean(per, axis=0))
        diffs.append(side[0] - side[1])
    lo, hi = percentile_ci(np.concatenate(diffs)) if diffs else (float("nan"), float("nan"))
    return {"value": float(np.mean(point_a) - np.mean(point_b)), "ci_low": lo, "ci_high": hi, "metric": metric,
            "kd": point_a, "nokd": point_b}


def _predictions(run: Path, split: str) -> dict[str, np.ndarray]:
    path = runs.RunDir(run).file(runs.predictions_file(split))
    if not path.is_file():
        raise CompareError(f"{run}: no {path.name}; run `medistill evaluate {run} --split {split}` first")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def seed_twins(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(pooled, left out)``: the rows whose runs are identical to the first row's but for the seed (and the
    fields of ``NOT_RECIPE``: paths, threads), and the others, each left-out row with ``differs_in`` (the config
    fields that make it another recipe). Runs that differ in more than the seed are not seeds of one arm."""
    first = runs.RunDir(rows[0]["run"]).config()
    pooled, left = [rows[0]], []
    for r in rows[1:]:
        diff = differences(first, runs.RunDir(r["run"]).config(), ignore=NOT_RECIPE)
        if diff:
            left.append({**r, "differs_in": diff})
        else:
            pooled.append(r)
    return pooled, left


def kd_gain(rows: list[dict[str, Any]], *, n_bootstrap: int = 1000, seed: int = 0,
            groups: np.ndarray | None = None) -> dict[str, Any] | None:
    """KD minus no-KD for the student model that has both kinds of run among ``rows`` (:func:`compare_runs`).

    ``value`` / ``ci_low`` / ``ci_high``: the first KD run against the first no-KD run (paired bootstrap on their
    common test split; over patients when ``groups`` names the patient of each of its images, in order, or when
    ``groups`` is None and the runs' predictions record patients with several images each). With
    several runs of each side that are identical but for the seed (:func:`seed_twins`): ``seeds`` holds each
    side's values and the mean gain with the seeds' standard deviations; ``pooled`` names the runs pooled and
    ``not_pooled`` the others with the fields they differ in (a no-KD run with another recipe is another baseline,
    not another seed). ``verdict``: "KD helped", "KD hurt" or "no clear difference" (the CI includes 0, or with
    seeds the mean gain is within the seeds' spread). None when there is no such pair.
    """
    kd = [r for r in rows if r["role"] == KD]
    nokd = [r for r in rows if r["role"] == NOKD and any(k["model"] == r["model"] for k in kd)]
    if not nokd:
        return None
    kd = [k for k in kd if k["model"] == nokd[0]["model"]]
    kd, kd_left = seed_twins(kd)
    nokd, nokd_left = seed_twins(nokd)
    a, b = kd[0], nokd[0]
    split = a.get("split") or "test"
    if b.get("split") != split:
        raise CompareError(f"{a['run']} was evaluated on {split}, {b['run']} on {b.get('split')}: evaluate both on one "
                           f"split")
    pa, pb = _predictions(Path(a["run"]), split), _predictions(Path(b["run"]), split)
    if pa["targets"].shape != pb["targets"].shape or not np.array_equal(pa["targets"], pb["targets"]):
        raise CompareError(f"{a['run']} and {b['run']} were evaluated on different {split} images (their targets "
                           f"differ): KD and no-KD must be scored on the same data")
    task = get_task(runs.RunDir(a["run"]).metrics()["task"])
    if groups is not None and len(groups) != len(pa["targets"]):
        raise CompareError(f"groups: {len(groups)} patient ids for the {len(pa['targets'])} {split} images of "
                           f"{a['run']}")
    if groups is None and "patients" in pa and "patients" in pb:  # runs evaluated before 2026-12-01 have none
        if not np.array_equal(pa["patients"], pb["patients"]):
            raise CompareError(f"{a['run']} and {b['run']} were evaluated on different {split} images (their "
                               f"patients differ): KD and no-KD must be scored on the same data")
        groups = patient_groups(pa["patients"])
    unit = f"{split} {bootstrap_unit(groups)}"  # e.g. "test patients (120)"
    out: dict[str, Any] = {"metric": task.main_metric, "split": split, "model": a["model"], "kd_run": a["run"],
                           "resampled": unit,
                           "nokd_run": b["run"], "method": f"paired percentile bootstrap over {unit}, "
                                                           f"{n_bootstrap} resamples, seed {seed}",
                           **paired_bootstrap_gain(task, pa["probs"], pb["probs"], pa["targets"], pa["mask"],
                                                   n_bootstrap=n_bootstrap, seed=seed, groups=groups)}
    out["pooled"] = {"kd": [r["run"] for r in kd], "nokd": [r["run"] for r in nokd]}
    out["not_pooled"] = [{"run": r["run"], "role": r["role"], "differs_in": r["differs_in"]}
                         for r in kd_left + nokd_left]
    verdict_ci = (out["ci_low"] > 0, out["ci_high"] < 0)
    if len(kd) > 1 or len(nokd) > 1:
        kv = np.array([float(r["value"]) for r in kd], dtype=float)
        nv = np.array([float(r["value"]) for r in nokd], dtype=float)
        spread = max(kv.std(ddof=1) if len(kv) > 1 else 0.0, nv.std(ddof=1) if len(nv) > 1 else 0.0)
        mean_gain = float(kv.mean() - nv.mean())
        out["seeds"] = {"kd": kv.tolist(), "nokd": nv.tolist(), "mean_gain": mean_gain,
                        "kd_std": float(kv.std(ddof=1)) if len(kv) > 1 else None,
                        "nokd_std": float(nv.std(ddof=1)) if len(nv) > 1 else None}
        verdict_ci = (verdict_ci[0] and mean_gain > spread, verdict_ci[1] and mean_gain < -spread)
    out["verdict"] = "KD helped" if verdict_ci[0] else "KD hurt" if verdict_ci[1] else "no clear difference"
    return out


def describe_gain(g: dict[str, Any]) -> str:
    """One honest sentence about :func:`kd_gain`'s result, naming the baseline it was measured against and what
    it pooled."""
    over = f" over {g['resampled']}" if "resampled" in g else ""
    against = f" against no-KD run {Path(g['nokd_run']).name}" if g.get("nokd_run") else ""
    s = (f"KD minus no-KD ({g['model']}, {g['metric']} on {g['split']}){against}: {g['value']:+.4f} "
         f"(95% CI {g['ci_low']:+.4f} to {g['ci_high']:+.4f}{over})")
    if "seeds" in g:
        sd = g["seeds"]
        s += (f"; over seeds {len(sd['kd'])} KD / {len(sd['nokd'])} no-KD runs identical but for the seed: mean "
              f"{sd['mean_gain']:+.4f}")
    s += f": {g['verdict']}."
    for r in g.get("not_pooled", []):
        s += (f" Not pooled: {Path(r['run']).name} ({r['role']}; another recipe, differs in "
              f"{', '.join(r['differs_in'][:4])}{' ...' if len(r['differs_in']) > 4 else ''}).")
    return s


# ---------------------------------------------------------------------------------------------------------
# table
# ---------------------------------------------------------------------------------------------------------

def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of :func:`compare_runs` rows; single-label runs add balanced accuracy, and a line under the
    table gives chance and the majority-class rate (what accuracy must be read against)."""
    single = any(r.get("balanced_accuracy") is not None for r in rows)
    head = ("| run | role | model | metric | value (95% CI) |" + (" balanced acc. |" if single else "")
            + " macro AUC | macro F1 | params | MACs | size | CPU latency |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        ci = r["ci95"]
        val = _num(r["value"])
        if ci and ci[0] is not None:
            val += f" ({ci[0]:.3f}-{ci[1]:.3f})"
        out.append(f"| {Path(r['run']).name} | {r['role']} | {r['model']} | {r['metric']} | {val} | "
                   + (f"{_num(r.get('balanced_accuracy'))} | " if single else "")
                   + f"{_num(r.get('macro_auc'))} | {_num(r['macro_f1'])} | {si(r['params'])} | {si(r['macs'])} | "
                   f"{si(r['size_bytes'], 'B')} | "
                   f"{'n/a' if r['latency_ms'] is None else format(r['latency_ms'], '.1f') + ' ms'} |")
    base = next((r for r in rows if r.get("majority_rate") is not None), None)
    if base is not None:
        out.append(f"\nChance {base['chance']:.4f}; always answering {base['majority_class']!r} (the training "
                   f"split's most frequent class): accuracy {base['majority_rate']:.4f}.")
    return "\n".join(out)


def _num(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4f}"


def si(v: float | None, unit: str = "") -> str:
    """``v`` with an SI suffix (k, M, G) and two decimals: 276.75M; ``n/a`` for None."""
    if v is None:
        return "n/a"
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.2f}{suf}{unit}"
    return f"{v:.0f}{unit}"
