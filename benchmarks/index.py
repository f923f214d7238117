"""Write ``benchmarks/results/INDEX.md``: every results file with its script, command, date, machine and the one
claim it supports.

    .venv/bin/python benchmarks/index.py           # rewrite INDEX.md
    .venv/bin/python benchmarks/index.py --check   # exit 1 when INDEX.md is not what this script writes

Results files are every file in ``benchmarks/results/`` (but INDEX.md) and the JSON / Markdown files directly in
``benchmarks/`` (but README.md). Each JSON is an entry; a Markdown or PNG file whose name starts with a JSON's stem
(``paper_b_full_halfmix.md``, ``paper_b_full_halfmix_brain-tumor-mri_teacher.png``) belongs to the entry of the
longest such stem. A file that belongs to no entry and has none in ``STANDALONE`` is an error, so a new results file
cannot go unlisted.

What is read from each file: the command (``command``; per dataset and per student schedule for ``paper_b_full.py``,
per phantom version for ``phantom_shortcuts.py``), the machine block and the date (``date`` / ``updated``) where
recorded. ``COMMANDS`` and ``DATES`` fill in what a file does not record, and say so in the index. The claim is the
function of the file's numbers in ``CLAIMS``: the wording is written here, every figure in it is read from the
JSON, so a claim cannot drift from its file. ``medistill study`` results (``results/study_*.json``, e.g.
``study_brain_tumour.json`` and ``study_alzheimer.json``) need no entry here: they are listed when present, with
their ``command``, ``latency.machine_load`` and, as the claim, their own ``sentences``.

KD against no KD is judged one way throughout: the verdict ``medistill compare`` recorded (``kd_gain``: "KD helped"
only when seed 0's paired bootstrap CI is above zero and the mean gain over seeds exceeds the larger seed spread),
else the spread rule alone: a mean gain within the larger of the two sample standard deviations over seeds is "no
clear difference", one beyond it "KD ahead (behind) beyond the seeds' spread" (no CI, so never "KD helped").
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
INDEX = RESULTS / "INDEX.md"
NOT_RESULTS = {BENCH / "README.md", INDEX}
STUDY_PREFIX = "study_"  # results/study_*.json: written by `medistill study`

#: the script that writes each JSON (by file name), and the results file the script writes without ``--results``
SCRIPTS = {"paper_b_full.py": "paper_b_full.json", "explain_fidelity.py": "explain_fidelity.json",
           "cpu_speed.py": "cpu_speed.json", "quickstart_kd_grid.py": "quickstart_kd_grid.json",
           "paper_b_kdfmv.py": None, "paper_a_multilabel.py": None, "kd_speed.py": None,
           "phantom_shortcuts.py": None, "explain_time.py": None, "ondevice.py": None,
           "int8_accuracy.py": "int8_accuracy.json", "explain_neutral.py": "explain_neutral.json"}
#: default ``--runs`` of the scripts that record theirs in ``settings`` but not in the command
DEFAULT_RUNS = {"paper_b_full.py": "runs/bench/paper_b_full"}

#: commands of files that record none (as the run's notes in benchmarks/README.md gave them)
COMMANDS = {
    "kd_speed.json": "PYTHONPATH=/tmp/td-env .venv/bin/python benchmarks/kd_speed.py --teacher "
                     "runs/bench/kd_speed/teacher_densenet121 --rounds 4 --epochs 3",
    "ondevice.json": ".venv/bin/python benchmarks/ondevice.py",
}

#: dates of files that record none: the day the file was last committed
DATES = {
    "explain_neutral_resnet18.json": "2026-12-06", "explain_fidelity_nih.json": "2026-12-06",
    "cpu_speed.json": "2026-11-30", "explain_fidelity.json": "2026-11-30",
    "explain_fidelity_e12_n200.json": "2026-11-30", "explain_fidelity_e12_n200_fuse32.json": "2026-11-30",
    "explain_fidelity_e12_n200_fuse32_trained.json": "2026-11-30", "explain_fidelity_e12_n200_m16.json": "2026-11-30",
    "kd_speed.json": "2026-11-30", "paper_b_full.json": "2026-11-30",
    "paper_b_full_alzheimer_grouped.json": "2026-12-01", "paper_b_full_alzheimer_subjects.json": "2026-12-01",
    "paper_b_full_alzheimer_subjects_plain.json": "2026-12-01",
    "paper_b_full_alzheimer_subjects_px64.json": "2026-12-01",
    "paper_b_full_alzheimer_subjects_px64_eeea.json": "2026-12-01",
    "paper_b_full_alzheimer_subjects_split1.json": "2026-12-01",
    "paper_b_full_alzheimer_subjects_split1_px64.json": "2026-12-01",
    "paper_b_full_alzheimer_subjects_split2_px64.json": "2026-12-01", "paper_b_full_alzheimer_t176.json": "2026-11-30",
    "paper_b_full_alzheimer_t176_e30.json": "2026-11-30", "paper_b_full_alzheimer_t176_fm.json": "2026-11-30",
    "paper_b_full_alzheimer_t176_halfmix.json": "2026-11-30", "paper_b_full_brain_clean.json": "2026-12-01",
    "paper_b_full_eeea_e40.json": "2026-11-30", "paper_b_full_halfmix.json": "2026-11-30",
    "quickstart_kd_grid.json": "2026-11-30", "explain_time.json": "2026-11-22",
}


@dataclass
class Standalone:
    """A results file without a JSON: everything written here, and the claim's figures must appear in the file."""

    script: str
    command: str
    note: str
    date: str
    machine: str
    claim: str


