"""``benchmarks/paper_b_full.py``'s bookkeeping: each student schedule (epochs, mixing) keeps its own runs, chosen
alpha / T and KD figures, and the contract's top-level fields come from the current schedule (no training here)."""

from __future__ import annotations

import argparse

import pytest
from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("paper_b_full")


def test_a_mixed_schedule_is_its_own_set_of_runs(bench):
    plain = argparse.Namespace(student_epochs=20, views=8, image_size=128, mixup=0.0, cutmix=0.0, mix_prob=1.0)
    mixed = argparse.Namespace(student_epochs=20, views=8, image_size=128, mixup=1.0, cutmix=0.0, mix_prob=1.0)
    small = argparse.Namespace(student_epochs=20, views=8, image_size=64, mixup=0.0, cutmix=0.0, mix_prob=1.0)
    assert bench.schedule(plain) == "e20" and bench.schedule(mixed) == "e20_mu1"
    assert bench.schedule(small) == "e20_px64"  # another input size is another set of runs
    assert bench.schedule(argparse.Namespace(**{**vars(small), "views": 0})) == "e20_px64_online"  # online KD too

    def row(acc):
        return {"model": "kdfmv", "accuracy": acc, "macs": 78e6, "per_class_recall": {"a": acc}}

    runs = {"teacher": {**row(0.957), "model": "efficientnet_lite0"},
            "kdfmv_e20_nokd_s0": row(0.93), "kdfmv_e20_kd_a0.2_T2_s0": row(0.92),
            "kdfmv_e20_kd_a0.5_T4_s0": row(0.94),  # a grid point not chosen: not among the KD figures
            "kdfmv_e20_mu1_nokd_s0": row(0.88), "kdfmv_e20_mu1_kd_a0_T1_s0": row(0.91)}
    res = {"runs": runs, "current": "e20_mu1",
           "schedules": {"e20": {"student_epochs": 20, "chosen_alpha_T": {"alpha": 0.2, "T": 2.0}},
                         "e20_mu1": {"student_epochs": 20, "mixup": 1.0,
                                     "chosen_alpha_T": {"alpha": 0.0, "T": 1.0}}}}
    out = bench.summarise(res)
    assert out["schedules"]["e20"]["students"]["kdfmv"]["kd"] == [0.92]
    assert out["schedules"]["e20"]["students"]["kdfmv"]["nokd"] == [0.93]  # the mixed runs stay out of e20
    assert out["students"]["kdfmv"]["kd"] == [0.91] and out["students"]["kdfmv"]["nokd"] == [0.88]
    assert out["teacher"]["accuracy"] == 0.957


def test_a_run_another_process_is_starting_is_left_to_it(tmp_path):
    """A run folder without a checkpoint is cleared for a fresh start only under its lock: while another process
    holds the lock (training, before its first epoch ends), train_and_evaluate raises RunLockedError and deletes
    nothing (it used to remove the folder, lock file included, so two processes trained into it at once)."""
    from medistill import runs
    from medistill.config import RunConfig, build
    from medistill.runs import RunLockedError

    helpers = load_benchmark("_bench")
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.txt").write_text("the other process's first lines\n")
    cfg = build(RunConfig, overrides={"out": str(out), "data.dataset": "phantom", "data.root": str(tmp_path)})
    with runs.RunDir(out).lock():
        with pytest.raises(RunLockedError):
            helpers.train_and_evaluate(cfg)
    assert (out / "log.txt").read_text() == "the other process's first lines\n"
    assert (out / runs.LOCK_FILE).is_file()


