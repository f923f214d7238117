"""Run directories: the folder lock (one training per --out, stale after a crash), run.json's "resumed" record, and
corrupt run records refused with one line naming the file (library and CLI, exit status 2), evaluate keeping its
result when the old metrics.json is corrupt."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medistill import runs
from medistill.config import ConfigError, DataConfig, ModelConfig, RunConfig
from medistill.runs import RunDir, RunLockedError
from medistill.utils.io import JsonFileError

REPO = Path(__file__).resolve().parents[1]
SIZE = 32


def _cfg(out: Path, root: Path | str | None = None) -> RunConfig:
    root = root or out.parent / "no-data"
    return RunConfig(out=str(out), data=DataConfig(dataset="phantom", root=str(root), image_size=SIZE, cache=False),
                     model=ModelConfig(name="tiny_cnn"))


# --- the lock ------------------------------------------------------------------------------------------------------
def test_second_lock_is_refused_naming_the_folder_and_holder(tmp_path):
    run = RunDir(tmp_path / "run")
    with run.lock():
        assert run.file(runs.LOCK_FILE).read_text().strip() == str(os.getpid())
        with pytest.raises(RunLockedError) as e:
            with run.lock():
                pass
        msg = str(e.value)
        assert str(run.path) in msg and f"pid {os.getpid()}" in msg and "--out" in msg
    with run.lock():  # released at the end of the block
        pass


def test_holder_names_the_process_holding_the_lock_without_touching_it(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.holder() is None and not run.file(runs.LOCK_FILE).exists()  # no lock file: none is made
    with run.lock():
        lock_file = run.file(runs.LOCK_FILE)
        lock_file.write_text("4242\n")  # as another process would have written it
        assert run.holder() == "4242"
        assert lock_file.read_text() == "4242\n"
    assert run.holder() is None  # released
    assert run.file(runs.LOCK_FILE).read_text() == "4242\n"  # looking did not rewrite it


def test_lock_of_a_killed_holder_is_taken_over(tmp_path):
    """A process holding the lock is SIGKILLed: its lock is stale and the next process takes it over."""
    folder = tmp_path / "run"
    code = (f"import sys, time\nfrom medistill.runs import RunDir\nwith RunDir({str(folder)!r}).lock():\n"
            f"    print('locked', flush=True)\n    time.sleep(120)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"pid {child.pid}"):
            with RunDir(folder).lock():
                pass
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert (folder / runs.LOCK_FILE).read_text().strip() == str(child.pid)  # the stale holder's pid is still there
    with RunDir(folder).lock():
        assert (folder / runs.LOCK_FILE).read_text().strip() == str(os.getpid())


def test_training_into_a_locked_folder_is_refused_and_writes_nothing(tmp_path):
    """Training holds the lock: a second training into the same --out stops before writing anything."""
    from medistill.train import run_training

    out = tmp_path / "shared-out"
    with RunDir(out).lock():
        with pytest.raises(RunLockedError, match="in use by another medistill process"):
            run_training(_cfg(out, tmp_path / "no-data"))
    assert sorted(p.name for p in out.iterdir()) == [runs.LOCK_FILE]


# --- run.json: "resumed" only when something was resumed ----------------------------------------------------------
def test_run_record_notes_resumed_only_when_resumed(tmp_path):
    out = tmp_path / "run"
    RunDir.create(out, _cfg(out), kind="train", seed=1)
    RunDir(out).update_info(model="tiny_cnn")
    # started again from scratch (a kill before the first checkpoint): a fresh record, no "resumed"
    info = RunDir.create(out, _cfg(out), kind="train", seed=2).info()
    assert "resumed" not in info and info["seed"] == 2 and "model" not in info
    RunDir(out).update_info(model="tiny_cnn")
    first = RunDir.create(out, _cfg(out), kind="train", seed=2, resumed=True).info()
    assert len(first["resumed"]) == 1 and first["model"] == "tiny_cnn"  # the original record is kept
    assert len(RunDir.create(out, _cfg(out), kind="train", seed=2, resumed=True).info()["resumed"]) == 2


# --- corrupt records ----------------------------------------------------------------------------------------------
CORRUPT = {
    "metrics_bytes": (runs.METRICS_FILE, b'{"macro_auc": 0.5\xff\xfe}', "not UTF-8 text"),
    "metrics_list": (runs.METRICS_FILE, b"[1, 2]", "holds a JSON list"),
    "run_text": (runs.RUN_FILE, b"this is not json", "not valid JSON"),
    "run_truncated": (runs.RUN_FILE, b'{"model": "tiny', "not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_json_records_name_the_file_and_what_was_expected(tmp_path, case):
    name, content, why = CORRUPT[case]
    run = RunDir(tmp_path)
    run.file(name).write_bytes(content)
    with pytest.raises(JsonFileError) as e:
        run.metrics() if name == runs.METRICS_FILE else run.info()
    msg = str(e.value)
    assert msg.startswith(str(run.file(name))) and why in msg and "expected" in msg and "JSON object" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("content,why", [(b"out: x\xff\n", "not UTF-8 text"), (b"out: [unclosed\n", "not valid YAML"),
                                         (b"- a\n- b\n", "holds a YAML list")])
def test_corrupt_config_names_the_file(tmp_path, content, why):
    run = RunDir(tmp_path)
    run.file(runs.CONFIG_FILE).write_bytes(content)
    with pytest.raises(ConfigError) as e:
        run.config()
    assert str(e.value).startswith(str(run.file(runs.CONFIG_FILE))) and why in str(e.value)


@pytest.fixture(scope="module")
def tiny_run(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny_cnn run directory (1 channel, 32 px) on the phantom: enough to evaluate and export."""
    import torch

    from medistill.data.phantom import LABELS
    from medistill.models import create_model

    path = tmp_path_factory.mktemp("runs") / "tiny"
    torch.manual_seed(0)
    model = create_model("tiny_cnn", num_classes=len(LABELS), in_chans=1, image_size=SIZE)
    runs.save_model(RunDir.create(path, _cfg(path, phantom_root), kind="train"), model.eval(), labels=LABELS,
                    task="multilabel")
    return path


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _medistill(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medistill", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO / "src")})


@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_cli_refuses_a_corrupt_run_json_in_one_line(tiny_run, tmp_path, command):
    run = _copy_run(tiny_run, tmp_path / "run")
    (run / runs.RUN_FILE).write_bytes(b'{"model": "tiny_cnn", \x00\xff')
    args = [command, str(run)] + (["--no-latency", "--bootstrap", "0"] if command == "evaluate" else
                                  ["--out", str(tmp_path / "export")])
    r = _medistill(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert lines[0].startswith(f"medistill {command}: error: {run / runs.RUN_FILE}: not UTF-8 text")


def test_export_refuses_a_corrupt_metrics_json_in_one_line(tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path / "run")
    (run / runs.METRICS_FILE).write_text("{not json", encoding="utf-8")
    r = _medistill("export", str(run), "--out", str(tmp_path / "export"), "--val-limit", "16", cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith(f"medistill export: error: {run / runs.METRICS_FILE}: "
                                                        f"not valid JSON")


def test_evaluate_writes_its_result_over_a_corrupt_metrics_json(tiny_run, tmp_path, caplog):
    """The old metrics.json has invalid bytes: evaluate still writes the result it computed, and logs that it
    replaced the corrupt file."""
    from medistill.evaluate.runner import evaluate_run

    run = _copy_run(tiny_run, tmp_path / "run")
    (run / runs.METRICS_FILE).write_bytes(b'{"macro_auc": \xff}')
    with caplog.at_level("WARNING", logger="medistill"):
        result = evaluate_run(run, "val", latency=False, n_bootstrap=0)
    written = json.loads((run / runs.METRICS_FILE).read_text(encoding="utf-8"))
    assert written["macro_auc"] == pytest.approx(result["macro_auc"]) and written["split"] == "val"
    assert (run / runs.predictions_file("val")).is_file()
    assert any("replacing it with the new result" in r.getMessage() and runs.METRICS_FILE in r.getMessage()
               for r in caplog.records)
    assert np.isfinite(written["macro_auc"])


# --- a full disk ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_evaluate_and_export_on_a_full_disk_stop_in_one_line(tiny_run, tmp_path, command, capsys, monkeypatch):
    """Every write fails with ENOSPC (``os.fsync`` of the atomic writer, as on a full file system): one line naming
    the file and the free space, exit 2, and no new file that looks like a result (before: an ``OSError: [Errno
    28]`` traceback)."""
    import errno

    from medistill.cli import main

    run = _copy_run(tiny_run, tmp_path / "run")
    before = sorted(p.name for p in run.iterdir())
    out = tmp_path / "export"

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    args = [command, str(run)] + (["--no-latency", "--bootstrap", "0"] if command == "evaluate" else
                                  ["--out", str(out), "--val-limit", "16"])
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert "Traceback" not in err and len(errors) == 1, err
    assert re.match(rf"medistill {command}: error: {re.escape(str(run if command == 'evaluate' else out))}/\S+: "
                    rf"cannot write it: no space left on device \(\d+(\.\d+)? [KMGT]?i?B free in ", errors[0]), errors[0]
    assert sorted(p.name for p in run.iterdir()) == before  # evaluate: no predictions beside an old metrics.json
    assert not out.exists() or not list(out.iterdir())  # export: no model file, no report, no temporary file


def test_evaluate_keeps_no_predictions_when_its_metrics_cannot_be_written(tiny_run, tmp_path, monkeypatch):
    """The predictions file and metrics.json are one result: when the disk fills at metrics.json, no new
    ``predictions_test.npz`` is left beside the old metrics."""
    import errno

    from medistill.evaluate.runner import evaluate_run
    from medistill.utils.io import DiskFullError, atomic_write

    run = _copy_run(tiny_run, tmp_path / "run")
    real = runs.atomic_write_json

    def no_space(p):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs, "atomic_write_json", lambda path, obj: atomic_write(path, no_space)
                        if Path(path).name == runs.METRICS_FILE else real(path, obj))
    with pytest.raises(DiskFullError, match=re.escape(str(run / runs.METRICS_FILE))):
        evaluate_run(run, "val", latency=False, n_bootstrap=0)
    assert not (run / runs.predictions_file("val")).exists()
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def test_a_run_log_that_cannot_be_written_is_said_once_in_one_line(tmp_path, capsys):
    """``log.txt`` on a full disk: one warning line, not logging's traceback for every record."""
    import errno
    import logging

    class Full:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

        def close(self):
            pass

    run = RunDir(tmp_path)
    with run.logging_to_file():
        [handler] = [h for h in logging.getLogger("medistill").handlers
                     if getattr(h, "baseFilename", None) == str(run.file(runs.LOG_FILE))]
        handler.stream = Full()
        for k in range(3):
            logging.getLogger("medistill.train").info("epoch %d", k)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Logging error" not in err
    assert [line for line in err.splitlines() if runs.LOG_FILE in line] == [
        f"medistill: warning: cannot append to {run.file(runs.LOG_FILE)} ([Errno 28] No space left on device); its "
        f"log stops here"]


# --- valid JSON of the wrong types (issue 37, item 7) --------------------------------------------------------------
WRONG_TYPES = [
    (runs.METRICS_FILE, "macro_auc", "abc", "expected a number or null"),
    (runs.METRICS_FILE, "labels", 5, "expected a list of label names"),
    (runs.METRICS_FILE, "labels", ["Atelectasis", 3], "expected a list of label names"),
    (runs.METRICS_FILE, "task", 7, "expected one of"),
    (runs.METRICS_FILE, "auc_ci95", "narrow", "expected [low, high]"),
    (runs.METRICS_FILE, "per_label_auc", [0.5, 0.7], "expected a mapping of label to number or null"),
    (runs.METRICS_FILE, "params", "many", "expected a number or null"),
    (runs.METRICS_FILE, "latency_ms", True, "expected a number or null"),
    (runs.METRICS_FILE, "train", "done", "expected a JSON object"),
    (runs.METRICS_FILE, "split", ["test"], "expected a string"),
    (runs.RUN_FILE, "labels", 5, "expected a list of label names"),
    (runs.RUN_FILE, "seed", "seven", "expected an integer or null"),
    (runs.RUN_FILE, "teachers", "a/b", "expected a list of paths"),
    (runs.RUN_FILE, "input", [64], "expected a JSON object"),
    (runs.RUN_FILE, "kind", {"a": 1}, "expected a string"),
]


@pytest.mark.parametrize("command", ["compare", "report"])
@pytest.mark.parametrize("file, key, value, expected", WRONG_TYPES,
                         ids=[f"{f}:{k}={v!r}" for f, k, v, _ in WRONG_TYPES])
def test_records_of_the_wrong_types_are_refused_in_one_line(tmp_path, capsys, command, file, key, value, expected):
    """Valid JSON of the wrong type (``macro_auc: "abc"``: a ValueError in compare; ``labels: 5``: a TypeError in
    the report) is refused with one line naming the file and the field, exit 2."""
    from test_report import make_run

    from medistill.cli import main

    teacher = make_run(tmp_path, "teacher", model="densenet121")
    student = make_run(tmp_path, "student", kind="distill", model="tiny_cnn", teacher=teacher)
    path = student / file
    data = json.loads(path.read_text())
    data[key] = value
    path.write_text(json.dumps(data))
    args = [command, str(teacher), str(student)] + (["--out", str(tmp_path / "report.html")]
                                                     if command == "report" else [])
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"medistill {command}: error: {path}: {key}: ") and expected in err, err