STANDALONE = {
    "explain_fidelity_poly_val.md": Standalone(
        script="explain_fidelity.py",
        command="nice -n 10 .venv/bin/python benchmarks/explain_fidelity.py --images 2000 --threads 1 "
                "--student-epochs 12 --seeds 3 --weight-sweep '' --e2kd-labels predicted --no-nih --explain-images 200 "
                "--variants nokd,kd --stage train",
        note="and the same with --variants e2kd_gs_pred; the validation scores came from a scratch driver calling "
             "the script's explain() as --select-cam auto:8,fuse:32,poly:32 would, so this command trains the runs "
             "but does not write the file",
        date="2026-12-01", machine="AMD EPYC, 2 cores; two benchmark processes of 1 thread shared it",
        claim="On the phantom's validation split (seed 0), Poly-CAM refinement (poly:32) points at the lesion less "
              "often than fusion (fuse:32) for every student: no KD 0.523 against 0.647, KD 0.490 against 0.662, "
              "e2KD 0.396 against 0.681 (strict pointing game per label); not run on the test images."),
}


# --------------------------------------------------------------------------------------------------------------
# reading numbers
# --------------------------------------------------------------------------------------------------------------

def pct(v: float) -> str:
    return f"{100 * v:.2f} %"


def mean_sd(values: list[float | None]) -> tuple[float, float, int]:
    """Mean and sample standard deviation (0 for one value) of the values present, and how many there are."""
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals)


def acc_text(values: list[float | None]) -> str:
    m, s, n = mean_sd(values)
    return f"{100 * m:.2f} ± {100 * s:.2f} % ({n} seeds)" if n > 1 else f"{100 * m:.2f} % (1 seed)"


def verdict(kd: list[float | None], nokd: list[float | None], gain: dict[str, Any] | None = None) -> str:
    """The recorded ``medistill compare`` verdict, else the spread rule (module docstring)."""
    if gain and gain.get("verdict"):
        return gain["verdict"]
    (mk, sk, _), (mn, sn, _) = mean_sd(kd), mean_sd(nokd)
    if abs(mk - mn) <= max(sk, sn):
        return "no clear difference"
    return f"KD {'ahead' if mk > mn else 'behind'} beyond the seeds' spread"


def kd_vs_nokd(sched: dict[str, Any], model: str) -> str:
    """``KD 92.32 ± 1.27 % against no KD 91.59 ± 0.40 % (3 seeds): +0.73 points, no clear difference``."""
    s = sched["students"][model]
    gain = (sched.get("kd_gain") or {}).get(model)
    diff = 100 * (mean_sd(s["kd"])[0] - mean_sd(s["nokd"])[0])
    mixed = (f" (the no-KD arm mixed {'on every image' if sched.get('mix_prob', 1.0) >= 1 else 'too'}, as KD's "
             f"function matching needed: not the best no-KD recipe)" if sched.get("mixup", 0) or sched.get("cutmix", 0)
             else "")
    return (f"KD {acc_text(s['kd'])} against no KD {acc_text(s['nokd'])}: {diff:+.2f} points, "
            f"{verdict(s['kd'], s['nokd'], gain)}{mixed}")


def only(d: dict[str, Any]) -> dict[str, Any]:
    """The one dataset of a ``paper_b_full.py`` results file."""
    (part,) = d.values()
    return part


