"""Every ready-to-run config in configs/ loads into RunConfig (plain YAML, known keys, valid values)."""

from pathlib import Path

import pytest

from medistill.config import RunConfig, build

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_configs_exist() -> None:
    assert CONFIGS, "configs/*.yaml: no config files found"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads(path: Path) -> None:
    cfg = build(RunConfig, file=path)
    assert cfg.data.image_size >= 8
    if "student_kd" in path.name:
        assert cfg.distill.teacher, f"{path.name}: a KD student config must name its teacher"
    if path.name.startswith("paper_a_"):
        assert cfg.data.image_size == 224 and cfg.data.dataset in ("nih", "chexpert", "padchest")
