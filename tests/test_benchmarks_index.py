"""``benchmarks/results/INDEX.md`` is what ``benchmarks/index.py`` writes, lists every results file, and lists no
file that is gone; ``medistill study`` results are listed without an entry of their own in the script."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
INDEX = BENCH / "results" / "INDEX.md"


@pytest.fixture(scope="module")
def index():
    """``benchmarks/index.py`` as a module (registered while loading: its dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location("benchmarks_index", BENCH / "index.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


def results_on_disk() -> set[str]:
    """Every results file, found here without the generator's help: all of results/ but INDEX.md, and the JSON and
    Markdown files directly in benchmarks/ but README.md."""
    files = {f"results/{p.name}" for p in (BENCH / "results").iterdir() if p.is_file() and p.name != "INDEX.md"}
    files |= {p.name for p in BENCH.iterdir() if p.suffix in (".json", ".md") and p.name != "README.md"}
    return {f for f in files if not Path(f).name.startswith(".")}


def listed() -> set[str]:
    """The files INDEX.md names: the first cell of its table and the companion lines under each entry."""
    text = INDEX.read_text(encoding="utf-8")
    names = set(re.findall(r"^\| `([^`]+)` \|", text, re.M))
    names |= set(re.findall(r"^- `([^`]+)`: ", text, re.M))
    return names


def test_index_is_what_the_script_writes(index):
    assert INDEX.read_text(encoding="utf-8") == index.markdown(index.entries()), \
        "benchmarks/results/INDEX.md is stale: run .venv/bin/python benchmarks/index.py"


def test_every_results_file_is_listed():
    assert results_on_disk() - listed() == set()


def test_no_listed_file_is_missing():
    assert listed() - results_on_disk() == set()


def test_every_entry_has_a_command_a_date_and_a_machine(index):
    for e in index.entries():
        assert e.claim and e.date and e.runs, e.name
        for what, command, note, machine in e.runs:
            assert command and machine, e.name


def test_standalone_claims_quote_their_file(index):
    """A results file without a JSON has its claim written by hand: each of its figures must be in the file."""
    for name, s in index.STANDALONE.items():
        text = (BENCH / "results" / name).read_text(encoding="utf-8")
        for number in re.findall(r"\d+\.\d+", s.claim):
            assert number in text, (name, number)


def _study(root: Path, name: str, sentences: list[str]) -> None:
    (root / "results").mkdir(parents=True, exist_ok=True)
    load = {"load_1min": 0.5, "cpus": 2, "load_per_cpu": 0.25, "busy": False}
    (root / "results" / name).write_text(json.dumps({
        "command": "medistill study --dataset folder --root ../shared/data/brain-tumor-mri --out runs/study_bt",
        "sentences": sentences, "latency": {"machine_load": {"before": load, "after": load}}}))


def test_study_results_are_listed_with_their_own_sentences(index, tmp_path, monkeypatch):
    monkeypatch.setattr(index, "BENCH", tmp_path)
    monkeypatch.setattr(index, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(index, "NOT_RESULTS", {tmp_path / "README.md", tmp_path / "results" / "INDEX.md"})
    _study(tmp_path, "study_brain_tumour.json", ["KD helped at 64 px.", "The smallest student within a point: x."])
    (tmp_path / "results" / "study_brain_tumour.md").write_text("# study\n")
    _study(tmp_path, "study_alzheimer.json", ["No clear difference."])
    (tmp_path / "results" / "INDEX.md").write_text("old")  # never listed
    es = {e.name: e for e in index.entries()}
    assert set(es) == {"results/study_alzheimer.json", "results/study_brain_tumour.json"}
    bt = es["results/study_brain_tumour.json"]
    assert bt.claim == "KD helped at 64 px. The smallest student within a point: x."
    assert bt.script == "`medistill study`" and bt.files == ["results/study_brain_tumour.md"]
    (_, command, _, machine), = bt.runs
    assert command.startswith("medistill study --dataset folder")
    assert machine == ("latency timed at load 0.25 per CPU of 2 (not busy) before, load 0.25 per CPU of 2 (not busy) "
                       "after")
    text = index.markdown(list(es.values()))
    assert "| `results/study_alzheimer.json` | `medistill study` | not recorded | No clear difference. |" in text


def test_a_results_file_without_a_claim_or_an_owner_is_an_error(index, tmp_path, monkeypatch):
    monkeypatch.setattr(index, "BENCH", tmp_path)
    monkeypatch.setattr(index, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(index, "NOT_RESULTS", set())
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "cpu_speed_new.json").write_text(json.dumps({"command": "x"}))
    with pytest.raises(SystemExit, match="no claim for results/cpu_speed_new.json"):
        index.entries()
    (tmp_path / "results" / "cpu_speed_new.json").unlink()
    (tmp_path / "results" / "notes.md").write_text("# notes\n")
    with pytest.raises(SystemExit, match="notes.md belongs to no results JSON"):
        index.entries()


def test_kd_verdicts(index):
    assert index.verdict([0.90, 0.91, 0.92], [0.89, 0.90, 0.91]) == "no clear difference"  # +1 point, spread 1
    assert index.verdict([0.95, 0.95, 0.96], [0.90, 0.91, 0.90]) == "KD ahead beyond the seeds' spread"
    assert index.verdict([0.80, 0.81], [0.90, 0.91]) == "KD behind beyond the seeds' spread"
    assert index.verdict([0.95, 0.96], [0.90, 0.91], {"verdict": "KD helped"}) == "KD helped"  # compare's, with CI


def test_the_neutral_claim_gives_each_target_and_the_paired_interval(index):
    m = {"seeds": 3, "macro_auc": 0.97, "gradientshap_pg": 0.70, "occlusion_pg": 0.50}
    d = {"phantom": {"image_size": 128, "explained_images": 200, "chance": 0.026, "models": {"kd": m, "e2kd": m},
                     "selection": {"chosen": "e2kd:0.1"},
                     "targets": {"e2kd_gradientshap_pg_ge_kd_plus_0.05": {"met": False},
                                 "e2kd_macro_auc_within_0.01_of_kd": {"met": True}},
                     "e2kd_minus_kd": {"gradientshap_pg": {"difference": 0.012, "ci95": [-0.02, 0.04]},
                                       "occlusion_pg": {"difference": None, "ci95": None}}}}
    text = index.CLAIMS["explain_neutral.json"](d)
    assert "targets: GradientShap >= kd + 0.05 missed, macro AUC within 0.01 of kd met" in text
    assert "e2kd - kd gradientshap +0.012 [-0.020, +0.040]." in text and "occlusion +" not in text


def script_parsers() -> dict[str, object]:
    """``benchmarks/<script>.py`` -> its module, for the scripts whose options a ``parse()`` function reads."""
    out = {}
    sys.path.insert(0, str(BENCH))
    try:
        for path in sorted(BENCH.glob("*.py")):
            if "def parse(" not in path.read_text(encoding="utf-8") or path.name == "index.py":
                continue
            spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod
            spec.loader.exec_module(mod)
            out[path.name] = mod
    finally:
        sys.path.remove(str(BENCH))
    return out


@pytest.mark.slow
def test_every_index_command_parses_with_its_script(index, monkeypatch):
    """The command INDEX.md gives for a file is one the script takes today (not a flag it dropped or renamed)."""
    parsers = script_parsers()
    checked = 0
    for e in index.entries():
        for _, command, _, _ in e.runs:
            words = shlex.split(command)
            script = next((w.split("/")[-1] for w in words if w.startswith("benchmarks/") and w.endswith(".py")), None)
            if script not in parsers:
                continue
            monkeypatch.setattr(sys, "argv", [script, *words[words.index(f"benchmarks/{script}") + 1:]])
            try:
                parsers[script].parse()
            except SystemExit:
                pytest.fail(f"{e.name}: benchmarks/{script} does not take `{command}`")
            checked += 1
    assert checked >= 30
