"""``benchmarks/explain_neutral.py``'s rules, fixed before any test map: GradientShap's sample count and the
explanation-aware arm are chosen on validation figures only, and the targets are judged from the test means (no
training here)."""

from __future__ import annotations

import pytest
from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("explain_neutral")


def test_the_sample_count_is_the_smallest_within_tolerance_of_the_largest(bench):
    assert bench.choose_samples({16: 0.60, 32: 0.66, 64: 0.70, 128: 0.71}, 0.02) == 64
    assert bench.choose_samples({16: 0.70, 32: 0.66, 64: 0.70, 128: 0.71}, 0.02) == 16
    assert bench.choose_samples({16: 0.1, 128: 0.5}, 0.0) == 128


def test_the_arm_is_the_best_validation_gradientshap_among_those_that_keep_auc(bench):
    rows = {"e2kd:0.1": {"val_macro_auc": 0.930, "val_gradientshap_pg": 0.50},
            "e2kd:1": {"val_macro_auc": 0.880, "val_gradientshap_pg": 0.90},  # best map, but AUC fell 0.05
            "cat:1": {"val_macro_auc": 0.925, "val_gradientshap_pg": 0.55}}
    chosen, why = bench.choose_arm(rows, kd_val_auc=0.934)
    assert chosen == "cat:1" and "2 candidates" in why
    # none keeps AUC within 0.01: the highest validation AUC, said so
    chosen, why = bench.choose_arm(rows, kd_val_auc=0.99)
    assert chosen == "e2kd:0.1" and why.startswith("no candidate")


def test_targets_need_005_on_both_neutral_maps_and_auc_within_001(bench):
    kd = {"gradientshap_pg": 0.60, "occlusion_pg": 0.50, "macro_auc": 0.930}
    t = bench.targets({"kd": kd, "e2kd": {"gradientshap_pg": 0.66, "occlusion_pg": 0.52, "macro_auc": 0.925}})
    assert t["e2kd_gradientshap_pg_ge_kd_plus_0.05"]["met"] is True
    assert t["e2kd_occlusion_pg_ge_kd_plus_0.05"]["met"] is False
    assert t["e2kd_macro_auc_within_0.01_of_kd"]["met"] is True
    assert bench.targets({"kd": kd}) == {}


def test_seed_means_keep_each_seed_and_skip_missing_figures(bench):
    m = bench.mean_row([{"run": "kd_s0", "gradcam_pg": 0.4, "macro_auc": 0.9, "occlusion_pg": None},
                        {"run": "kd_s1", "gradcam_pg": 0.6, "macro_auc": 0.8, "occlusion_pg": 0.5}])
    assert m["gradcam_pg"] == pytest.approx(0.5) and m["macro_auc"] == pytest.approx(0.85)
    assert m["occlusion_pg"] == 0.5 and m["seeds"] == 2 and [r["run"] for r in m["per_seed"]] == ["kd_s0", "kd_s1"]


def test_a_malformed_candidate_is_refused_by_name(bench):
    with pytest.raises(SystemExit, match="'e2kd:x'"):
        bench.parse(["--candidates", "e2kd:0.1,e2kd:x"])
    with pytest.raises(SystemExit, match="'gradcam:1'"):
        bench.parse(["--candidates", "gradcam:1"])


def test_the_markdown_of_a_partial_benchmark_states_what_it_has(bench):
    res = {"command": "python benchmarks/explain_neutral.py", "machine": {"cpu": "X", "shared": "not shared"},
           "phantom": {"phantom": "p", "image_size": 128, "chance": 0.03, "explained_images": 200,
                       "gradientshap_samples": {"chosen": 32, "rule": "r", "validation_pointing_game": {"16": 0.5}},
                       "models": {"kd": bench.mean_row([{"run": "kd_s0", "gradcam_pg": 0.4, "macro_auc": 0.9}])}}}
    md = bench.markdown(res)
    assert "chosen on validation: **32**" in md and "| kd | 1 | 0.400 |" in md and "Machine: X" in md


def test_the_recorded_command_parses_back_to_the_same_options(bench):
    import shlex

    a = bench.parse(["--teacher", "resnet18", "--no-teacher-pretrained", "--no-students", "--runs", "elsewhere"])
    words = shlex.split(bench.command_of(a))
    assert "--no-students" in words and "--no-teacher-pretrained" in words
    assert bench.parse(words[2:]) == a


def _summary(hits: dict[str, list[float]]) -> dict:
    """An explain.json summary whose images have one map per (label, hit)."""
    return {"images": [{"name": im, "maps": [{"label": f"L{i}", "pointing_game": h} for i, h in enumerate(hs)]}
                       for im, hs in hits.items()]}


def test_map_hits_key_each_map_by_image_and_label(bench):
    h = bench.map_hits(_summary({"a": [1.0, 0.0], "b": [1.0]}))
    assert h == {("a", "L0"): 1.0, ("a", "L1"): 0.0, ("b", "L0"): 1.0}


def test_the_paired_difference_averages_seeds_and_resamples_images(bench):
    imgs = [f"i{k}" for k in range(40)]
    # e2kd hits every map at both seeds; kd hits half of them at seed 0 and none at seed 1
    e2 = [bench.map_hits(_summary({i: [1.0] for i in imgs}))] * 2
    kd = [bench.map_hits(_summary({i: [float(k % 2)] for k, i in enumerate(imgs)})),
          bench.map_hits(_summary({i: [0.0] for i in imgs}))]
    d = bench.paired_difference(e2, kd, n_bootstrap=500)
    assert d["difference"] == pytest.approx(0.75) and d["per_seed"] == pytest.approx([0.5, 1.0])
    assert d["maps"] == 40 and d["images"] == 40
    lo, hi = d["ci95"]
    assert 0.6 < lo < 0.75 < hi < 0.9  # per-map differences are 0.5 or 1.0: the interval is around 0.75
    # identical models: a difference of exactly 0, with no width
    same = bench.paired_difference(kd, kd, n_bootstrap=200)
    assert same["difference"] == 0.0 and same["ci95"] == [0.0, 0.0]
    # a map missing from one seed is left out of the comparison
    short = [bench.map_hits(_summary({i: [1.0] for i in imgs[:10]}))] * 2
    assert bench.paired_difference(short, kd, n_bootstrap=50)["maps"] == 10


def test_the_markdown_gives_the_paired_interval(bench):
    res = {"command": "c", "machine": {"cpu": "X", "shared": "not shared"},
           "phantom": {"models": {}, "e2kd_minus_kd": {"occlusion_pg": {
               "difference": 0.02, "ci95": [-0.03, 0.07], "maps": 230, "images": 200, "per_seed": [0.01, 0.03]}}}}
    assert "- occlusion: +0.020 [-0.030, +0.070] over 230 maps of 200 images; per seed +0.010, +0.030" in \
        bench.markdown(res)


def test_the_recorded_command_leaves_out_the_default_results_path(bench):
    assert "--results" not in bench.command_of(bench.parse([]))
    assert "--results x.json" in bench.command_of(bench.parse(["--results", "x.json"]))
