"""Shortcuts in the phantom: is each lesion the only evidence for its label? (issue 13, part 1)

For the phantom generator of the installed medistill (``phantom.VERSION``), this script

1. generates a phantom (``runs/bench/phantom_shortcuts/v<VERSION>_<size>px_n<images>/data``, git-ignored) and
   trains a small multi-label model on it (``medistill train`` equivalent stored in the results);
2. **(a) occlusion**: on the test split, fills each finding's mask with the mean of the tissue around it (a ring
   just outside the mask, other findings excluded) and records how the label's probability moves; to tell
   "the lesion was the evidence" from "the fill itself is a cue", every negative image gets the same fill on a
   mask borrowed from a random positive (matched occlusion). ``auc_occluded`` is the AUC of the label's
   probability, occluded positives against matched-occluded negatives: 0.5 means the model sees nothing of the
   label once the lesion is gone; near ``auc`` means it found the label elsewhere;
3. **(b) evidence outside the lesion, model-free**: on every image (all splits, native resolution), the same
   matched occlusion, then a logistic regression on global image statistics (mean, std, percentiles, gradient
   energy, a 16-bin histogram), 5-fold cross-validated AUC per label; plus label-label correlations and the
   label rates per split and per view;
4. for generators that can draw an image with and without a finding from the same seed (v2 and later), the exact
   counterfactual: the largest pixel difference outside the finding's mask, and the model's probability on the
   image whose finding was removed and nothing else changed, against real negatives (AUC 0.5 = no shortcut).

Results go to ``benchmarks/results/phantom_shortcuts.json`` under ``v<VERSION>`` (other versions' entries are
kept) and ``phantom_shortcuts.md``.

    nice -n 10 .venv/bin/python benchmarks/phantom_shortcuts.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench as B  # noqa: E402

RES_JSON = B.RESULTS / "phantom_shortcuts.json"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-images", type=int, default=1500)
    p.add_argument("--size", type=int, default=128, help="phantom image size (px)")
    p.add_argument("--image-size", type=int, default=96, help="model input size (px)")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", default="runs/bench/phantom_shortcuts")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def run_config(a: argparse.Namespace, root: Path, out: Path):
    from medistill.config import DataConfig, ModelConfig, RunConfig, TrainConfig

    return RunConfig(
        out=str(out),
        data=DataConfig(dataset="phantom", root=str(root), image_size=a.image_size, augment="none",
                        cache_dir=str(out.parent / "image-cache")),
        model=ModelConfig(name=a.model, in_chans=1, drop_rate=0.1),
        train=TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, optimizer="adamw", weight_decay=1e-4,
                          scheduler="cosine", seed=a.seed, device="cpu", threads=a.threads))


# --- occlusion ---------------------------------------------------------------------------------------------
def fill(img: np.ndarray, mask: np.ndarray, exclude: np.ndarray, ring_px: int) -> np.ndarray:
    """``img`` (H, W) with ``mask`` filled by the mean of the ring of ``ring_px`` pixels around it (pixels of
    ``exclude``, the other findings, left out of the ring; the image mean when the ring is empty)."""
    from scipy.ndimage import binary_dilation

    if not mask.any():
        return img
    ring = binary_dilation(mask, iterations=ring_px) & ~mask & ~exclude
    out = img.copy()
    out[mask] = img[ring].mean() if ring.any() else img.mean()
    return out


def matched_masks(present: np.ndarray, masks_of: Any, rng: np.random.Generator) -> list[np.ndarray]:
    """For each image, the mask to fill: its own finding's mask when present, else a random positive's."""
    pos = np.flatnonzero(present)
    return [masks_of(i) if present[i] else masks_of(int(pos[rng.integers(0, len(pos))])) for i in range(len(present))]


def auc(y: np.ndarray, s: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else None


def model_occlusion(run_dir: Path, seed: int) -> dict[str, Any]:
    """(a): per label, probabilities on the test split before and after filling the lesion (matched fill on
    negatives)."""
    import torch

    from medistill import runs

    model, record = runs.load_model(run_dir)
    ds = runs.run_dataset(run_dir, "test", record=record)
    p = ds.preprocess
    mean, std = float(p.mean[0]), float(p.std[0])
    imgs = np.stack([ds.load_input(i)[0] for i in range(len(ds))])  # (N, S, S) in [0, 1]
    truth = np.stack([ds.truth(i, p.size) for i in range(len(ds))])  # (N, L, S, S)
    y = ds.data.targets.astype(int)  # (N, L)

    def probs(x: np.ndarray) -> np.ndarray:
        out = []
        with torch.no_grad():
            for b in range(0, len(x), 64):
                t = torch.from_numpy((x[b:b + 64, None] - mean) / std).float()
                out.append(torch.sigmoid(model(t)).numpy())
        return np.concatenate(out)

    p0 = probs(imgs)
    rng = np.random.default_rng(seed)
    ring = max(2, p.size // 32)
    res: dict[str, Any] = {}
    for k, lab in enumerate(ds.labels):
        fills = matched_masks(y[:, k] == 1, lambda i: truth[i, k], rng)
        others = truth.any(axis=1) & ~truth[:, k]
        occ = np.stack([fill(imgs[i], fills[i], others[i], ring) for i in range(len(imgs))])
        pk = probs(occ)[:, k]
        pos = y[:, k] == 1
        res[lab] = {"positives": int(pos.sum()), "negatives": int((~pos).sum()),
                    "auc": auc(y[:, k], p0[:, k]), "auc_occluded": auc(y[:, k], pk),
                    "mean_prob_pos": float(p0[pos, k].mean()), "mean_prob_pos_occluded": float(pk[pos].mean()),
                    "mean_prob_neg": float(p0[~pos, k].mean()), "mean_prob_neg_filled": float(pk[~pos].mean()),
                    "share_pos_prob_fell": float((pk[pos] < p0[pos, k]).mean()),
                    "share_pos_prob_halved": float((pk[pos] < 0.5 * p0[pos, k]).mean())}
    return {"split": "test", "images": len(ds), "input_px": p.size, "ring_px": ring, "labels": res}


# --- model-free probe ----------------------------------------------------------------------------------------
def features(img: np.ndarray) -> np.ndarray:
    gy, gx = np.gradient(img)
    hist = np.histogram(img, bins=16, range=(0.0, 1.0))[0] / img.size
    pct = np.percentile(img, [1, 5, 25, 50, 75, 95, 99])
    return np.concatenate([[img.mean(), img.std(), np.abs(gx).mean() + np.abs(gy).mean()], pct, hist])


def probe(root: Path, seed: int) -> dict[str, Any]:
    """(b), model-free: global statistics of lesion-removed images (matched fill) -> each label, 5-fold CV AUC."""
    import json

    import pandas as pd
    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    meta = json.loads((root / "phantom.json").read_text())
    labels = meta["labels"]
    df = pd.read_csv(root / "labels.csv", dtype={"image_id": str})
    imgs = np.stack([np.asarray(Image.open(root / "images" / f"{i}.png"), np.float32) / 255 for i in df["image_id"]])
    bits = np.stack([np.asarray(Image.open(root / "masks" / f"{i}.png")) for i in df["image_id"]])
    y = df[labels].to_numpy(int)
    rng = np.random.default_rng(seed)
    ring = max(2, imgs.shape[-1] // 32)
    out: dict[str, Any] = {"images": len(df), "px": int(imgs.shape[-1]), "labels": {}}
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    cv = StratifiedKFold(5, shuffle=True, random_state=seed)
    for k, lab in enumerate(labels):
        fills = matched_masks(y[:, k] == 1, lambda i: (bits[i] >> k) & 1 == 1, rng)
        others = (bits & ~np.uint8(1 << k)) > 0
        x_full = np.stack([features(im) for im in imgs])
        x_occ = np.stack([features(fill(imgs[i], fills[i], others[i], ring)) for i in range(len(imgs))])
        s_full = cross_val_predict(clf, x_full, y[:, k], cv=cv, method="predict_proba")[:, 1]
        s_occ = cross_val_predict(clf, x_occ, y[:, k], cv=cv, method="predict_proba")[:, 1]
        area = np.array([((bits[i] >> k) & 1).mean() for i in np.flatnonzero(y[:, k])])
        out["labels"][lab] = {"auc_stats_with_lesion": auc(y[:, k], s_full),
                              "auc_stats_lesion_removed": auc(y[:, k], s_occ),
                              "mask_area_share_mean": float(area.mean()), "mask_area_share_min": float(area.min()),
                              "mask_area_share_max": float(area.max())}
    corr = np.corrcoef(y.T)
    off = corr[~np.eye(len(labels), dtype=bool)]
    out["max_abs_label_correlation"] = float(np.abs(off).max())
    out["label_rate_by_split"] = {s: {lab: float(g[lab].mean()) for lab in labels} for s, g in df.groupby("split")}
    out["label_rate_by_view"] = {s: {lab: float(g[lab].mean()) for lab in labels} for s, g in df.groupby("view")}
    return out


# --- exact counterfactual (generators that can draw with and without a finding) ------------------------------
def counterfactual(root: Path, run_dir: Path, max_per_label: int = 60) -> dict[str, Any] | None:
    """Per label: test images with the finding, drawn again from the same seed without it; the largest pixel
    difference outside the finding's mask, and the model's probability on them against real negatives."""
    import torch

    from medistill import runs
    from medistill.data import phantom
    from medistill.data.images import resize

    if not hasattr(phantom, "draw"):
        return None
    import json

    meta = json.loads((root / "phantom.json").read_text())
    model, record = runs.load_model(run_dir)
    ds = runs.run_dataset(run_dir, "test", record=record)
    p = ds.preprocess
    mean, std = float(p.mean[0]), float(p.std[0])
    y = ds.data.targets.astype(int)
    idx = [int(ds.meta(i)["image_id"].rsplit("_", 1)[1]) for i in range(len(ds))]

    def prob(x01: np.ndarray, k: int) -> float:
        t = torch.from_numpy((resize(x01, p.size)[None, None] - mean) / std).float()
        with torch.no_grad():
            return float(torch.sigmoid(model(t))[0, k])

    res: dict[str, Any] = {}
    for k, lab in enumerate(ds.labels):
        pos = np.flatnonzero(y[:, k] == 1)[:max_per_label]
        neg = np.flatnonzero(y[:, k] == 0)
        outside, p_with, p_without = 0, [], []
        for i in pos:
            present = phantom.sample_labels(meta["seed"], idx[i])
            assert present[k]
            a = phantom.draw(meta["seed"], idx[i], meta["size"], present)
            present_off = present.copy()
            present_off[k] = False
            b = phantom.draw(meta["seed"], idx[i], meta["size"], present_off)
            ua, ub = phantom.to_uint8(a.image), phantom.to_uint8(b.image)
            diff = np.abs(ua.astype(int) - ub.astype(int))
            outside = max(outside, int(diff[~a.masks[k]].max(initial=0)))
            p_with.append(prob(ua.astype(np.float32) / 255, k))
            p_without.append(prob(ub.astype(np.float32) / 255, k))
        p_neg = [prob(ds.read(int(j)), k) for j in neg[:max_per_label]]
        yy = np.r_[np.ones(len(p_without)), np.zeros(len(p_neg))]
        res[lab] = {"pairs": len(pos), "max_pixel_diff_outside_mask": outside,
                    "mean_prob_with": float(np.mean(p_with)), "mean_prob_removed": float(np.mean(p_without)),
                    "mean_prob_real_negatives": float(np.mean(p_neg)),
                    "auc_removed_vs_negatives": auc(yy, np.r_[p_without, p_neg])}
    return {"labels": res}


# --- main ----------------------------------------------------------------------------------------------------
def main() -> None:
    a = parse()
    import torch

    from medistill.data import phantom

    torch.set_num_threads(a.threads)
    base = Path(a.runs) / f"v{phantom.VERSION}_{a.size}px_n{a.num_images}"
    root = base / "data"
    t0 = time.perf_counter()
    phantom.ensure(root, num_images=a.num_images, size=a.size, seed=0)
    gen_s = time.perf_counter() - t0
    cfg = run_config(a, root, base / f"{a.model}_{a.image_size}px_e{a.epochs}_s{a.seed}")
    print(f"[{time.strftime('%H:%M:%S')}] training {cfg.out} ...", flush=True)
    r = B.train_and_evaluate(cfg, n_bootstrap=0)
    print(f"[{time.strftime('%H:%M:%S')}] macro AUC {r.get('macro_auc')}; occlusion ...", flush=True)
    occ = model_occlusion(Path(cfg.out), a.seed)
    print(f"[{time.strftime('%H:%M:%S')}] model-free probe ...", flush=True)
    prb = probe(root, a.seed)
    print(f"[{time.strftime('%H:%M:%S')}] counterfactual ...", flush=True)
    cf = counterfactual(root, Path(cfg.out))
    out: dict[str, Any] = B.read_json(RES_JSON) if RES_JSON.is_file() else {}
    args = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items() if k != "runs")
    out[f"v{phantom.VERSION}"] = {
        "phantom_version": phantom.VERSION, "settings": vars(a), "commit": git_commit(),
        "command": f"nice -n 10 .venv/bin/python benchmarks/phantom_shortcuts.py {args}",
        "generate_seconds": gen_s if gen_s > 1 else "reused",
        "train": {k: r.get(k) for k in ("command", "model", "macro_auc", "per_label_auc", "train_wall_s",
                                        "epoch_seconds")},
        "occlusion": occ, "probe": prb, "counterfactual": cf,
        "machine": B.machine(), "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    B.write_json(RES_JSON, out)
    (B.RESULTS / "phantom_shortcuts.md").write_text(markdown(out))
    print(markdown(out))


def git_commit() -> str | None:
    """The checked-out commit (with ``+changes`` when the phantom generator or this script differ from it)."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=B.ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "src/medistill/data/phantom.py",
                                "benchmarks/phantom_shortcuts.py"], cwd=B.ROOT, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+changes" if dirty else "")