def test_the_teacher_can_be_fine_tuned_with_the_named_recipe(bench, monkeypatch, tmp_path):
    monkeypatch.setattr("sys.argv", ["paper_b_full.py", "--dataset", "alzheimer-mri", "--teacher-recipe", "finetune",
                                     "--teacher-epochs", "12", "--teacher-size", "128"])
    a = bench.parse()
    a.data_root, a.cache_dir = "/data/alzheimer-mri", "cache"
    t = bench.teacher_cfg(a, tmp_path / "teacher")
    # the recipe's smoothing, EMA, AdamW and dropout; the benchmark's own epochs, size and lr over the recipe's
    assert (t.recipe, t.train.label_smoothing, t.train.ema_decay, t.train.optimizer, t.model.drop_rate) == (
        "finetune", 0.1, 0.998, "adamw", 0.2)
    assert (t.train.epochs, t.data.image_size, t.train.lr, t.model.pretrained) == (12, 128, 0.001, True)
    monkeypatch.setattr("sys.argv", ["paper_b_full.py"])
    plain = bench.teacher_cfg(bench.parse(), tmp_path / "teacher")  # the brain tumour teacher's plain settings
    assert (plain.recipe, plain.train.label_smoothing, plain.train.ema_decay) == (None, 0.0, 0.0)


def test_group_similar_reaches_the_teacher_and_every_student(bench, monkeypatch, tmp_path):
    monkeypatch.setattr("sys.argv", ["paper_b_full.py", "--dataset", "alzheimer-mri", "--group-similar", "0.98",
                                     "--split-seed", "1"])
    a = bench.parse()
    a.data_root = "/data/alzheimer-mri"
    t = bench.teacher_cfg(a, tmp_path / "teacher").data
    assert (t.group_similar, t.split_seed) == (0.98, 1)
    for kd in (None, (0.0, 1.0)):
        d = bench.student_cfg(a, tmp_path, "kdfmv", 0, kd)[1].data
        assert (d.group_similar, d.split_seed) == (0.98, 1)
    monkeypatch.setattr("sys.argv", ["paper_b_full.py"])
    t = bench.teacher_cfg(bench.parse(), tmp_path / "teacher").data
    assert (t.group_similar, t.split_seed) == (None, 0)


def test_runs_are_also_scored_without_the_test_images_that_copy_training_images(bench, monkeypatch, tmp_path):
    """8 test images, the last 3 near copies of training images: each run's accuracy on the other 5 and on the 3,
    and the KD gain on the 5."""
    import numpy as np

    monkeypatch.setattr("sys.argv", ["paper_b_full.py", "--seeds", "2", "--bootstrap", "50"])
    a = bench.parse()
    a.data_root = "/data/brain-tumor-mri"
    monkeypatch.setattr(bench, "near_copy_mask", lambda cfg, t: np.array([0, 0, 0, 0, 0, 1, 1, 1], bool))
    targets = np.eye(2)[[0, 1, 0, 1, 0, 1, 0, 1]]

    def run(name: str, right: list[int], mask: np.ndarray | None = None) -> None:
        (tmp_path / name).mkdir(exist_ok=True)
        probs = np.where(np.array(right, bool)[:, None], targets, 1 - targets)
        np.savez_compressed(tmp_path / name / "predictions_test.npz", probs=probs, targets=targets,
                            mask=np.ones_like(targets) if mask is None else mask)

    run("teacher", [1, 1, 1, 1, 0, 1, 1, 1])
    for seed, (kd, nokd) in enumerate([([1, 1, 1, 1, 0, 1, 1, 1], [1, 1, 0, 0, 0, 1, 1, 1]),
                                       ([1, 1, 1, 0, 0, 1, 1, 0], [1, 0, 0, 0, 0, 1, 1, 1])]):
        run(bench.student_cfg(a, tmp_path, "kdfmv", seed, (0.0, 1.0))[0], kd)
        run(bench.student_cfg(a, tmp_path, "kdfmv", seed, None)[0], nokd)
    w = bench.without_near_copies(a, tmp_path, "kdfmv", (0.0, 1.0))
    assert (w["test_images"], w["near_copies"], w["threshold"]) == (8, 3, 0.98)
    assert w["teacher"] == (0.8, 1.0)
    assert w["kd"] == [0.8, 0.6] and w["nokd"] == [0.4, 0.2]
    assert w["kd_on_copies"] == [1.0, 2 / 3] and w["nokd_on_copies"] == [1.0, 1.0]
    assert w["mean_gain"] == pytest.approx(0.4) and w["gain_seed0"]["value"] == pytest.approx(0.4)
    md = bench.markdown({"brain-tumor-mri": {"schedules": {"e20": {"student_epochs": 20,
                                                                    "without_near_copies": {"kdfmv": w}}}}})
    assert ("kdfmv on the 5 test images without a near copy in training (3 of 8 have one: thumbnail correlation "
            ">= 0.98): KD 70.00 ± 14.14 %, no KD 30.00 ± 14.14 %, mean gain +40.00 points") in md
    # an image without a label (mask row of zeros) counts for no one, as in the metrics: the teacher's miss goes
    masked = np.ones_like(targets)
    masked[4] = 0
    run("teacher", [1, 1, 1, 1, 0, 1, 1, 1], masked)
    assert bench.without_near_copies(a, tmp_path, "kdfmv", (0.0, 1.0))["teacher"] == (1.0, 1.0)