def sched_of(part: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    return part["schedules"][key or part["current"]]


def last_epoch_text(sched: dict[str, Any], model: str) -> str:
    w = sched["last_epoch"][model]
    diff = 100 * (mean_sd(w["kd"])[0] - mean_sd(w["nokd"])[0])
    return (f"at the last epoch KD {acc_text(w['kd'])} against {acc_text(w['nokd'])}: {diff:+.2f} points, "
            f"{verdict(w['kd'], w['nokd'])}")


def subjects_px64(d: dict[str, Any]) -> str:
    """Both students at 15 and 40 epochs on one subject draw."""
    part = only(d)
    parts = []
    for key in sorted(part["schedules"], key=lambda k: part["schedules"][k]["student_epochs"]):
        sched = part["schedules"][key]
        for model in ("kdfmv", "eeea_net_c2"):
            if model not in sched.get("students", {model: None}) and model not in sched.get("last_epoch", {}):
                continue
            try:
                text = kd_vs_nokd(sched, model)
            except KeyError:  # the file holds no run of this student for this schedule
                continue
            last = f"; {last_epoch_text(sched, model)}" if model in sched.get("last_epoch", {}) else \
                "; no last-epoch reading recorded"
            parts.append(f"{model} {sched['student_epochs']} epochs: {text}{last}")
    return (f"Alzheimer, 40 unseen test subjects (split seed {part['settings']['split_seed']}), 64 px students with "
            f"function matching, teacher {pct(part['teacher']['accuracy'])}: " + ". ".join(parts) + ".")


def seeds(n: int) -> str:
    return "1 seed" if n == 1 else f"means over {n} seeds"


def gs_pointing(d: dict[str, Any], student: str, what: str) -> str:
    """The e2KD-on-GradientShap-maps student against plain KD: Grad-CAM pointing game per label and macro AUC."""
    m = d["phantom"]["models"]
    e, k = m[student], m["kd"]
    n = seeds(e["seeds"]) if e["seeds"] == k["seeds"] else f"{seeds(e['seeds'])} and {seeds(k['seeds'])}"
    return (f"{what}: the e2KD student taught the teacher's GradientShap maps points at the lesion in "
            f"{e['pointing_game_label_mean']:.3f} of Grad-CAM maps per label (strict) against "
            f"{k['pointing_game_label_mean']:.3f} for plain KD, at macro AUC {e['macro_auc']:.3f} against "
            f"{k['macro_auc']:.3f} ({n}; the file keeps no per-seed pointing game)")


# --------------------------------------------------------------------------------------------------------------
# the claims: one per JSON, its figures read from the JSON
# --------------------------------------------------------------------------------------------------------------

def _paper_b_full(d: dict[str, Any]) -> str:
    bt, az = d["brain-tumor-mri"], d["alzheimer-mri"]
    rows = {(k, m): verdict(s["students"][m]["kd"], s["students"][m]["nokd"], (s.get("kd_gain") or {}).get(m))
            for k, s in bt["schedules"].items() for m in s["students"]
            if s["students"][m]["kd"] and s["students"][m]["nokd"]}
    helped = [km for km, v in rows.items() if v == "KD helped"]
    others = sorted({v for v in rows.values() if v != "KD helped"})
    k, m = helped[0]
    return (f"Brain tumour MRI, every image, teacher {pct(bt['teacher']['accuracy'])}: of {len(rows)} student / "
            f"schedule pairs with both KD and no-KD seeds, KD helped in {len(helped)} ({m}, {k}: "
            f"{kd_vs_nokd(bt['schedules'][k], m)}); the others: {', '.join(others)}. Alzheimer MRI "
            f"(official test folder, teacher {pct(az['teacher']['accuracy'])}): kdfmv "
            f"{kd_vs_nokd(sched_of(az), 'kdfmv')}.")


def _paper_b_reduced(d: dict[str, Any]) -> str:
    g = d["summary"]["groups"]
    teacher = next(v for k, v in g.items() if k.startswith("teacher"))
    out = []
    for model in ("kdfmv", "eeea_net_c2"):
        kd = next(v for k, v in g.items() if k.startswith(f"{model} KD"))
        nokd = g[f"{model} no KD"]
        diff = 100 * (kd["accuracy"]["mean"] - nokd["accuracy"]["mean"])
        out.append(f"{model} KD {acc_text(kd['accuracy']['values'])} against no KD "
                   f"{acc_text(nokd['accuracy']['values'])} ({diff:+.2f} points, "
                   f"{verdict(kd['accuracy']['values'], nokd['accuracy']['values'])})")
    s = d["settings"]
    return (f"Reduced scale ({d['dataset']}, {s['image_size']} px, {s['limit']} images per split, teacher DenseNet121 "
            f"from scratch at {acc_text(teacher['accuracy']['values'])}): " + "; ".join(out) + ".")


def _paper_a(d: dict[str, Any]) -> str:
    r = d["runs"]
    aucs = [v["macro_auc"] for v in r.values()]
    kd, nokd = r["student_kd"], r["student_nokd"]
    overlap = kd["auc_ci95"][0] <= nokd["auc_ci95"][1] and nokd["auc_ci95"][0] <= kd["auc_ci95"][1]
    return (f"A smoke check of paper A's multi-label pipeline on {d['dataset']} (2 epochs, 128 images per split, "
            f"64 px, 1 seed), not a result: every macro AUC is {min(aucs):.3f}-{max(aucs):.3f}, near chance; KD "
            f"{kd['macro_auc']:.3f} against no KD {nokd['macro_auc']:.3f}"
            + (", inside each other's bootstrap CI: no clear difference." if overlap else "."))


def _alz_t176(label: str) -> Callable[[dict[str, Any]], str]:
    def claim(d: dict[str, Any]) -> str:
        part = only(d)
        return (f"Alzheimer MRI, official test folder, teacher at 176 px ({pct(part['teacher']['accuracy'])}), kdfmv "
                f"at 128 px, {label}: {kd_vs_nokd(sched_of(part), 'kdfmv')}.")
    return claim


def _one_schedule(what: str, model: str = "kdfmv") -> Callable[[dict[str, Any]], str]:
    def claim(d: dict[str, Any]) -> str:
        part = only(d)
        return f"{what}, teacher {pct(part['teacher']['accuracy'])}: {model} {kd_vs_nokd(sched_of(part), model)}."
    return claim


def _brain_clean(d: dict[str, Any]) -> str:
    part = only(d)
    sched = sched_of(part)
    w = sched["without_near_copies"]["kdfmv"]
    n_new = w["test_images"] - w["near_copies"]
    diff = 100 * (mean_sd(w["kd"])[0] - mean_sd(w["nokd"])[0])
    return (f"Brain tumour MRI, kdfmv at 64 px with function matching: on all {w['test_images']} test images "
            f"{kd_vs_nokd(sched, 'kdfmv')}; on the {n_new} test images without a near copy in training KD "
            f"{acc_text(w['kd'])} against {acc_text(w['nokd'])} ({diff:+.2f} points, {verdict(w['kd'], w['nokd'])}), "
            f"where the teacher scores {pct(w['teacher'][0])} (all images {pct(part['teacher']['accuracy'])}).")


def _grouped(d: dict[str, Any]) -> str:
    part = only(d)
    t = part["runs"]["teacher"]
    return (f"Teacher only: with validation drawn by subject (best epoch {t['best_epoch']}, validation "
            f"{pct(t['best_val_accuracy'])}), the Alzheimer teacher scores {pct(part['teacher']['accuracy'])} on the "
            f"official test folder; no students.")


def _cpu_speed(d: dict[str, Any]) -> str:
    t = [v["nhwc_bf16"]["ratio"] for v in d["teachers"].values()]
    s = [v["nhwc"]["ratio"] for v in d["students"].values()]
    return (f"Per batch of {d['batch_size']} on this CPU, channels-last bf16 teacher inference takes "
            f"{min(t):.2f}-{max(t):.2f}x the NCHW fp32 time ({len(t)} teacher / size pairs), and a channels-last "
            f"student training step {min(s):.2f}-{max(s):.2f}x the NCHW one ({len(s)} students).")


def _kd_speed(d: dict[str, Any]) -> str:
    td, plain = d["ratio_vs_torchdistill"], d["ratio_vs_plain_student"]
    s = d["settings"]
    return (f"Seconds per KD epoch ({s['student']} from a DenseNet121, {s['limit']} images at {s['image_size']} px, "
            f"{s['threads']} threads, {s['rounds']} rounds): medistill's online KD takes "
            f"{td['medistill_online']:.2f}x torchdistill's epoch; cached consistent KD "
            f"{plain['medistill_views']:.2f}x the plain student's epoch, online consistent KD "
            f"{plain['medistill_online_aug']:.2f}x.")


def _quickstart_grid(d: dict[str, Any]) -> str:
    r = d["runs"]
    at = {k.split("_T")[1]: r[k]["val_macro_auc"] for k in r if k.startswith("a0.5_")}
    low = min(at, key=at.get)
    return (f"The quickstart's best validation macro AUC at alpha 0.5 by temperature: "
            + ", ".join(f"T {t} {v:.3f}" for t, v in at.items())
            + f"; no KD {r['nokd']['val_macro_auc']:.3f}. T {low} scores lowest; one run each, so the file records "
              f"no spread to judge the smaller differences by.")


def _phantom_shortcuts(d: dict[str, Any]) -> str:
    labels = d["v2"]["counterfactual"]["labels"]
    diff = max(v["max_pixel_diff_outside_mask"] for v in labels.values())
    auc = [v["auc_removed_vs_negatives"] for v in labels.values()]
    same = "is identical to the original" if diff == 0 else f"differs from the original by at most {diff}"
    return (f"Phantom v2: an image drawn again with its finding switched off {same} outside the finding's mask, "
            f"and the trained classifier's probability tells those images from real negatives at AUC "
            f"{min(auc):.2f}-{max(auc):.2f} over the {len(labels)} labels (0.5 = chance).")


def _explain_time(d: dict[str, Any]) -> str:
    cpu = d["speedup_teacher_over_student"]["cpu"]
    teacher = {r["method"]: r["cpu_seconds_per_image"] for r in d["results"] if r["role"] == "teacher"}
    return (f"At {d['size']} px with random weights, Grad-CAM costs the DenseNet121 teacher {teacher['gradcam']:.3f} "
            f"CPU seconds per image, {cpu['gradcam: densenet121 / eeea_net_c2']:.1f}x EEEA-Net-C2's and "
            f"{cpu['gradcam: densenet121 / kdfmv']:.1f}x kdfmv's; GradientShap {teacher['gradientshap']:.2f} s, "
            f"{cpu['gradientshap: densenet121 / eeea_net_c2']:.1f}x and "
            f"{cpu['gradientshap: densenet121 / kdfmv']:.1f}x.")


def _ondevice(d: dict[str, Any]) -> str:
    def one(name: str, m: dict[str, Any]) -> str:
        b, r = m["latency_ms"]["batch_1"], m["ratios"]
        int8 = ", ".join(f"{NAMES[p]} {v:.2f}x" for p, v in r.get("int8_speedup", {}).items())
        teacher = r.get("teacher_vs_student", {})
        return (f"{name}: ONNX Runtime fp32 median {b['ort_fp32']['median_ms']:.1f} ms "
                f"({r['fp32_vs_flop_limit']['ort']:.2f}x the FLOP limit), INT8 faster than fp32 by {int8}"
                + (f", explain graph {r['explain_vs_plain']['ort']:.2f}x the plain one" if "explain_vs_plain" in r
                   else "")
                + (f"; the {m['teacher']['model']} teacher {teacher['ort_fp32']:.1f}x slower in ONNX Runtime fp32, "
                   f"{teacher['torch_fp32']:.1f}x in PyTorch" if "ort_fp32" in teacher and "torch_fp32" in teacher
                   else ""))

    if "models" not in d:  # written before issue 39: EEEA-Net-C2 only, the teacher in PyTorch only
        b, r = d["latency_ms"]["batch_1"], d["ratios"]
        return (f"EEEA-Net-C2 at {d['input']['size']} px, batch 1, {d['threads']} threads: ONNX Runtime fp32 median "
                f"{b['ort_fp32']['median_ms']:.1f} ms ({r['ort_fp32_vs_flop_limit']:.2f}x the FLOP limit), INT8 "
                f"{b['ort_int8']['median_ms']:.1f} ms, explain graph {b['ort_explain']['median_ms']:.1f} ms; the "
                f"DenseNet161 teacher in PyTorch {b['teacher_torch_fp32']['median_ms']:.1f} ms (its ratio to the ONNX "
                f"Runtime student crosses runtimes).")
    models = d["models"]
    first = next(iter(models.values()))
    return (f"At {first['input']['size']} px, batch 1, {first['threads']} threads, every ratio within one runtime: "
            + "; ".join(one(n, m) for n, m in models.items()) + ".")


NAMES = {"ort": "ONNX Runtime", "openvino": "OpenVINO", "torch": "PyTorch"}


def _int8_accuracy(d: dict[str, Any]) -> str:
    parts = []
    for ds, models in d["results"].items():
        for model, r in models.items():
            deltas = ", ".join(f"{NAMES[v['runtime'] if v['runtime'] != 'onnxruntime' else 'ort']} "
                               f"{v['macro_auc_delta']:+.4f}" for v in r["test"].values()
                               if v["precision"] == "int8" and "macro_auc_delta" in v)
            parts.append(f"{model} on {ds} ({r['epochs']} epochs, {r['test_images']} test images, fp32 "
                         f"{r['test']['ort_fp32']['macro_auc']:.3f}): {deltas}")
    return (f"INT8 minus fp32 test macro AUC of students trained at {d['settings']['size']} px: " + "; ".join(parts) + f" (target: within {d['settings']['target_macro_auc']}).")


def _fidelity_4(d: dict[str, Any]) -> str:
    t = d["phantom"]["models"]["teacher"]
    o = d["phantom"]["teacher_occlusion"]
    return (gs_pointing(d, "e2kd_gs_pred", "Phantom, 4-epoch kdfmv students, 40 test images")
            + f"; the teacher's own Grad-CAM points in {t['pointing_game_label_mean']:.3f}, its occlusion maps in "
              f"{o['pointing_game_label_mean']:.3f}.")


def _fidelity_m16(d: dict[str, Any]) -> str:
    return gs_pointing(d, "e2kd_gs_pred", "e2KD trained and explained at the 16 x 16 stage (12-epoch students, "
                                          "200 test images)") + "."


def _fidelity_fuse32(d: dict[str, Any]) -> str:
    m = d["phantom"]["models"]
    pg = {k: m[k]["pointing_game_label_mean"] for k in ("teacher", "nokd", "kd", "e2kd_gs_pred")}
    return (f"Explained with Grad-CAM fused from the 32 px stage (chosen on validation), the 12-epoch students point "
            f"at the lesion in {pg['nokd']:.3f} (no KD), {pg['kd']:.3f} (KD) and {pg['e2kd_gs_pred']:.3f} (e2KD on "
            f"GradientShap maps) of maps per label (strict, 200 test images, means over 3 seeds); the teacher's "
            f"Grad-CAM in {pg['teacher']:.3f}.")


def _fidelity_fuse32_trained(d: dict[str, Any]) -> str:
    return gs_pointing(d, "e2kd_gs_pred", "e2KD trained on the fused 32 x 32 map, explained fused from 32 px "
                                          "(200 test images)") + "."


def _fidelity_nih(d: dict[str, Any]) -> str:
    n = d["nih_boxes"]
    m = n["models"]
    return (f"NIH sample, the {n['explained_images']} boxed images explained ({n['maps_with_truth']} maps, all in the "
            f"training split; chance {n['chance']:.3f}), one seed: Grad-CAM strict pointing game "
            + ", ".join(f"{k} {r['pointing_game']:.3f}" for k, r in m.items())
            + f"; the teacher's test macro AUC is {m['teacher']['macro_auc']:.3f}"
            + (", so these models have barely learned the findings and the maps show nothing either way."
               if m["teacher"]["macro_auc"] < 0.7 else "."))


def _neutral_teacher(p: dict[str, Any]) -> str:
    return p.get("teacher", "efficientnet_lite0") + ("" if p.get("teacher_pretrained", True) else " from scratch")


def _neutral(d: dict[str, Any]) -> str:
    p = d["phantom"]
    row = lambda m: ", ".join(f"{k.removesuffix('_pg')} {m[k]:.3f}" for k in  # noqa: E731
                              ("gradcam_pg", "fuse_pg", "gradientshap_pg", "occlusion_pg", "randomised_pg")
                              if m.get(k) is not None)
    models = p.get("models", {})
    if not models:
        return f"Phantom at {p['image_size']} px: no test figures yet (a run stopped before its first table row)."
    text = (f"Phantom at {p['image_size']} px, {p.get('explained_images')} test images, strict pointing game "
            f"(chance {p['chance']:.3f}), means over seeds: " + "; ".join(
                f"{_neutral_teacher(p) if name == 'teacher' else name} ({m['seeds']} "
                f"seed{'s' if m['seeds'] > 1 else ''}, macro AUC {m['macro_auc']:.3f}): {row(m)}"
                for name, m in models.items()))
    if p.get("selection"):
        text += f"; e2kd = {p['selection']['chosen']}, chosen on validation"
    targets = p.get("targets") or {}
    if targets:
        text += "; targets: " + ", ".join(f"{_NEUTRAL_TARGETS.get(k, k)} {'met' if t['met'] else 'missed'}"
                                          for k, t in targets.items())
    diffs = {k: v for k, v in (p.get("e2kd_minus_kd") or {}).items() if v.get("difference") is not None}
    if diffs:
        text += "; e2kd - kd " + ", ".join(f"{k.removesuffix('_pg')} {v['difference']:+.3f} [{v['ci95'][0]:+.3f}, "
                                           f"{v['ci95'][1]:+.3f}]" for k, v in diffs.items())
    return text + "."


#: explain_neutral.json's target keys -> the words the index gives them
_NEUTRAL_TARGETS = {"e2kd_gradientshap_pg_ge_kd_plus_0.05": "GradientShap >= kd + 0.05",
                    "e2kd_occlusion_pg_ge_kd_plus_0.05": "occlusion >= kd + 0.05",
                    "e2kd_macro_auc_within_0.01_of_kd": "macro AUC within 0.01 of kd"}


CLAIMS: dict[str, Callable[[dict[str, Any]], str]] = {
    "explain_neutral.json": _neutral,
    "explain_neutral_resnet18.json": _neutral,
    "explain_neutral_densenet121.json": _neutral,
    "explain_time.json": _explain_time,
    "ondevice.json": _ondevice,
    "int8_accuracy.json": _int8_accuracy,
    "cpu_speed.json": _cpu_speed,
    "kd_speed.json": _kd_speed,
    "quickstart_kd_grid.json": _quickstart_grid,
    "phantom_shortcuts.json": _phantom_shortcuts,
    "explain_fidelity.json": _fidelity_4,
    "explain_fidelity_e12_n200.json": lambda d: gs_pointing(d, "e2kd_gs_pred", "Phantom, 12-epoch kdfmv students, "
                                                                             "200 test images") + ".",
    "explain_fidelity_e12_n200_m16.json": _fidelity_m16,
    "explain_fidelity_nih.json": _fidelity_nih,
    "explain_fidelity_e12_n200_fuse32.json": _fidelity_fuse32,
    "explain_fidelity_e12_n200_fuse32_trained.json": _fidelity_fuse32_trained,
    "paper_a_nih.json": _paper_a,
    "paper_a_phantom.json": _paper_a,
    "paper_b_alzheimer-mri.json": _paper_b_reduced,
    "paper_b_brain-tumor-mri.json": _paper_b_reduced,
    "paper_b_brain-tumor-mri_96px_l1000.json": _paper_b_reduced,
    "paper_b_full.json": _paper_b_full,
    "paper_b_full_alzheimer_grouped.json": _grouped,
    "paper_b_full_alzheimer_subjects.json": _one_schedule(
        "Alzheimer MRI, 40 unseen test subjects (split seed 0), kdfmv at 128 px with function matching"),
    "paper_b_full_alzheimer_subjects_plain.json": _one_schedule(
        "Alzheimer MRI, 40 unseen test subjects (split seed 0), kdfmv at 128 px with plain cached KD (no mixing)"),
    "paper_b_full_alzheimer_subjects_split1.json": _one_schedule(
        "Alzheimer MRI, 40 unseen test subjects (split seed 1), kdfmv at 128 px with function matching"),
    "paper_b_full_alzheimer_subjects_px64.json": subjects_px64,
    "paper_b_full_alzheimer_subjects_px64_eeea.json": subjects_px64,
    "paper_b_full_alzheimer_subjects_split1_px64.json": subjects_px64,
    "paper_b_full_alzheimer_subjects_split2_px64.json": subjects_px64,
    "paper_b_full_alzheimer_t176.json": _alz_t176("20 epochs, plain cached KD"),
    "paper_b_full_alzheimer_t176_e30.json": _alz_t176("30 epochs, plain cached KD"),
    "paper_b_full_alzheimer_t176_fm.json": _alz_t176("20 epochs, function matching (every image mixed)"),
    "paper_b_full_alzheimer_t176_halfmix.json": _alz_t176("20 epochs, function matching (half the images mixed)"),
    "paper_b_full_brain_clean.json": _brain_clean,
    "paper_b_full_eeea_e40.json": _one_schedule("Brain tumour MRI, eeea_net_c2 at 64 px, 40 epochs, plain cached KD",
                                                "eeea_net_c2"),
    "paper_b_full_halfmix.json": _one_schedule(
        "Brain tumour MRI, kdfmv at 128 px, 20 epochs, function matching on half the images"),
}


# --------------------------------------------------------------------------------------------------------------
# commands, machines, dates
# --------------------------------------------------------------------------------------------------------------

def machine_text(m: dict[str, Any] | None) -> str:
    """One line from any machine block the scripts write (``_bench.machine``, ``explain_time``'s, ``ondevice``'s)."""
    if not m:
        return "not recorded"
    parts = [m.get("cpu") or m.get("cpu_model") or "CPU not recorded"]
    if m.get("cores") or m.get("cpu_count"):
        parts.append(f"{m.get('cores') or m.get('cpu_count')} cores")
    if m.get("torch_threads"):
        parts.append(f"{m['torch_threads']} torch thread(s)")
    line = ", ".join(parts)
    if m.get("shared"):
        return f"{line}; {m['shared']}"
    load = m.get("load_average_1_5_15")
    return f"{line}; 1-minute load average {load[0]:.1f} when written" if load else line


def study_machine(d: dict[str, Any]) -> str:
    load = (d.get("latency") or {}).get("machine_load")
    if not load:
        return "not recorded"
    def one(x: dict[str, Any]) -> str:
        busy = {True: "busy", False: "not busy", None: "unknown"}[x.get("busy")]
        return f"load {x.get('load_per_cpu')} per CPU of {x.get('cpus')} ({busy})"
    return f"latency timed at {one(load['before'])} before, {one(load['after'])} after"


def full_command(recorded: str, script: str, name: str, settings: dict[str, Any] | None) -> str:
    """``recorded`` as the script takes it today: with the ``--runs`` / ``--results`` it needs to rewrite ``name``
    (older runs did not record them; without them the command would read other runs or write the script's default
    file), on / off flags as ``--x`` / ``--no-x`` (older runs recorded ``--x True``) and an empty value quoted
    (older runs recorded ``--weight-sweep`` followed by nothing)."""
    cmd = re.sub(r"(--[\w-]+) True\b", r"\1", recorded)
    cmd = re.sub(r"--([\w-]+) False\b", r"--no-\1", cmd)
    cmd = re.sub(r"(--[\w-]+)  (?=--)", r"\1 '' ", cmd)
    runs = (settings or {}).get("runs")
    if script in DEFAULT_RUNS and runs and runs != DEFAULT_RUNS[script] and "--runs" not in cmd:
        cmd += f" --runs {runs}"
    if SCRIPTS.get(script) and name != SCRIPTS[script] and "--results" not in cmd:
        cmd += f" --results benchmarks/results/{name}"
    return cmd


@dataclass
class Entry:
    name: str  # path relative to benchmarks/
    script: str
    date: str
    claim: str
    runs: list[tuple[str, str, str, str]] = field(default_factory=list)  # (what, command, note, machine)
    files: list[str] = field(default_factory=list)


def script_of(name: str, d: dict[str, Any]) -> str:
    stem = Path(name).stem
    for script in SCRIPTS:
        if stem == Path(script).stem or stem.startswith(Path(script).stem + "_"):
            return script
    if stem.startswith("paper_b_") and "summary" in d:
        return "paper_b_kdfmv.py"
    if stem.startswith("paper_a_"):
        return "paper_a_multilabel.py"
    raise SystemExit(f"index.py: no script known for {name}: add it to SCRIPTS")


def json_date(d: dict[str, Any], name: str) -> str:
    found = sorted({str(v.get(k))[:10] for v in [d, *[x for x in d.values() if isinstance(x, dict)]]
                    for k in ("date", "updated") if isinstance(v.get(k), str)})
    if found:
        return " to ".join(dict.fromkeys([found[0], found[-1]]))
    if name in DATES:
        return f"{DATES[name]} (committed; the file records none)"
    return "not recorded"


def json_entry(path: Path) -> Entry:
    name = path.name
    rel = str(path.relative_to(BENCH))
    d = json.loads(path.read_text(encoding="utf-8"))
    if name.startswith(STUDY_PREFIX):
        sentences = d.get("sentences") or ["(the file holds no sentences yet)"]
        return Entry(rel, "`medistill study`", json_date(d, name), " ".join(sentences),
                     [("", d.get("command") or "", "" if d.get("command") else "not recorded", study_machine(d))])
    if name not in CLAIMS:
        raise SystemExit(f"index.py: no claim for {rel}: add a function of its numbers to CLAIMS")
    script = script_of(name, d)
    runs: list[tuple[str, str, str, str]] = []
    if script == "paper_b_full.py":
        for ds, part in d.items():
            if not part.get("schedules"):  # a teacher alone
                runs.append((ds, full_command(part["command"], script, name, part.get("settings")), "",
                             machine_text(part.get("machine"))))
            for key, sched in (part.get("schedules") or {}).items():
                machines = {machine_text(m) for m in (sched.get("machines") or {}).values()}
                if not machines and sched.get("machine"):
                    machines = {machine_text(sched["machine"])}
                machine = "; ".join(sorted(machines)) if machines else (
                    f"{machine_text(part.get('machine'))} (when the file was last written: the schedule records none)")
                runs.append((f"{ds}, {key}", full_command(sched["command"], script, name, part.get("settings")), "",
                             machine))
    elif script == "phantom_shortcuts.py":
        runs = [(f"phantom {v}", part["command"], f"at commit {part['commit']}" if part.get("commit") else "",
                 machine_text(part.get("machine"))) for v, part in d.items()]
    else:
        recorded = d.get("command") or COMMANDS.get(name)
        if recorded is None:
            raise SystemExit(f"index.py: {rel} records no command: add it to COMMANDS")
        note = "" if "command" in d else "not recorded in the file"
        machine = d.get("machine") or {}
        if "machine_before" in d:  # explain_time.py
            machine = {**d["machine_before"], "shared": f"1-minute load average "
                       f"{d['machine_before']['load_average_1_5_15'][0]:.1f} before, "
                       f"{d['machine_after']['load_average_1_5_15'][0]:.1f} after"}
        if "shared_machine" in d:  # ondevice.py
            machine = {**machine, "shared": f"{'shared' if d['shared_machine'] else 'not shared'}: 1-minute load "
                                            f"average {d['load_average_at_start'][0]:.2f} at the start"}
        runs = [("", full_command(recorded, script, name, d.get("settings")), note, machine_text(machine))]
    return Entry(rel, f"`benchmarks/{script}`", json_date(d, name), CLAIMS[name](d), runs)


def result_files() -> list[Path]:
    files = [p for p in RESULTS.iterdir() if p.is_file()]
    files += [p for p in BENCH.iterdir() if p.is_file() and p.suffix in (".json", ".md")]
    return sorted(p for p in files if p not in NOT_RESULTS and not p.name.startswith("."))


def entries() -> list[Entry]:
    files = result_files()
    out = {p: json_entry(p) for p in files if p.suffix == ".json"}
    for p in files:
        if p.suffix == ".json":
            continue
        if p.name in STANDALONE:
            s = STANDALONE[p.name]
            out[p] = Entry(str(p.relative_to(BENCH)), f"`benchmarks/{s.script}`", s.date, s.claim,
                           [("", s.command, s.note, s.machine)])
            continue
        owners = [j for j in out if j.suffix == ".json" and j.parent == p.parent
                  and (p.name.startswith(j.stem + ".") or p.name.startswith(j.stem + "_"))]
        if not owners:
            raise SystemExit(f"index.py: {p.relative_to(BENCH)} belongs to no results JSON: add it to STANDALONE")
        out[max(owners, key=lambda j: len(j.stem))].files.append(str(p.relative_to(BENCH)))
    return sorted(out.values(), key=lambda e: (not e.name.startswith("results/"), e.name))


def companion(rel: str) -> str:
    if rel.endswith("_teacher.png"):
        return "the teacher's validation accuracy by epoch"
    if rel.endswith(".md"):
        return "the same results as Markdown"
    return "written by the same run"


def markdown(es: list[Entry]) -> str:
    lines = [
        "# Results index",
        "",
        "Written by `benchmarks/index.py` from the results files themselves; do not edit it by hand: run "
        "`.venv/bin/python benchmarks/index.py` after adding or rewriting a results file "
        "(`tests/test_benchmarks_index.py` fails when this page is stale or misses a file).",
        "",
        "Every claim's figures are read from its file. KD against no KD: the verdict `medistill compare` recorded "
        "(\"KD helped\" only when seed 0's paired bootstrap CI is above zero and the mean gain over seeds exceeds the "
        "larger seed spread), else \"no clear difference\" when the mean gain is within the larger seed standard "
        "deviation. Accuracies are test accuracies at each run's best validation epoch unless the claim says "
        "otherwise. Dates a file does not record are the day it was last committed. Commands are as recorded, in the "
        "script's current flag syntax and with the `--runs` / `--results` that older runs did not record.",
        "",
        "| file | script | date | claim |",
        "|---|---|---|---|",
    ]
    lines += [f"| `{e.name}` | {e.script} | {e.date} | {e.claim} |" for e in es]
    lines += ["", "## Commands, machines and companion files", ""]
    for e in es:
        lines += [f"### `{e.name}`", ""]
        for what, command, note, machine in e.runs:
            text = " ".join(x for x in (f"{what}:" if what else "", f"`{command}`" if command else "",
                                        f"({note})" if note else "") if x)
            lines += [f"- {text}", f"  - machine: {machine}"]
        lines += [f"- `{f}`: {companion(f)}" for f in e.files]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 when INDEX.md differs from what would be written")
    a = p.parse_args()
    text = markdown(entries())
    if a.check:
        ok = INDEX.is_file() and INDEX.read_text(encoding="utf-8") == text
        print("INDEX.md is up to date" if ok else "INDEX.md is stale: run benchmarks/index.py", file=sys.stderr)
        return 0 if ok else 1
    INDEX.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
