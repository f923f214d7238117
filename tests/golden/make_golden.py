"""Write tests/golden/losses.json: fixed small inputs and each loss's value, computed with plain numpy formulas.

Independent of medistill on purpose: nothing here imports the losses under test, so tests/test_losses.py checks
the torch code against the papers' formulas written out a second time. Run once (the JSON is committed):

    .venv/bin/python tests/golden/make_golden.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

OUT = Path(__file__).with_name("losses.json")


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def bce(z, y, pos_weight=None):  # (B, L) elementwise
    pw = np.ones(z.shape[1]) if pos_weight is None else pos_weight
    p = sigmoid(z)
    return -(pw * y * np.log(p) + (1 - y) * np.log(1 - p))


def masked_mean(v, m):
    return float((v * m).sum() / m.sum())


def focal(z, y, gamma, pos_weight=None):
    p = sigmoid(z)
    pt = p * y + (1 - p) * (1 - y)
    return (1 - pt) ** gamma * bce(z, y, pos_weight)


def ce(z, onehot, keep, weight=None):
    w = np.ones(z.shape[1]) if weight is None else weight
    cls = onehot.argmax(1)
    per = -w[cls] * log_softmax(z)[np.arange(len(z)), cls]
    return float((per * keep).sum() / (w[cls] * keep).sum())


def softmax_kl(s, t, keep, T):
    ps, pt = np.exp(log_softmax(s / T)), np.exp(log_softmax(t / T))
    kl = (pt * (np.log(pt) - np.log(ps))).sum(1)
    return float((kl * keep).sum() / keep.sum() * T * T)


def binary_kl(s, t, m, T):
    q, p = sigmoid(t / T), sigmoid(s / T)
    kl = q * np.log(q / p) + (1 - q) * np.log((1 - q) / (1 - p))
    return masked_mean(kl, m) * T * T


def combine_multiclass(ts, w, T):
    p = sum(wk * np.exp(log_softmax(t / T)) for wk, t in zip(w, ts))
    return T * np.log(p)


def combine_multilabel(ts, w, T):
    p = sum(wk * sigmoid(t / T) for wk, t in zip(w, ts))
    return T * np.log(p / (1 - p))


def block_mean2(x):  # (..., 2h, 2w) -> (..., h, w): bilinear downsampling by 2 with align_corners=False
    return 0.25 * (x[..., 0::2, 0::2] + x[..., 1::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 1::2])


def fitnets(s, t, weight, keep, eps=1e-5):
    proj = np.einsum("oc,bchw->bohw", weight, s)  # 1x1 conv, no bias
    mu = proj.mean(axis=(0, 2, 3), keepdims=True)  # batch norm in training mode: batch statistics, biased variance
    var = proj.var(axis=(0, 2, 3), keepdims=True)
    proj = (proj - mu) / np.sqrt(var + eps)
    proj = block_mean2(proj)
    per = ((proj - t) ** 2).reshape(len(s), -1).mean(1)
    return float((per * keep).sum() / keep.sum())


def attention(s, t, p, keep):
    a_s = block_mean2((np.abs(s) ** p).sum(1)).reshape(len(s), -1)
    a_t = ((np.abs(t) ** p).sum(1)).reshape(len(t), -1)
    q_s = a_s / np.linalg.norm(a_s, axis=1, keepdims=True)
    q_t = a_t / np.linalg.norm(a_t, axis=1, keepdims=True)
    d = np.linalg.norm(q_s - q_t, axis=1)
    return float((d * keep).sum() / keep.sum())


def block_mean(x, k):  # (..., k h, k w) -> (..., h, w): adaptive average pooling by a whole factor k
    h, w = x.shape[-2] // k, x.shape[-1] // k
    return x.reshape(*x.shape[:-2], h, k, w, k).mean(axis=(-3, -1))


def e2kd(s, t, m):  # 1 - cos(bilinear(ReLU(s)) to t's size, ReLU(t)), masked mean over (image, label)
    s, t = block_mean2(np.maximum(s, 0)).reshape(*s.shape[:2], -1), np.maximum(t, 0).reshape(*t.shape[:2], -1)
    keep = m * (t.sum(2) > 0)
    den = np.linalg.norm(s, axis=2) * np.linalg.norm(t, axis=2)
    cos = np.where(keep > 0, (s * t).sum(2) / np.where(den > 0, den, 1.0), 0.0)
    return masked_mean(1 - cos, keep)


def cat(s, t, m, pool=2):  # pooled to pool x pool, each map L2-normalised, mean squared difference
    s = block_mean(s, s.shape[-1] // pool).reshape(*s.shape[:2], -1)
    t = block_mean(t, t.shape[-1] // pool).reshape(*t.shape[:2], -1)
    s, t = s / np.linalg.norm(s, axis=2, keepdims=True), t / np.linalg.norm(t, axis=2, keepdims=True)
    return masked_mean(((s - t) ** 2).mean(2), m)


def gap_linear_gradcam(feat, weight):  # Grad-CAM of a GAP + linear head: sum_k W_lk / (h w) A_k
    h, w = feat.shape[-2:]
    return np.einsum("lc,bchw->blhw", weight, feat) / (h * w)


def main() -> None:
    rng = np.random.default_rng(20240601)
    B, L, C = 6, 5, 4
    ml = {"student": rng.normal(0, 2, (B, L)), "teacher": rng.normal(0, 3, (B, L)),
          "target": (rng.random((B, L)) < 0.4).astype(float), "mask": (rng.random((B, L)) < 0.75).astype(float),
          "pos_weight": rng.uniform(0.5, 4, L)}
    ml["mask"][0, :] = 1.0
    mc_cls = rng.integers(0, C, B)
    mc = {"student": rng.normal(0, 2, (B, C)), "teacher": rng.normal(0, 3, (B, C)),
          "target": np.eye(C)[mc_cls], "keep": np.array([1, 1, 0, 1, 1, 0], float),
          "class_weights": rng.uniform(0.3, 3, C)}
    mc["mask"] = np.repeat(mc["keep"][:, None], C, axis=1)
    teachers_ml = [rng.normal(0, 3, (B, L)) for _ in range(3)]
    teachers_mc = [rng.normal(0, 3, (B, C)) for _ in range(3)]
    tw = [0.5, 0.3, 0.2]
    feat = {"student": rng.normal(0, 1, (4, 3, 8, 8)), "teacher": rng.normal(0, 1, (4, 5, 4, 4)),
            "weight": rng.normal(0, 0.5, (5, 3)), "keep": np.array([1, 0, 1, 1], float)}
    maps = {"student": rng.normal(0, 1, (4, 3, 8, 8)), "teacher": rng.normal(0.3, 1, (4, 3, 4, 4)),
            "mask": np.array([[1, 1, 0], [1, 0, 1], [1, 1, 1], [0, 1, 1]], float),
            "teacher_logits": rng.normal(0, 2, (4, 3)), "features": rng.normal(0, 1, (2, 5, 3, 3)),
            "head_weight": rng.normal(0, 1, (3, 5))}
    maps["teacher"][1, 2] = -1.0  # all negative: nothing to match after the ReLU, left out of e2KD
    alpha, T_ml, T_mc = 0.3, 2.0, 4.0

    expected = {
        "bce": masked_mean(bce(ml["student"], ml["target"]), ml["mask"]),
        "bce_pos_weight": masked_mean(bce(ml["student"], ml["target"], ml["pos_weight"]), ml["mask"]),
        "focal_gamma2": masked_mean(focal(ml["student"], ml["target"], 2.0), ml["mask"]),
        "focal_gamma2_pos_weight": masked_mean(focal(ml["student"], ml["target"], 2.0, ml["pos_weight"]), ml["mask"]),
        "ce": ce(mc["student"], mc["target"], mc["keep"]),
        "ce_weighted": ce(mc["student"], mc["target"], mc["keep"], mc["class_weights"]),
        "kd_kl_T4": softmax_kl(mc["student"], mc["teacher"], mc["keep"], T_mc),
        "kd_bce_T2": binary_kl(ml["student"], ml["teacher"], ml["mask"], T_ml),
        "kd_mse_multilabel": masked_mean((ml["student"] - ml["teacher"]) ** 2, ml["mask"]),
        "kdloss_multiclass_total": alpha * ce(mc["student"], mc["target"], mc["keep"])
        + (1 - alpha) * softmax_kl(mc["student"], mc["teacher"], mc["keep"], T_mc),
        "kdloss_multilabel_total": alpha * masked_mean(bce(ml["student"], ml["target"]), ml["mask"])
        + (1 - alpha) * binary_kl(ml["student"], ml["teacher"], ml["mask"], T_ml),
        "combine_multiclass_T4": combine_multiclass(teachers_mc, tw, T_mc).tolist(),
        "combine_multilabel_T2": combine_multilabel(teachers_ml, tw, T_ml).tolist(),
        "fitnets": fitnets(feat["student"], feat["teacher"], feat["weight"], feat["keep"]),
        "attention_p2": attention(feat["student"], feat["teacher"], 2.0, feat["keep"]),
        "attention_p1": attention(feat["student"], feat["teacher"], 1.0, feat["keep"]),
        "e2kd_multilabel": e2kd(maps["student"], maps["teacher"], maps["mask"]),
        "e2kd_single_label": e2kd(maps["student"], maps["teacher"],
                                  maps["mask"] * np.eye(3)[maps["teacher_logits"].argmax(1)]),
        "cat_pool2": cat(maps["student"], maps["teacher"], maps["mask"]),
        "cat_pool1": cat(maps["student"], maps["teacher"], maps["mask"], pool=1),
        "gradcam_gap_linear": gap_linear_gradcam(maps["features"], maps["head_weight"]).tolist(),
    }
    data = {
        "about": "inputs and expected values for tests/test_losses.py; written by tests/golden/make_golden.py "
                 "with numpy formulas, independently of medistill",
        "params": {"alpha": alpha, "T_multilabel": T_ml, "T_multiclass": T_mc, "focal_gamma": 2.0,
                   "teacher_weights": tw},
        "multilabel": {k: v.tolist() for k, v in ml.items()},
        "multiclass": {k: v.tolist() for k, v in mc.items()},
        "teachers_multilabel": [t.tolist() for t in teachers_ml],
        "teachers_multiclass": [t.tolist() for t in teachers_mc],
        "features": {k: v.tolist() for k, v in feat.items()},
        "maps": {k: v.tolist() for k, v in maps.items()},
        "expected": expected,
    }
    OUT.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
