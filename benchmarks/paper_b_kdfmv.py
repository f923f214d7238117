"""Paper B (KD-FMV) on real MRI: DenseNet121 teacher -> KD-FMV five-layer CNN and EEEA-Net-C2 students.

    nice -n 10 .venv/bin/python benchmarks/paper_b_kdfmv.py --dataset brain-tumor-mri
    nice -n 10 .venv/bin/python benchmarks/paper_b_kdfmv.py --dataset alzheimer-mri

Steps (each a medistill run directory under ``--runs``; a finished and evaluated run is skipped, a half-done one
resumed, so re-running continues):

1. teacher: densenet121 from scratch (no ImageNet weights can be downloaded here), ``--teacher-seeds`` seeds
   (every KD student distils from seed 0; the others give the teacher row its spread);
2. grid: kdfmv with KD over alpha in {0.4, 0.7} x T in {5, 10, 15}, seed 0;
3. the grid point with the best *validation* accuracy, kdfmv with KD at the remaining seeds;
4. kdfmv without KD, eeea_net_c2 with KD (same alpha / T) and without KD, every seed;
5. every run evaluated on the test split (accuracy, macro F1, params, MACs, CPU latency); optional Grad-CAM
   time on 16 test images per model.

``data.augment none``, so the teacher's logits are computed once and cached (offline KD). KD and no-KD runs share
every optimiser setting. Results: ``benchmarks/results/paper_b_<dataset>.json`` and ``.md``, rewritten after each
run so a partial benchmark still leaves its numbers.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench as B  # noqa: E402

DATA = Path("/work/shared/data")
ALPHAS = (0.4, 0.7)
TEMPERATURES = (5.0, 10.0, 15.0)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="brain-tumor-mri", choices=("brain-tumor-mri", "alzheimer-mri"))
    p.add_argument("--data-root", default=None, help="dataset folder (default /work/shared/data/<dataset>)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=500, help="cap on images per split (train, val and test)")
    p.add_argument("--teacher-epochs", type=int, default=4)
    p.add_argument("--student-epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--teacher-seeds", type=int, default=3, help="teacher seeds (KD students use seed 0)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", default="runs/bench/paper_b", help="parent of the run directories (git-ignored)")
    p.add_argument("--cache-dir", default="runs/bench/image-cache")
    p.add_argument("--stages", default="teacher,grid,seeds,eeea,explain,latency",
                   help="comma list of: teacher, grid, seeds (kdfmv KD best point + kdfmv no-KD), eeea, explain, latency")
    p.add_argument("--bootstrap", type=int, default=200)
    return p.parse_args()


def base_cfg(a: argparse.Namespace, out: Path, model: str, seed: int, epochs: int):
    from medistill.config import DataConfig, ModelConfig, RunConfig, TrainConfig

    root = a.data_root or str(DATA / a.dataset)
    return RunConfig(
        out=str(out),
        data=DataConfig(dataset="folder", root=root, image_size=a.image_size, limit=a.limit, augment="none",
                        cache_dir=a.cache_dir),
        model=ModelConfig(name=model, in_chans=1, drop_rate=0.2),
        train=TrainConfig(epochs=epochs, batch_size=a.batch_size, lr=a.lr, optimizer="adamw", weight_decay=1e-4,
                          scheduler="cosine", seed=seed, device="cpu", threads=a.threads))


def student_cfg(a: argparse.Namespace, runs_dir: Path, model: str, seed: int, kd: tuple[float, float] | None):
    from medistill.config import DistillConfig

    name = f"{model}_nokd_s{seed}" if kd is None else f"{model}_kd_a{kd[0]}_T{kd[1]:g}_s{seed}"
    cfg = base_cfg(a, runs_dir / name, model, seed, a.student_epochs)
    if kd is not None:
        cfg.distill = DistillConfig(teacher=str(runs_dir / "teacher_densenet121_s0"), alpha=kd[0],
                                    temperature=kd[1], cache_teacher="true")
    return name, cfg


def gradcam_seconds(run_dir: str, n: int = 16) -> dict[str, Any]:
    """Seconds to explain ``n`` test images with pytorch-grad-cam GradCAM (predicted class), batch 1."""
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from torch.utils.data import DataLoader

    from medistill import runs
    from medistill.data import collate
    from medistill.models import cam_layer

    model, record = runs.load_model(run_dir)
    model.eval()
    loader = DataLoader(runs.run_dataset(run_dir, "test", limit=n, record=record), batch_size=1, shuffle=False,
                        collate_fn=collate)
    layer, reshape = cam_layer(model)
    images = [b["image"] for _, b in zip(range(n), loader)]
    with GradCAM(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        cam(input_tensor=images[0], targets=None)  # warm-up
        t0 = time.perf_counter()
        for x in images:
            cls = int(model(x).argmax(1))
            cam(input_tensor=x, targets=[ClassifierOutputTarget(cls)])
        dt = time.perf_counter() - t0
    return {"images": len(images), "seconds": dt, "ms_per_image": 1000 * dt / max(len(images), 1),
            "method": "pytorch-grad-cam GradCAM, batch 1, CAM layer of medistill.models.cam_layer"}


def main() -> None:
    a = parse()
    import torch

    torch.set_num_threads(a.threads)
    stages = set(a.stages.split(","))
    runs_dir = Path(a.runs) / f"{a.dataset}_{a.image_size}px_l{a.limit}"
    # the default scale keeps the plain name; any other scale gets its own files so runs at two scales coexist
    stem = f"paper_b_{a.dataset}" + ("" if (a.image_size, a.limit) == (64, 500) else f"_{a.image_size}px_l{a.limit}")
    res_json = B.RESULTS / f"{stem}.json"
    old = B.read_json(res_json) if res_json.is_file() else {}
    results: dict[str, Any] = {"runs": old.get("runs", {}), "explain": old.get("explain", {}),
                               "latency": old.get("latency", {})}
    settings = {k: v for k, v in vars(a).items()}
    script_cmd = "nice -n 10 .venv/bin/python benchmarks/paper_b_kdfmv.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items() if k not in ("stages", "runs", "cache_dir") and v is not None)

    def record(name: str, cfg) -> dict[str, Any]:
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        r = B.train_and_evaluate(cfg, n_bootstrap=a.bootstrap)
        keep = ("command", "out", "accuracy", "macro_f1", "balanced_accuracy", "params", "macs", "size_bytes",
                "latency_ms", "num_images", "model", "kind", "train_wall_s", "eval_wall_s", "epoch_seconds")
        row = {k: r.get(k) for k in keep}
        info = B.runs.RunDir(cfg.out).info()
        row["best_val_accuracy"] = info.get("best_val_accuracy")
        row["best_epoch"] = info.get("best_epoch")
        row["distill_mode"] = info.get("distill_mode")
        if not r.get("skipped") or name not in results["runs"]:
            results["runs"][name] = {**results["runs"].get(name, {}), **row}
        print(f"    acc {row['accuracy']:.4f} f1 {row['macro_f1']:.4f} val {row['best_val_accuracy']:.4f} "
              "(" + ("skipped" if r.get("skipped") else f"{row.get('train_wall_s') or 0:.0f} s") + ")", flush=True)
        save()
        return row

    def save() -> None:
        summary = summarise(results, a)
        B.write_json(res_json, {"experiment": "paper B (KD-FMV), reduced", "dataset": a.dataset,
                                "settings": settings, "command": script_cmd, "machine": B.machine(),
                                "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                **results, "summary": summary})
        (B.RESULTS / f"{stem}.md").write_text(markdown(summary, a, script_cmd))

    # 1. teacher
    from medistill.config import DistillConfig  # noqa: F401

    t_cfg = base_cfg(a, runs_dir / "teacher_densenet121_s0", "densenet121", 0, a.teacher_epochs)
    if "teacher" in stages or not B.is_done(t_cfg.out):
        record("teacher_densenet121_s0", t_cfg)
    # 2. alpha / T grid, kdfmv seed 0
    grid = list(itertools.product(ALPHAS, TEMPERATURES))
    if "grid" in stages:
        for al, T in grid:
            name, cfg = student_cfg(a, runs_dir, "kdfmv", 0, (al, T))
            record(name, cfg)
    best = best_grid_point(results)
    results["best_grid_point"] = None if best is None else {"alpha": best[0], "temperature": best[1],
                                                            "chosen_on": "validation accuracy (seed 0)"}
    kd = best or (0.7, 5.0)
    # 3./4. seeds, paired (KD, no-KD) per seed so a cut-short run still compares like with like
    for seed in range(a.seeds):
        if "seeds" in stages:
            record(*student_cfg(a, runs_dir, "kdfmv", seed, kd))
            record(*student_cfg(a, runs_dir, "kdfmv", seed, None))
    for seed in range(a.seeds):
        if "eeea" in stages:
            record(*student_cfg(a, runs_dir, "eeea_net_c2", seed, kd))
            record(*student_cfg(a, runs_dir, "eeea_net_c2", seed, None))
    if "teacher" in stages:
        for seed in range(1, a.teacher_seeds):
            name = f"teacher_densenet121_s{seed}"
            record(name, base_cfg(a, runs_dir / name, "densenet121", seed, a.teacher_epochs))
    # 5. explanation time
    if "explain" in stages:
        for name in ("teacher_densenet121_s0", student_cfg(a, runs_dir, "kdfmv", 0, kd)[0],
                     student_cfg(a, runs_dir, "eeea_net_c2", 0, kd)[0]):
            if B.is_done(runs_dir / name) and name not in results["explain"]:
                results["explain"][name] = gradcam_seconds(str(runs_dir / name))
                print(f"    gradcam {name}: {results['explain'][name]['ms_per_image']:.1f} ms/image", flush=True)
                save()
    # 6. latency again, all models one after the other: median and minimum of 50 batch-1 passes
    if "latency" in stages:
        results.setdefault("latency", {})
        for name in list(results["runs"]):
            if name not in results["latency"] and B.is_done(runs_dir / name):
                results["latency"][name] = B.latency_best_ms(str(runs_dir / name), threads=a.threads)
        save()
    save()


def best_grid_point(results: dict[str, Any]) -> tuple[float, float] | None:
    best, best_v = None, -1.0
    for al, T in itertools.product(ALPHAS, TEMPERATURES):
        r = results["runs"].get(f"kdfmv_kd_a{al}_T{T:g}_s0")
        # strict ">": on a tie the earlier grid point (grid order alpha, then T) wins
        if r and r.get("best_val_accuracy") is not None and r["best_val_accuracy"] > best_v:
            best, best_v = (al, T), r["best_val_accuracy"]
    return best


def summarise(results: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    runs = results["runs"]
    kd = best_grid_point(results) or (0.7, 5.0)
    groups = {
        "teacher densenet121": [f"teacher_densenet121_s{s}" for s in range(max(1, a.teacher_seeds))],
        f"kdfmv KD (alpha {kd[0]}, T {kd[1]:g})": [f"kdfmv_kd_a{kd[0]}_T{kd[1]:g}_s{s}" for s in range(a.seeds)],
        "kdfmv no KD": [f"kdfmv_nokd_s{s}" for s in range(a.seeds)],
        f"eeea_net_c2 KD (alpha {kd[0]}, T {kd[1]:g})": [f"eeea_net_c2_kd_a{kd[0]}_T{kd[1]:g}_s{s}" for s in range(a.seeds)],
        "eeea_net_c2 no KD": [f"eeea_net_c2_nokd_s{s}" for s in range(a.seeds)],
    }
    out: dict[str, Any] = {"groups": {}, "grid": {}}
    for g, names in groups.items():
        rows = [runs[n] for n in names if n in runs]
        if not rows:
            continue
        out["groups"][g] = {"runs": [n for n in names if n in runs],
                            "accuracy": B.mean_std([r["accuracy"] for r in rows]),
                            "macro_f1": B.mean_std([r["macro_f1"] for r in rows]),
                            "params": rows[0]["params"], "macs": rows[0]["macs"],
                            "latency_ms": B.mean_std([r["latency_ms"] for r in rows]),
                            "latency_min_ms": B.mean_std([results.get("latency", {}).get(n, {}).get("min_ms")
                                                          for n in names if n in runs]),
                            "gradcam_ms_per_image": next((results.get("explain", {})[n]["ms_per_image"]
                                                          for n in names if n in results.get("explain", {})), None),
                            "command": rows[0]["command"]}
    for al, T in itertools.product(ALPHAS, TEMPERATURES):
        r = runs.get(f"kdfmv_kd_a{al}_T{T:g}_s0")
        if r:
            out["grid"][f"alpha {al}, T {T:g}"] = {"val_accuracy": r["best_val_accuracy"],
                                                  "test_accuracy": r["accuracy"], "test_macro_f1": r["macro_f1"],
                                                  "command": r["command"]}
    t = out["groups"].get("teacher densenet121")
    goal = {}
    if t:
        for student in ("kdfmv", "eeea_net_c2"):
            kdg = next((v for k, v in out["groups"].items() if k.startswith(student + " KD")), None)
            nok = out["groups"].get(f"{student} no KD")
            if kdg:
                goal[student] = {
                    "accuracy_gap_points": 100 * (kdg["accuracy"]["mean"] - t["accuracy"]["mean"]),
                    "within_1_point": kdg["accuracy"]["mean"] >= t["accuracy"]["mean"] - 0.01,
                    "macs_ratio": kdg["macs"] / t["macs"],
                    "at_most_1_10_macs": kdg["macs"] <= t["macs"] / 10,
                    "kd_minus_nokd_points": None if not nok else 100 * (kdg["accuracy"]["mean"] - nok["accuracy"]["mean"]),
                    "seeds_kd": kdg["accuracy"]["n"], "seeds_nokd": None if not nok else nok["accuracy"]["n"],
                }
    out["goal"] = goal
    return out


def markdown(s: dict[str, Any], a: argparse.Namespace, cmd: str) -> str:
    lines = [f"### KD-FMV (paper B) on {a.dataset}, {a.image_size} px, limit {a.limit} per split, "
             f"teacher {a.teacher_epochs} / students {a.student_epochs} epochs, CPU", "",
             f"Reproduce: `{cmd}`", "",
             "| model | seeds | test accuracy (%) | macro F1 (%) | params | MACs | CPU latency median in evaluate "
             "(ms) | CPU latency min of 50 (ms) | Grad-CAM ms / image (seed 0) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for g, v in s["groups"].items():
        lines.append(f"| {g} | {v['accuracy']['n']} | {B.fmt_ms(v['accuracy'])} | {B.fmt_ms(v['macro_f1'])} | "
                     f"{B.si(v['params'])} | {B.si(v['macs'])} | {B.fmt_ms(v['latency_ms'], 1, 1)} | "
                     f"{B.fmt_ms(v['latency_min_ms'], 1, 1)} | "
                     f"{'n/a' if v['gradcam_ms_per_image'] is None else format(v['gradcam_ms_per_image'], '.0f')} |")
    if s["grid"]:
        lines += ["", "alpha / T grid (kdfmv, KD, seed 0 only; the best validation point is used for the seeds):", "",
                  "| alpha, T | val accuracy (%) | test accuracy (%) | test macro F1 (%) |", "|---|---|---|---|"]
        for k, v in s["grid"].items():
            lines.append(f"| {k} | {100 * v['val_accuracy']:.2f} | {100 * v['test_accuracy']:.2f} | "
                         f"{100 * v['test_macro_f1']:.2f} |")
    if s.get("goal"):
        lines += ["", "Goal check (student within 1 point of the teacher at <= 1/10 of its MACs; KD > no KD):", ""]
        for st, g in s["goal"].items():
            kd_txt = "n/a" if g["kd_minus_nokd_points"] is None else f"{g['kd_minus_nokd_points']:+.2f} points"
            lines.append(f"- {st}: KD student vs teacher {g['accuracy_gap_points']:+.2f} points "
                         f"({'within' if g['within_1_point'] else 'not within'} 1 point), MACs ratio "
                         f"{g['macs_ratio']:.3f} ({'<=' if g['at_most_1_10_macs'] else '>'} 1/10); "
                         f"KD minus no-KD {kd_txt} (seeds {g['seeds_kd']} / {g['seeds_nokd']})")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