def test_results_are_written_through_a_temporary_file_of_the_writers_own(tmp_path):
    """Two processes of one benchmark write one results file; a fixed temporary name (results.tmp) let one move
    the other's file away, and the second failed (FileNotFoundError) after its run had finished."""
    helpers = load_benchmark("_bench")
    (tmp_path / "results.tmp").mkdir()  # where the fixed name would write: taken
    helpers.write_json(tmp_path / "results.json", {"a": 1})
    helpers.write_json(tmp_path / "results.json", {"a": 2})
    assert helpers.read_json(tmp_path / "results.json") == {"a": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "results.tmp"]


def test_per_class_recall_is_tabled_for_the_teacher_and_each_student(bench):
    """Mean and sd over seeds per class; a class missing from the test split reads n/a; no recalls, no table."""
    students = {"kdfmv": {"kd_recall": [{"a": 0.5, "b": None}, {"a": 1.0, "b": None}],
                          "nokd_recall": [{"a": 0.25, "b": None}, {"a": 0.25, "b": None}]}}
    lines = bench.recall_table(students, {"per_class_recall": {"a": 0.9, "b": None}})
    assert "| class | teacher | kdfmv KD | kdfmv no KD |" in lines
    assert "| a | 90.00 | 75.00 ± 35.36 | 25.00 ± 0.00 |" in lines
    assert "| b | n/a | n/a | n/a |" in lines
    assert bench.recall_table({"kdfmv": {"kd_recall": [], "nokd_recall": [None]}}, None) == []


def test_a_test_split_without_near_copies_says_so_in_one_line(bench):
    w = {"threshold": 0.98, "test_images": 1025, "near_copies": 0, "teacher": [0.5, None], "kd": [0.5], "nokd": [0.4],
         "kd_on_copies": [None], "nokd_on_copies": [None], "mean_gain": 0.1, "gain_seed0": {}}
    md = bench.markdown({"alzheimer-mri": {"schedules": {"e15": {"student_epochs": 15,
                                                                  "without_near_copies": {"kdfmv": w,
                                                                                          "eeea_net_c2": w}}}}})
    assert md.count("None of the 1025 test images has a near copy in training (thumbnail correlation >= 0.98).") == 1
    assert "without a near copy" not in md and "copies alone" not in md


