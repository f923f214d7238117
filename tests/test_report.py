"""``medistill report``: synthetic run directories (no training) -> one self-contained HTML file."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from medistill.errors import MedistillError

ML_LABELS = ["Atelectasis", "Effusion", "Nodule", "Mass & <Lump>"]  # '&' and '<' test the escaping
MC_LABELS = ["glioma", "meningioma", "notumor", "pituitary"]


# ---------------------------------------------------------------------------------------------------------
# synthetic inputs (also used by test_report_browser.py)
# ---------------------------------------------------------------------------------------------------------

def _png(path: Path, size: int = 48, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _predictions(task: str, labels: list[str], n: int, skill: float, seed: int) -> dict[str, np.ndarray]:
    """Realistic arrays (N, L): probabilities that separate the classes by ``skill``."""
    rng = np.random.default_rng(seed)
    L = len(labels)
    if task == "multilabel":
        targets = (rng.random((n, L)) < 0.3).astype(np.float32)
        targets[:, 0] = 0.0  # no positive for the first label: its AUC is undefined (n/a)
        mask = (rng.random((n, L)) > 0.1).astype(np.float32)
        logits = skill * (2 * targets - 1) + rng.normal(0, 1.0, (n, L))
        probs = 1 / (1 + np.exp(-logits))
    else:
        y = rng.integers(0, L, n)
        targets = np.eye(L, dtype=np.float32)[y]
        mask = np.ones((n, L), np.float32)
        logits = skill * targets + rng.normal(0, 1.0, (n, L))
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return {"probs": probs.astype(np.float32), "logits": logits.astype(np.float32), "targets": targets, "mask": mask}


def _metrics(task: str, labels: list[str], pred: dict[str, np.ndarray], model: str, kind: str, teacher: str | None,
             params: int, macs: int, latency: float) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    p, t, m = pred["probs"], pred["targets"], pred["mask"]
    out = {"task": task, "split": "test", "num_images": int(len(p)), "labels": labels, "model": model, "kind": kind,
           "teacher": teacher, "params": params, "macs": macs, "size_bytes": params * 4, "latency_ms": latency,
           "latency_ms_p90": latency * 1.2, "ece": 0.05, "input_size": 64,
           "train": {"best_epoch": 3, "best_val_macro_auc": 0.8, "epochs_run": 3}}
    if task == "multilabel":
        aucs, aps = {}, {}
        for j, lab in enumerate(labels):
            keep = m[:, j] > 0
            ok = len(np.unique(t[keep, j])) == 2
            aucs[lab] = float(roc_auc_score(t[keep, j], p[keep, j])) if ok else None
            aps[lab] = float(average_precision_score(t[keep, j], p[keep, j])) if ok else None
        vals = [v for v in aucs.values() if v is not None]
        keep = m > 0
        out.update(macro_auc=float(np.mean(vals)), micro_auc=float(roc_auc_score(t[keep], p[keep])),
                   auc_ci95=[float(np.mean(vals)) - 0.05, min(1.0, float(np.mean(vals)) + 0.04)], per_label_auc=aucs,
                   per_label_ap=aps, macro_ap=float(np.mean([v for v in aps.values() if v is not None])),
                   thresholds={lab: 0.5 for lab in labels}, sensitivity={lab: 0.7 for lab in labels},
                   specificity={lab: 0.8 for lab in labels}, f1={lab: 0.6 for lab in labels}, macro_f1=0.6)
    else:
        from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score

        y, yp = t.argmax(1), p.argmax(1)
        acc = float((y == yp).mean())
        out.update(accuracy=acc, accuracy_ci95=[max(0.0, acc - 0.06), min(1.0, acc + 0.06)],
                   balanced_accuracy=float(balanced_accuracy_score(y, yp)),
                   macro_f1=float(f1_score(y, yp, average="macro")),
                   per_class_recall={lab: float((yp[y == j] == j).mean()) for j, lab in enumerate(labels)},
                   confusion_matrix=confusion_matrix(y, yp, labels=range(len(labels))).tolist())
    return out


def make_run(root: Path, name: str, *, task: str = "multilabel", kind: str = "train", model: str = "densenet121",
             teacher: Path | None = None, skill: float = 2.0, params: int = 7_000_000, macs: int = 2_800_000_000,
             latency: float = 40.0, seed: int = 0, evaluated: bool = True, epochs: int = 3) -> Path:
    """A run directory as ``medistill train/distill`` + ``medistill evaluate`` leave it (no weights)."""
    labels = ML_LABELS if task == "multilabel" else MC_LABELS
    run = root / name
    run.mkdir(parents=True)
    metric = "macro_auc" if task == "multilabel" else "accuracy"
    info = {"kind": kind, "seed": seed, "command": ["medistill", kind], "versions": {"python": "3.11"},
            "git_commit": "abc123", "machine": {"platform": "Linux", "cpu_count": 2, "cpu_model": "Test CPU @ 2GHz"},
            "started": "2025-01-01T10:00:00+00:00", "finished": "2025-01-01T10:05:00+00:00", "model": model,
            "labels": labels, "task": task, "num_classes": len(labels),
            "input": {"size": 64, "channels": 1, "mean": [0.5], "std": [0.25]}, "best_epoch": epochs - 1,
            f"best_val_{metric}": 0.8, "epochs_run": epochs}
    config = {"out": str(run), "data": {"dataset": "phantom", "root": "/data/phantom", "image_size": 64, "limit": 200},
              "model": {"name": model, "in_chans": 1}, "train": {"epochs": epochs, "seed": seed},
              "distill": {"teacher": None, "alpha": 0.5, "temperature": 4.0, "kd": "auto", "feature": "none"}}
    if teacher is not None:
        info.update(teacher=str(teacher.resolve()), teachers=[str(teacher.resolve())], distill_mode="offline")
        config["distill"]["teacher"] = str(teacher)
    (run / "run.json").write_text(json.dumps(info, indent=2))
    import yaml

    (run / "config.yaml").write_text(yaml.safe_dump(config))
    soft_col = ",train_soft" if kind == "distill" else ""
    rows = [f"epoch,train_loss,train_hard{soft_col},lr,val_loss,val_{metric},seconds"]
    for e in range(1, epochs + 1):
        soft = f",{0.3 / e:.4f}" if kind == "distill" else ""
        scale = 1 + 0.15 * seed
        rows.append(f"{e},{0.7 * scale / e:.4f},{0.6 * scale / e:.4f}{soft},0.001,{0.8 * scale / e + 0.1:.4f},"
                    f"{0.55 + 0.1 * e / scale:.4f},{1.5 + e * 0.1}")
    (run / "history.csv").write_text("\n".join(rows) + "\n")
    if evaluated:
        pred = _predictions(task, labels, 80, skill, seed)
        with open(run / "predictions_test.npz", "wb") as f:
            np.savez_compressed(f, **pred)
        m = _metrics(task, labels, pred, model, kind, str(teacher.resolve()) if teacher else None, params, macs,
                     latency)
        (run / "metrics.json").write_text(json.dumps(m, indent=2))
    return run


def make_explain(folder: Path, labels: list[str]) -> Path:
    """An explanation folder as ``medistill explain`` writes it: one overlay per image (student row, teacher row,
    a column per label), feature-map grids, and explain.json with teacher / sanity / per-label blocks."""
    scores = {"pointing_game": 0.75, "pointing_chance": 0.08, "energy_inside": 0.41, "iou": 0.22,
              "deletion_auc": 0.31, "insertion_auc": 0.58}
    images = []
    for i in range(2):
        ov = _png(folder / "overlays" / f"{i:04d}_img{i}.png", size=96, seed=i)
        maps = [{"label": lab, "prob": 0.9 - 0.2 * k, "teacher_prob": 0.95 - 0.2 * k, **scores,
                 "pointing_game": float(k == 0), "agreement_spearman": 0.8, "agreement_top15_iou": 0.5,
                 "teacher": dict(scores)} for k, lab in enumerate(labels[1:3])]
        images.append({"name": f"img{i}.png", "path": f"/data/phantom/img{i}.png",
                       "probabilities": {lab: 0.5 for lab in labels}, "maps": maps,
                       "overlay": str(ov.relative_to(folder))})
    grids = [str(_png(folder / f"featuremaps_{who}.png", size=120, seed=7).relative_to(folder))
             for who in ("student", "teacher")]
    data = {"method": "gradcam", "num_images": 2, "num_maps": 4, "seconds_per_image": 0.012,
            "student_seconds_per_image": 0.012, "maps_with_truth": 4, **scores, "agreement_spearman": 0.81,
            "agreement_spearman_grid": 0.92, "agreement_grid": 8,
            "pointing_game_tolerant": 0.9, "pointing_chance_tolerant": 0.2, "blank": 0.25,
            "cam_layers": {"student": ["stages.3"], "teacher": ["layer3", "layer4"]},
            "agreement_top15_iou": 0.6, "teacher_seconds_per_image": 0.09,
            "teacher": {"run": "/runs/teacher", "model": "densenet121", "maps": 4, **scores, "pointing_game": 0.8},
            "sanity": {"test": "model parameter randomisation (Adebayo et al. 2018)", **scores, "pointing_game": 0.1,
                       "spearman_to_trained": 0.05, "method": "gradcam", "maps": 4, "passed": False,
                       "reasons": ["the randomised model's maps still find the truth (pointing game 0.100 > 2 x "
                                   "chance 0.080)"]},
            "per_label": {lab: {"maps": 2, **scores} for lab in labels[1:3]},
            "run": str(folder.parent), "model": "tiny_cnn", "labels": labels, "task": "multilabel", "size": 64,
            "source": {"dataset": "phantom"}, "label_agnostic_method": False, "feature_map_grids": grids,
            "images": images}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "explain.json").write_text(json.dumps(data, indent=2))
    return folder


def make_explain_pairs(folder: Path, labels: list[str]) -> Path:
    """Another layout: separate teacher and student overlay files per image and label."""
    entries = []
    for i in range(2):
        for k, lab in enumerate(labels[1:3]):
            t = _png(folder / "overlays" / f"img{i}_{k}_teacher.png", seed=10 * i + k)
            s = _png(folder / "overlays" / f"img{i}_{k}_student.png", seed=100 + 10 * i + k)
            entries.append({"image": f"img{i}.png", "label": lab, "probability": 0.8 - 0.1 * k,
                            "teacher": {"overlay": str(t.relative_to(folder)), "probability": 0.85},
                            "student": {"overlay": str(s.relative_to(folder)), "probability": 0.8}})
    _png(folder / "layers_grid.png", size=120, seed=7)
    (folder / "empty.png").write_bytes(b"")  # an unreadable file: left out with a note, never a broken <img>
    _png(folder.parent.parent / "secret.png")  # outside the folder: a JSON must not make the report embed it
    data = {"method": "gradcam++", "num_images": 2, "seconds_per_image": 0.02, "pointing_game": 0.5,
            "feature_maps": "layers_grid.png", "escape": "../../secret.png", "broken": "empty.png", "images": entries}
    (folder / "explain.json").write_text(json.dumps(data, indent=2))
    return folder


def make_export(folder: Path) -> Path:
    """An export folder as ``medistill export`` + ``medistill benchmark`` write it."""
    folder.mkdir(parents=True)
    (folder / "export.json").write_text(json.dumps({
        "run": str(folder.parent), "model": "tiny_cnn", "task": "multilabel", "labels": ML_LABELS, "format": "onnx",
        "explain": True, "thresholds": {lab: 0.5 for lab in ML_LABELS}, "validation": {"split": "val", "images": 40},
        "max_abs_diff": 3.2e-6, "mean_abs_diff": 4e-7, "fp32_within_tolerance": True, "fp32_tolerance": 1e-4,
        "metric_name": "macro_auc", "metric_pytorch": 0.81, "metric_onnx": 0.81, "cam_correlation_min": 0.995,
        "files": {"model.onnx": {"path": "model.onnx", "bytes": 2_400_000, "sha256": "ab" * 32},
                  "model.int8.onnx": {"path": "model.int8.onnx", "bytes": 700_000, "sha256": "cd" * 32}},
        "int8": {"metric_fp32": 0.81, "metric_int8": 0.806, "int8_metric_delta": -0.004, "per_channel": True},
        "int8_metric_delta": -0.004, "versions": {"onnx": "1.17", "onnxruntime": "1.20"}}))
    lat = {name: {"median_ms": ms, "p90_ms": ms * 1.2, "mean_ms": ms * 1.1, "min_ms": ms * 0.9, "runs": 50}
           for name, ms in (("torch_fp32", 4.1), ("ort_fp32", 1.9), ("ort_int8", 2.5), ("ort_explain", 2.3),
                            ("teacher_torch_fp32", 60.0))}
    (folder / "benchmark.json").write_text(json.dumps({
        "model": "tiny_cnn", "params": 600_000, "macs": 30_000_000, "flops": 60_000_000,
        "matmul_peak_gflops": {"numpy": 80.0, "torch": 75.0, "peak": 80.0}, "flop_limit_ms": 0.75,
        "machine": {"cpu_count": 2}, "latency_ms": {"batch_1": lat},
        "teacher": {"model": "densenet121"},
        "ratios": {"batch": 1, "fp32_vs_flop_limit": {"ort": 2.5}, "teacher_vs_student": {"ort_fp32": 31.6,
                                                                                          "torch_fp32": 14.6}},
        "targets": {"ort_fp32_within_3x_flop_limit": True, "teacher_at_least_30x_slower": True,
                    "explain_within_1_5x": False}}))
    return folder


def make_report_inputs(root: Path, task: str = "multilabel") -> list[Path]:
    """Teacher, KD student (with explain/ and export/ folders) and no-KD student."""
    labels = ML_LABELS if task == "multilabel" else MC_LABELS
    teacher = make_run(root, "teacher", task=task, model="densenet121", skill=1.6, seed=1)
    student = make_run(root, "student", task=task, kind="distill", model="tiny_cnn", teacher=teacher, skill=1.3,
                       params=60_000, macs=30_000_000, latency=2.0, seed=2)
    nokd = make_run(root, "student_nokd", task=task, model="tiny_cnn", skill=1.0, params=60_000, macs=30_000_000,
                    latency=2.0, seed=3)
    make_explain(student / "explain", labels)
    make_explain_pairs(student / "explain_pairs", labels)
    make_export(student / "export")
    return [student, nokd, teacher]  # any order: the report orders by role


def image_srcs(page: str) -> list[str]:
    return re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)


def decode_images(page: str) -> list[tuple[int, int]]:
    from PIL import Image

    sizes = []
    for src in image_srcs(page):
        assert src.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")), src[:60]
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            im.load()
            sizes.append(im.size)
    return sizes


# ---------------------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def multilabel_page(tmp_path_factory) -> str:
    """The report of a multi-label teacher, KD student (explain/ + export/ inside) and no-KD student, via the CLI."""
    from medistill.cli import main

    root = tmp_path_factory.mktemp("report_ml")
    out = root / "out" / "report.html"
    assert main(["report", *map(str, make_report_inputs(root / "runs")), "--out", str(out)]) == 0
    return out.read_text(encoding="utf-8")


def _section(page: str, anchor: str) -> str:
    start = page.index(f'<section id="{anchor}">')
    return page[start:page.index("</section>", start)]


def test_report_sections_in_order_and_comparison(multilabel_page):
    page = multilabel_page
    ids = re.findall(r'<section id="([^"]+)">', page)
    assert ids == ["comparison", "runs", "training", "per-label", "roc", "calibration", "explanations", "export"]
    # every section is linked from the navigation bar
    assert re.findall(r'<nav class="toc">(.*?)</nav>', page, re.S)[0].count("<a href=") == len(ids)
    # ordered by role whatever the command-line order, with Delta against the teacher and the cost ratios
    comp = _section(page, "comparison")
    assert comp.index("teacher") < comp.index("student (KD)") < comp.index("student (no KD)")
    assert comp.count("<tr>") == 4  # header + 3 runs
    assert "&Delta; vs teacher" in comp and "93.3\u00d7 fewer" in comp and "20.0\u00d7 faster" in comp
    assert re.search(r'<span class="ci">\(0\.\d{3}&ndash;[01]\.\d{3}\)</span>', comp)
    assert "KD vs the same student without KD (student_nokd)" in comp
    assert "Test CPU @ 2GHz, 2 cores (teacher, student, student_nokd)" in page  # the machine the runs ran on


def test_report_is_self_contained_with_decodable_images(multilabel_page):
    page = multilabel_page
    assert "<script" not in page and "<link" not in page and not re.search(r'(src|href)="(https?:)?//', page)
    assert "url(" not in page  # no CSS-loaded resources either
    sizes = decode_images(page)
    # training, per-label bars, ROC, calibration, latency chart; explain/: 2 whole-image overlays + 2 feature-map
    # grids; explain_pairs/: 8 overlays (4 teacher/student pairs) + 1 grid
    assert len(sizes) == 5 + 4 + 9, len(sizes)
    assert all(w > 0 and h > 0 for w, h in sizes)


def test_report_escapes_inputs_and_marks_undefined_auc(multilabel_page):
    page = multilabel_page
    assert "Mass &amp; &lt;Lump&gt;" in page and "Mass & <Lump>" not in page
    per_label = _section(page, "per-label")
    atel = re.search(r"<tr><td class=\"text\">Atelectasis</td>(.*?)</tr>", per_label).group(1)
    assert atel.count("n/a") == 5  # no positive: no AUC for any run, nor a difference
    assert "operating points per label" in per_label and "Sensitivity" in per_label


def test_report_fidelity_table_per_model_and_label(multilabel_page):
    ex = _section(multilabel_page, "explanations")
    fid = ex[ex.index("<h3>Fidelity</h3>"):ex.index("<h3>Sanity checks</h3>")]
    assert "<th>pointing game (chance)</th><th>tolerant (chance)</th>" in fid
    rows = re.findall(r"<tr>(.*?)</tr>", fid, re.S)[1:]
    assert len(rows) == 4  # explain/: student, its teacher, the weight-randomised copy; explain_pairs/: its one
    student, teacher, randomised, pairs = rows
    assert "explain_pairs" in pairs and "<td>0.500</td>" in pairs  # a pointing game without a chance: unmarked
    # 0.75 >= 3 x 0.08: marked good; tolerant 0.9 beside its own chance; layers hooked; blank share
    assert '<span class="good">0.750 <span class="muted">(0.080)</span></span>' in student
    assert "0.900 <span class=\"muted\">(0.200)</span>" in student
    assert "student: tiny_cnn" in student and "stages.3" in student and "<td>0.25</td>" in student
    # Spearman to the teacher over pixels, then at the student's 8 x 8 CAM grid (the maps are drawn at 64 px)
    assert '<td>0.810 <span class="muted">(0.920 at 8&times;8)</span></td>' in student
    assert "teacher: densenet121" in teacher and "layer3, layer4" in teacher and "0.800" in teacher
    assert "randomised weights" in randomised and "0.100" in randomised
    # each method's randomisation check: the student's failed (explain.json says so), the teacher's was not run
    assert '<span class="bad">FAILED: not evidence</span>' in student and '<span class="muted">not run</span>' in teacher
    # the sanity table: every method of every folder (explain_pairs/ names its method but ran no check)
    sanity = ex[ex.index("<h3>Sanity checks</h3>"):ex.index("<h3>explain ")]
    checks = re.findall(r"<tr>(.*?)</tr>", sanity, re.S)[1:]
    assert len(checks) == 3
    assert "student: tiny_cnn" in checks[0] and ">gradcam</td>" in checks[0] and "<td>0.050</td>" in checks[0]
    assert "still find the truth" in checks[0] and '<span class="muted">(0.080)</span>' in checks[0]
    assert "teacher: densenet121" in checks[1] and "not run" in checks[1]
    assert "explain_pairs" in checks[2] and ">gradcam++</td>" in checks[2] and "not run" in checks[2]
    # above the folder's overlays: its maps are not evidence
    block = ex[ex.index("<h3>explain "):ex.index("<h3>explain_pairs")]
    assert "The student&#x27;s gradcam maps FAILED the weight-randomisation check" in block
    assert "were not checked against a weight-randomised model" in block  # the teacher's
    # the per-label table of the folder, and the truth outline named in the lead
    assert ">label</th><th>maps</th><th>pointing game (chance)</th>" in ex
    assert "outlined in white" in ex


def test_report_explanations_scores_and_galleries(multilabel_page):
    ex = _section(multilabel_page, "explanations")
    # explain/ (medistill explain's layout): scores of student beside teacher and the shuffled-weights sanity check
    first = ex[:ex.index("<h3>explain_pairs")]
    assert "<th>student</th><th>teacher</th><th>sanity</th>" in first
    assert re.search(r"<td class=\"text\">pointing_game</td><td>0\.75</td><td>0\.8</td><td>0\.1</td>", first)
    assert "agreement_spearman" in first and "teacher_seconds_per_image" in first
    assert "sanity.spearman_to_trained" in first
    assert "<h4>per label</h4>" in first and first.count('alt="00') == 2  # one whole-image overlay per image
    assert "Nodule p=0.70 (teacher 0.75), agreement 0.80, misses the lesion" in first
    assert 'alt="featuremaps_student.png"' in first and 'alt="featuremaps_teacher.png"' in first
    # explain_pairs/: separate teacher / student files, side by side per label
    pairs = ex[ex.index("<h3>explain_pairs"):]
    assert pairs.count('<table class="pairs">') == 2  # one per label (Effusion, Nodule), 2 images each
    assert "<h4>Effusion</h4>" in pairs and "<h4>Nodule</h4>" in pairs and "p = 0.850" in pairs
    assert 'alt="secret.png"' not in multilabel_page  # a path outside the folder is shown as text only
    assert "empty.png: not a readable image" in pairs and 'alt="empty.png"' not in pairs
    assert 'alt="layers_grid.png"' in pairs


def test_report_export_checks_targets(multilabel_page):
    exp = _section(multilabel_page, "export")
    assert exp.count("meets the target") == 2 and "misses" not in exp  # max_abs_diff, cam_correlation_min
    assert "files.model.int8.onnx.bytes" in exp and "683.59 KiB" in exp and "int8_metric_delta" in exp
    assert 'alt="latency chart of benchmark.json"' in exp
    # the student / teacher ratio once per runtime, each named (never ONNX Runtime against PyTorch)
    assert ("The student runs faster than its teacher (densenet121) by 31.6x in ONNX Runtime fp32, 14.6x in PyTorch "
            "eager fp32 (batch 1; each ratio within one runtime and precision).") in exp
    assert "batch_1.ort_int8.median_ms" not in exp.split("<details>")[0]  # latencies: in the chart, not the table
    assert re.search(r'targets\.explain_within_1_5x</td><td><span class="bad">no</span>', exp)
    assert re.search(r'targets\.teacher_at_least_30x_slower</td><td><span class="good">yes</span>', exp)


def test_multiclass_report_has_confusion_matrices(tmp_path):
    from medistill.report import render_report

    page = render_report(make_report_inputs(tmp_path, task="multiclass"), title="Brain MRI <test>")
    assert "<title>Brain MRI &lt;test&gt;</title>" in page
    ids = re.findall(r'<section id="([^"]+)">', page)
    assert ids == ["comparison", "runs", "training", "per-label", "roc", "confusion", "calibration", "explanations",
                   "export"]
    assert page.count('alt="confusion matrix of') == 3
    assert "Per-class recall" in page and "Balanced acc." in page and "Accuracy (95% CI)" in page
    assert len(decode_images(page)) == 5 + 3 + 4 + 9


def test_cli_unevaluated_run_with_explanations_and_image_limit(tmp_path, capsys):
    from medistill.cli import main

    run = make_run(tmp_path, "teacher", evaluated=False)
    make_explain_pairs(run / "explain", ML_LABELS)
    out = tmp_path / "r.html"
    assert main(["report", str(run), "--out", str(out), "--max-images", "2"]) == 0
    assert f"report written to {out.resolve()}" in capsys.readouterr().out
    page = out.read_text(encoding="utf-8")
    ids = re.findall(r'<section id="([^"]+)">', page)
    assert ids == ["runs", "training", "explanations"]
    assert "not evaluated" in page and f"medistill evaluate {run}" in page
    assert "7 more overlays not shown (limit 2" in page  # 8 overlays + the unreadable one
    assert len(decode_images(page)) == 1 + 2 + 1  # training curves, one teacher/student pair, the grid


def test_cli_bad_input_is_a_clear_error(tmp_path, capsys):
    from medistill.cli import main

    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "not a medistill run directory" in err
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r.html")]) == 2
    assert "missing: not a directory" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_explicit_explain_and_export_folders(tmp_path):
    from medistill.report import collect
    from medistill.report.gallery import pair_overlays as _pair

    run = make_run(tmp_path, "student", kind="distill", model="tiny_cnn", teacher=tmp_path / "gone")
    ex = tmp_path / "elsewhere" / "xai"
    for name in ("img0_teacher_Effusion.png", "img0_student_Effusion.png", "img1_student_Nodule.png"):
        _png(ex / name)
    exp = make_export(tmp_path / "elsewhere" / "onnx")
    data = collect([run], explain_dirs=[ex], export_dirs=[exp])
    assert len(data.explains) == 1 and len(data.exports) == 1
    ov = data.explains[0].overlays  # no explain.json: every image, who / label from the file names
    assert sorted((o.who, o.label) for o in ov) == [("student", "Effusion"), ("student", "Nodule"),
                                                     ("teacher", "Effusion")]
    pairs, rest = _pair(ov)
    assert len(pairs) == 1 and [o.path.name for o in rest] == ["img1_student_Nodule.png"]
    assert data.exports[0].benchmarks["benchmark.json"]["latency_ms"]["batch_1"]["ort_fp32"]["median_ms"] == 1.9


def test_malformed_inputs_raise_errors_naming_the_file(tmp_path):
    from medistill.report import collect

    run = make_run(tmp_path, "t")
    with open(run / "predictions_test.npz", "wb") as f:
        np.savez(f, probs=np.zeros((5, 4)), targets=np.zeros((4, 4)))
    with pytest.raises(MedistillError, match=r"predictions_test\.npz: 'targets' has shape \(4, 4\), expected \(5, 4\)"):
        collect([run])
    (run / "predictions_test.npz").write_bytes(b"not a zip")
    with pytest.raises(MedistillError, match=r"predictions_test\.npz: not a readable \.npz"):
        collect([run])
    (run / "predictions_test.npz").unlink()
    (run / "explain").mkdir()
    (run / "explain" / "explain.json").write_text("{oops")
    with pytest.raises(MedistillError, match=r"explain\.json: not valid JSON"):
        collect([run])
    (run / "explain" / "explain.json").write_text("{}")
    (run / "metrics.json").write_text("[1, 2]")
    with pytest.raises(MedistillError, match=r"metrics\.json: expected a JSON object"):
        collect([run])
    (run / "metrics.json").unlink()
    (run / "history.csv").write_text("a,b\n1,2\n")
    with pytest.raises(MedistillError, match=r"history\.csv: expected a CSV whose header has an 'epoch'"):
        collect([run])
    with pytest.raises(MedistillError, match="given twice"):
        collect([run, run])


def test_reliability_matches_sklearn_and_colours_are_distinct():
    from sklearn.calibration import calibration_curve

    from medistill.report import plots

    rng = np.random.default_rng(0)
    probs = rng.random((200, 3))
    targets = (rng.random((200, 3)) < probs).astype(float)
    mp, fr, cnt = plots.reliability(probs, targets, np.ones_like(probs), "multilabel", n_bins=10)
    ref_fr, ref_mp = calibration_curve(targets.ravel(), probs.ravel(), n_bins=10, strategy="uniform")
    np.testing.assert_allclose(mp, ref_mp, rtol=1e-6)
    np.testing.assert_allclose(fr, ref_fr, rtol=1e-6)
    assert cnt.sum() == probs.size
    # single-label: top-class confidence against correctness
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    mp, fr, cnt = plots.reliability(p, np.array([0, 1, 1]), None, "multiclass", n_bins=10)
    np.testing.assert_allclose(mp, [0.6, 0.8, 0.9]) and np.testing.assert_allclose(fr, [0.0, 1.0, 1.0])
    cols = plots.colours(["teacher", "student (KD)", "student (KD)", "model", "model"])
    assert len(set(cols)) == 5 and cols[0] == plots.ROLE_COLOURS["teacher"]


def test_number_formatting():
    from medistill.report.exports import short_names as _short_names
    from medistill.report.format import fmt, si, size_bytes, with_ci

    assert fmt(0.81234567) == "0.8123" and fmt(3.2e-6) == "3.20e-06" and fmt(1234567) == "1,234,567"
    assert fmt(None) == "n/a" and fmt(float("nan")) == "n/a" and fmt(True) == "yes" and fmt(0.0) == "0"
    assert si(2_800_000_000) == "2.80 G" and size_bytes(700_000) == "683.59 KiB"
    assert with_ci(0.8, [0.75, None]) == "0.8" and "0.750&ndash;0.850" in with_ci(0.8, [0.75, 0.85])
    assert _short_names({"latency.a.median_ms": 1.0, "latency.b.median_ms": 2.0}) == {"a": 1.0, "b": 2.0}


# ---------------------------------------------------------------------------------------------------------
# real runs: train, distil, evaluate (and explain) tiny models on the phantom, then report
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_runs(phantom_root, tmp_path_factory) -> list[Path]:
    """Teacher, KD student and no-KD student (tiny_cnn, 32 px, 1 epoch, 64 images per split), evaluated."""
    from medistill.config import RunConfig, build
    from medistill.evaluate.runner import evaluate_run
    from medistill.train import run_training

    root = tmp_path_factory.mktemp("report_real")

    def cfg(name: str, **over: str) -> RunConfig:
        return build(RunConfig, overrides={
            "out": str(root / name), "data.dataset": "phantom", "data.root": str(phantom_root),
            "data.image_size": "32", "data.limit": "64", "data.augment": "none", "data.cache_dir": str(root / "cache"),
            "model.name": "tiny_cnn", "train.epochs": "1", "train.batch_size": "32", **over})

    run_training(cfg("teacher"))
    run_training(cfg("student", **{"distill.teacher": str(root / "teacher")}))
    run_training(cfg("student_nokd", **{"train.seed": "1"}))
    dirs = [root / n for n in ("teacher", "student", "student_nokd")]
    for d in dirs:
        evaluate_run(d, "test", latency=False, n_bootstrap=50)
    return dirs


@pytest.mark.slow
def test_report_of_real_trained_and_evaluated_runs(real_runs, tmp_path):
    from medistill.report import build_report

    page = build_report(real_runs, tmp_path / "report.html").read_text(encoding="utf-8")
    ids = re.findall(r'<section id="([^"]+)">', page)
    assert ids == ["comparison", "runs", "training", "per-label", "roc", "calibration"]
    comp = _section(page, "comparison")
    assert comp.count("<tr>") == 4 and "student (KD)" in comp and "student (no KD)" in comp
    assert re.search(r'<span class="ci">\(\d\.\d{3}&ndash;\d\.\d{3}\)</span>', comp)  # the bootstrap CI
    # whether KD paid, said in words with the paired bootstrap interval of KD minus no-KD (the phantom's patients
    # have 1-3 images each: the bootstrap draws patients)
    assert re.search(r"paired bootstrap over test patients \(\d+\), 95% CI .*? pt</span> to .*? pt</span>: "
                     r"<strong>(KD helped|KD hurt|no clear "
                     r"difference)</strong>", comp)
    assert "Cardiomegaly" in _section(page, "per-label")
    sizes = decode_images(page)
    assert len(sizes) == 4 and all(w > 100 and h > 100 for w, h in sizes)


@pytest.mark.slow
def test_report_of_real_explanations(real_runs, phantom_root, tmp_path):
    runner = pytest.importorskip("medistill.explain.runner", reason="medistill explain is not built yet")
    from medistill.config import DataConfig
    from medistill.report import render_report

    student = real_runs[1]
    out = tmp_path / "xai"
    runner.explain_run(student, out, data=DataConfig(dataset="phantom", root=str(phantom_root), limit=3),
                       split="test", options=runner.ExplainOptions(faithfulness=False, feature_grid=2))
    page = render_report(real_runs, explain_dirs=[out])
    ex = _section(page, "explanations")
    assert "<th>student</th><th>teacher</th>" in ex and "agreement_spearman" in ex
    assert ex.count('alt="00') == 3  # one overlay per image: student row and teacher row, a column per label
    assert 'alt="featuremaps_student.png"' in ex and 'alt="featuremaps_teacher.png"' in ex
    assert len(decode_images(ex)) == 3 + 2


def test_a_latency_ratio_measured_on_a_busy_machine_is_marked_unreliable(tmp_path):
    """Issue 15 item 7: a student's latency measured while other jobs ran makes its 'x faster' ratio unreliable."""
    from medistill import runs
    from medistill.report import build_report

    dirs = make_report_inputs(tmp_path)
    quiet = build_report(dirs, tmp_path / "quiet.html").read_text(encoding="utf-8")
    assert "unreliable: measured on a busy machine" not in _section(quiet, "comparison")
    student = runs.RunDir(dirs[0])
    student.write_metrics({"latency_reliable": False, "latency_load_average": [7.5, 6.0, 5.0]})
    busy = build_report(dirs, tmp_path / "busy.html").read_text(encoding="utf-8")
    comp = _section(busy, "comparison")
    assert comp.count("unreliable: measured on a busy machine") == 1  # the student's row only
