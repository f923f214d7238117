"""The main job end to end at toy scale: every step runs on real run directories and the report is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medistill.quickstart import QuickstartConfig, run_configs, run_quickstart


def test_quickstart_configs_are_a_fair_comparison():
    cfgs = run_configs(QuickstartConfig(out="q"))
    s, n = cfgs["student"], cfgs["student_nokd"]
    assert s.distill.teacher == str(Path("q") / "teacher") and n.distill.teacher is None
    assert (s.model, s.train, s.data) == (n.model, n.train, n.data)  # only KD differs
    # the scenario: an ImageNet-initialised teacher fine-tuned at a lower rate, at a larger size than the student
    t = cfgs["teacher"]
    assert t.model.pretrained and t.model.name == "efficientnet_lite0" and t.train.lr < s.train.lr
    assert t.data.image_size > s.data.image_size


def test_quickstart_refuses_a_pretrained_teacher_without_offline_weights():
    from medistill.config import ConfigError

    q = QuickstartConfig(teacher="resnet18")
    with pytest.raises(ConfigError, match="teacher_pretrained: 'resnet18' has no offline ImageNet weights; use "
                                          "--teacher-pretrained false"):
        q.validate()
    QuickstartConfig(teacher="resnet18", teacher_pretrained=False).validate()


@pytest.mark.slow
def test_quickstart_end_to_end(phantom_root: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MEDISTILL_CACHE", str(tmp_path / "cache"))
    q = QuickstartConfig(out=str(tmp_path / "qs"), root=str(phantom_root), image_size=32, teacher_image_size=48,
                         teacher="tiny_cnn", teacher_pretrained=False, student="kdfmv", teacher_epochs=1, student_epochs=1, limit=48,
                         explain_images=2)
    steps: list[str] = []
    summary = run_quickstart(q, step=steps.append)
    out = Path(q.out)
    for name in ("teacher", "student", "student_nokd"):
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert 0.0 <= metrics["macro_auc"] <= 1.0 and metrics["params"] > 0 and metrics["split"] == "test"
    assert json.loads((out / "student" / "run.json").read_text())["teacher"] == str((out / "teacher").resolve())
    explain = json.loads((out / "student" / "explain" / "explain.json").read_text())
    assert explain["num_images"] == 2 and "agreement_spearman" in explain
    export = json.loads((out / "student" / "export" / "export.json").read_text())
    assert export["max_abs_diff"] < 1e-4 and (out / "student" / "export" / "model.int8.onnx").is_file()
    assert (out / "student" / "export" / "benchmark.json").is_file()
    html = (out / "report.html").read_text()
    assert summary["report"] == str(out / "report.html") and "<table" in html and "data:image/png;base64" in html
    assert any(s.startswith("report:") for s in steps)
    # the story of distillation, told whatever happened: the scenario and KD minus no-KD with its verdict
    story = summary["kd_story"]
    assert story.startswith("Scenario: the teacher (tiny_cnn) saw 48 px images, the student (kdfmv) sees 32 px")
    assert "KD minus no-KD (kdfmv, macro_auc on test)" in story and story in steps
    assert summary["kd_gain"]["verdict"] in story
    assert json.loads((out / "student" / "run.json").read_text())["distill_mode"] == "views"
    for step in ("explain", "export", "benchmark", "report"):  # each later step keeps its log and its result
        assert f"{step} result:" in (out / f"{step}.log").read_text()
    assert '"max_abs_diff"' in (out / "export.log").read_text()
    # a second run reuses the finished runs instead of training again
    again = run_quickstart(q, step=steps.append)
    assert any("already trained" in s for s in steps) and again["teacher"] == summary["teacher"]