def test_a_gain_only_the_other_process_computed_is_kept_when_this_one_saves(bench):
    """Two --phase kd processes share a schedule's runs: the one that trained a student's last run computes its
    gain; the other, saving later, must not drop it, nor a schedule or a run it never saw."""
    mine = {"runs": {"a_s0": {"accuracy": 0.5}},
            "schedules": {"e15": {"student_epochs": 15, "kd_gain": {"kdfmv": {"value": 0.05}}}}}
    written = {"runs": {"a_s0": {"accuracy": 0.1}, "a_s1": {"accuracy": 0.6}},
               "schedules": {"e15": {"student_epochs": 15, "kd_gain": {"eeea_net_c2": {"value": -0.03},
                                                                        "kdfmv": {"value": 0.9}},
                                     "without_near_copies": {"eeea_net_c2": {"near_copies": 0}}},
                             "e20": {"student_epochs": 20}}}
    bench.merge_written(mine, written, "e15")
    assert mine["runs"] == {"a_s0": {"accuracy": 0.5}, "a_s1": {"accuracy": 0.6}}
    assert mine["schedules"]["e15"]["kd_gain"] == {"kdfmv": {"value": 0.05}, "eeea_net_c2": {"value": -0.03}}
    assert mine["schedules"]["e15"]["without_near_copies"] == {"eeea_net_c2": {"near_copies": 0}}
    assert mine["schedules"]["e20"] == {"student_epochs": 20}
    fresh = {"runs": {}}  # a --phase nokd process never builds the schedule: it keeps the one written
    bench.merge_written(fresh, written, "e15")
    assert fresh["schedules"]["e15"]["kd_gain"]["kdfmv"] == {"value": 0.9}


def test_a_kd_process_waits_for_the_teacher_another_process_is_training(bench, monkeypatch, tmp_path):
    """A second --phase kd process finds the teacher locked: it must wait until the teacher is finished before it
    distils anything (it used to go on and distil from the weights saved so far)."""
    from pathlib import Path

    from medistill.runs import RunLockedError

    class Student(Exception):
        pass

    state = {"sleeps": 0, "teacher_calls": 0}

    def train_and_evaluate(cfg, n_bootstrap=200):
        if cfg.out.endswith("teacher"):
            state["teacher_calls"] += 1
            if state["sleeps"] < 2:
                raise RunLockedError(f"{cfg.out}: in use by another medistill process")
            Path(cfg.out).mkdir(parents=True)
            (Path(cfg.out) / "run.json").write_text('{"best_val_accuracy": 0.5}')
            return {"accuracy": 0.5, "macs": 1, "skipped": True}
        raise Student(state["sleeps"])  # the first student: stop here and report how long we waited

    monkeypatch.setattr(bench.B, "train_and_evaluate", train_and_evaluate)
    monkeypatch.setattr(bench.B, "is_done", lambda out: state["sleeps"] >= 2)
    monkeypatch.setattr(bench.time, "sleep", lambda s: state.__setitem__("sleeps", state["sleeps"] + 1))
    monkeypatch.setattr(bench, "plot_curve", lambda *a: None)
    monkeypatch.setattr("sys.argv", ["paper_b_full.py", "--phase", "kd", "--runs", str(tmp_path / "runs"),
                                     "--results", str(tmp_path / "r.json"), "--data-root", str(tmp_path)])
    with pytest.raises(Student) as e:
        bench.main()
    assert e.value.args == (2,) and state["teacher_calls"] == 2


def test_each_schedule_names_the_machine_it_was_written_on(bench):
    """A results file gathers schedules from several sessions: each shows the machine of its own session, and the
    file-wide machine (the last writer's) is shown, and said to be that, only while some schedule has none."""
    old = {"cpu": "old CPU", "shared": "shared with 2 other jobs"}
    new = {"cpu": "new CPU", "shared": "not shared"}
    sched = {"e15": {"student_epochs": 15, "machine": old}, "e40": {"student_epochs": 40, "machine": new}}
    md = bench.markdown({"alzheimer-mri": {"machine": new, "schedules": sched}})
    assert md.index("Machine: new CPU, not shared") < md.index("### Students trained 15") \
        < md.index("Machine: old CPU, shared with 2 other jobs")
    assert "last written" not in md
    del sched["e15"]["machine"]
    md = bench.markdown({"alzheimer-mri": {"machine": new, "schedules": sched}})
    assert "Machine: new CPU, not shared (when this file was last written)" in md
    assert "old CPU" not in md
    md = bench.markdown({"alzheimer-mri": {"machine": new}})  # a teacher alone, no student schedule yet
    assert "Machine: new CPU, not shared (when this file was last written)" in md


