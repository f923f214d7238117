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