def f2(v: Any) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def markdown(out: dict[str, Any]) -> str:
    lines = ["# Shortcuts in the phantom: is each lesion the only evidence for its label?", "",
             "Produced by `benchmarks/phantom_shortcuts.py` (its docstring defines every column).", ""]
    for key in sorted(out):
        v = out[key]
        m = v["machine"]
        lines += [f"## Phantom {key}", "",
                  f"Command: `{v['command']}`" + (f" (at commit {v['commit']})" if v.get("commit") else ""), "",
                  f"Model: `{v['train']['command']}`; test macro AUC {f2(v['train']['macro_auc'])}; "
                  f"training {v['train']['train_wall_s'] or 0:.0f} s. Machine: {m['cpu']}, {m['cores']} cores, "
                  f"{m['torch_threads']} torch threads; {m['shared']}; written {v['updated']}.", "",
                  "(a) occlusion (test split, model input px "
                  f"{v['occlusion']['input_px']}) and (b) a model-free probe on global image statistics "
                  f"({v['probe']['images']} images, {v['probe']['px']} px, 5-fold CV):", "",
                  "| label | pos / neg | AUC | AUC lesion filled (matched) | mean p pos -> filled | share of pos "
                  "p fell / halved | mean p neg -> filled | stats AUC with lesion | stats AUC lesion removed | "
                  "mask area % (min-max) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for lab, o in v["occlusion"]["labels"].items():
            pr = v["probe"]["labels"][lab]
            lines.append(
                f"| {lab} | {o['positives']} / {o['negatives']} | {f2(o['auc'])} | {f2(o['auc_occluded'])} | "
                f"{f2(o['mean_prob_pos'])} -> {f2(o['mean_prob_pos_occluded'])} | {f2(o['share_pos_prob_fell'])} / "
                f"{f2(o['share_pos_prob_halved'])} | {f2(o['mean_prob_neg'])} -> {f2(o['mean_prob_neg_filled'])} | "
                f"{f2(pr['auc_stats_with_lesion'])} | {f2(pr['auc_stats_lesion_removed'])} | "
                f"{100 * pr['mask_area_share_mean']:.2f} ({100 * pr['mask_area_share_min']:.2f}-"
                f"{100 * pr['mask_area_share_max']:.2f}) |")
        lines += ["", f"Largest |correlation| between two labels: {v['probe']['max_abs_label_correlation']:.3f}.",
                  "Label rate by split: " + "; ".join(
                      f"{s}: " + ", ".join(f"{lab[:5]} {r:.2f}" for lab, r in rates.items())
                      for s, rates in v["probe"]["label_rate_by_split"].items()), ""]
        cf = v.get("counterfactual")
        if cf:
            lines += ["Exact counterfactual (same seed, the finding removed, nothing else changed):", "",
                      "| label | pairs | max pixel diff outside mask | mean p with -> removed | mean p real negatives | "
                      "AUC removed vs real negatives |", "|---|---|---|---|---|---|"]
            for lab, c in cf["labels"].items():
                lines.append(f"| {lab} | {c['pairs']} | {c['max_pixel_diff_outside_mask']} | "
                             f"{f2(c['mean_prob_with'])} -> {f2(c['mean_prob_removed'])} | "
                             f"{f2(c['mean_prob_real_negatives'])} | {f2(c['auc_removed_vs_negatives'])} |")
            lines.append("")
        if v.get("notes"):
            lines += [v["notes"], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