def test_a_student_added_to_a_schedule_keeps_each_students_machine_and_one_command_for_all(bench):
    """A second student added to a schedule by a later process: the first keeps the machine it was written on, each
    is shown with its own, and the command reproduces both students, not only the last process's."""
    old = {"cpu": "old CPU", "shared": "shared with 2 other jobs"}
    new = {"cpu": "new CPU", "shared": "not shared"}
    sched = {"student_epochs": 40, "machine": old, "students": {"eeea_net_c2": {"kd": [], "nokd": [], "macs": 1}},
             "command": "python benchmarks/paper_b_full.py --students eeea_net_c2 --student-epochs 40"}
    bench.stamp_machine(sched, ["kdfmv"], new)
    assert sched["machines"] == {"eeea_net_c2": old, "kdfmv": new} and sched["machine"] == new
    bench.stamp_machine(sched, ["kdfmv"], old)  # kdfmv rewritten later: only its own entry moves
    assert sched["machines"] == {"eeea_net_c2": old, "kdfmv": old}
    bench.stamp_machine(sched, ["kdfmv"], new)
    bench.stamp_machine(sched, [], {"cpu": "a re-run that trained nothing"})  # leaves every machine as it was
    assert sched["machines"]["kdfmv"] == new and sched["machine"] == new
    sched["students"]["kdfmv"] = {"kd": [], "nokd": [], "macs": 1}
    md = bench.markdown({"alzheimer-mri": {"schedules": {"e40": sched}}})
    assert "Machine: old CPU, shared with 2 other jobs (for eeea_net_c2)" in md
    assert "Machine: new CPU, not shared (for kdfmv)" in md
    assert "`python benchmarks/paper_b_full.py --students eeea_net_c2,kdfmv --student-epochs 40`" in md
    assert bench.schedule_command("x --students kdfmv --seeds 3", ["eeea_net_c2", "kdfmv", "eeea_net_c2"]) \
        == "x --students kdfmv,eeea_net_c2 --seeds 3"  # the command's own students first: the first chooses alpha / T
    assert bench.schedule_command("x --seeds 3", ["kdfmv"]) == "x --seeds 3"


def test_the_recorded_command_carries_the_niceness_it_ran_at(bench, monkeypatch):
    """Commands were recorded behind a fixed "nice -n 19" whatever the process ran at."""
    monkeypatch.setattr("os.nice", lambda n: 10)
    assert bench.B.niced("python x.py") == "nice -n 10 python x.py"
    monkeypatch.setattr("os.nice", lambda n: 0)
    assert bench.B.niced("python x.py") == "python x.py"


def test_a_schedule_shows_its_students_at_the_last_epoch_too(bench):
    sched = {"student_epochs": 40, "students": {"kdfmv": {"kd": [0.5], "nokd": [0.5], "macs": 1}},
             "last_epoch": {"kdfmv": {"kd": [0.52, 0.56], "nokd": [0.5, 0.5], "mean_gain": 0.04}}}
    md = bench.markdown({"alzheimer-mri": {"schedules": {"e40": sched}}})
    assert ("kdfmv with its last epoch's weights instead of its best validation epoch's: KD 54.00 ± 2.83 %, no KD "
            "50.00 ± 0.00 %, KD - no-KD +4.00 points (per seed: KD 52.00, 56.00; no KD 50.00, 50.00).") in md
    sched["last_epoch"]["kdfmv"] = {"kd": [0.52, None], "nokd": [0.5, 0.5], "mean_gain": None}  # a run without them
    md = bench.markdown({"alzheimer-mri": {"schedules": {"e40": sched}}})
    assert "KD - no-KD n/a points (per seed: KD 52.00, n/a; no KD 50.00, 50.00)" in md
