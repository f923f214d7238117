"""Untrusted files let nothing in.

1. A static scan (by AST, not grep) of every module of ``src/medistill`` for the calls that run code hidden in data
   or in a string: ``eval``/``exec``/``compile``, pickle-family loads, ``torch.load`` without ``weights_only=True``,
   ``yaml.load`` without a safe loader, ``yaml.unsafe_load``/``full_load``, ``marshal``, ``shelve``, ``os.system``,
   ``subprocess`` with ``shell=True``, ``numpy.load(allow_pickle=True)``. The scanner is itself checked on a snippet
   holding every forbidden form (so an empty result means something).
2. Crafted checkpoints whose unpickling would create a marker file (``__reduce__`` -> ``open(marker, "w")``) are
   refused by ``read_state_dict``, ``load_weights``, ``medistill train --weights``, ``medistill distill --teacher FILE
   --teacher-model`` and ``medistill train --resume`` (a crafted ``state.pt``), and the marker never appears. A
   control shows the payload is live: plain ``pickle.loads`` does create the marker.
3. A YAML config with a ``!!python/object/apply`` tag is refused by ``load_yaml`` without calling anything.
"""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch

import medistill
from medistill.cli import main
from medistill.config import ConfigError, load_yaml
from medistill.errors import MedistillError
from medistill.models import ModelError, create_model, load_weights
from medistill.models.weights import read_state_dict

PACKAGE = Path(medistill.__file__).resolve().parent
#: torch notes that our crafted pickles use protocol 4; irrelevant here, the files are refused either way
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")

# --- 1. static scan ----------------------------------------------------------------------------------------

#: dotted call targets that are refused whatever their arguments
FORBIDDEN_CALLS = {
    "eval", "exec", "compile", "__import__",
    "pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads", "cPickle.load",
    "cPickle.loads", "dill.load", "dill.loads", "cloudpickle.load", "cloudpickle.loads", "joblib.load",
    "pandas.read_pickle",
    "marshal.load", "marshal.loads", "shelve.open",
    "yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load", "yaml.full_load_all",
    "os.system", "os.popen", "os.execl", "os.execle", "os.execlp", "os.execv", "os.execve", "os.execvp",
    "os.spawnl", "os.spawnv", "asyncio.create_subprocess_shell", "subprocess.getoutput",
    "subprocess.getstatusoutput",
}
#: modules whose mere import is refused (their only use is deserialising objects)
FORBIDDEN_IMPORTS = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
SAFE_YAML_LOADERS = {"yaml.SafeLoader", "yaml.CSafeLoader", "yaml.BaseLoader", "yaml.CBaseLoader"}
SUBPROCESS_CALLS = {"subprocess.run", "subprocess.call", "subprocess.check_call", "subprocess.check_output",
                    "subprocess.Popen"}


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` of a Name/Attribute chain, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> what it refers to, from the module's imports (``import numpy as np`` -> np: numpy)."""
    out: dict[str, str] = {"np": "numpy", "pd": "pandas"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _resolve(name: str, aliases: dict[str, str]) -> str:
    head, _, rest = name.partition(".")
    base = aliases.get(head, head)
    return f"{base}.{rest}" if rest else base


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def scan_source(source: str, filename: str = "<src>") -> list[str]:
    """Every unsafe call or import in ``source``, as ``file:line: what``."""
    tree = ast.parse(source, filename=filename)
    aliases = _aliases(tree)
    found: list[str] = []

    def hit(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{getattr(node, 'lineno', 0)}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in FORBIDDEN_IMPORTS:
                    hit(node, f"import {a.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in FORBIDDEN_IMPORTS:
            hit(node, f"from {node.module} import ...")
        if not isinstance(node, ast.Call):
            continue
        raw = _dotted(node.func)
        if raw is None:
            continue
        name = _resolve(raw, aliases)
        if name in FORBIDDEN_CALLS or raw in ("eval", "exec", "compile", "__import__"):
            hit(node, f"{name}()")
        elif name == "torch.load":
            if not _is_true(_kw(node, "weights_only")):
                hit(node, "torch.load() without weights_only=True")
        elif name in ("yaml.load", "yaml.load_all"):
            loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            loader_name = _resolve(_dotted(loader) or "", aliases) if loader is not None else ""
            if loader_name not in SAFE_YAML_LOADERS:
                hit(node, f"{name}() without a safe Loader")
        elif name in SUBPROCESS_CALLS:
            if _kw(node, "shell") is not None and not (isinstance(_kw(node, "shell"), ast.Constant)
                                                       and _kw(node, "shell").value is False):
                hit(node, f"{name}(shell=...)")
            elif node.args and isinstance(node.args[0], (ast.Constant, ast.JoinedStr, ast.BinOp)):
                hit(node, f"{name}() with a command string (use an argument list)")
        elif name == "numpy.load":
            if _kw(node, "allow_pickle") is not None and not (isinstance(_kw(node, "allow_pickle"), ast.Constant)
                                                              and _kw(node, "allow_pickle").value is False):
                hit(node, "numpy.load(allow_pickle=...)")
        elif name.startswith("yaml.") and name.endswith(("Loader", "UnsafeLoader")) and \
                name not in SAFE_YAML_LOADERS:
            hit(node, f"{name}()")
    # yaml.Loader / UnsafeLoader / FullLoader passed anywhere (e.g. yaml.add_constructor(..., Loader=yaml.Loader))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            name = _resolve(_dotted(node) or "", aliases)
            if name in ("yaml.Loader", "yaml.UnsafeLoader", "yaml.FullLoader", "yaml.CLoader", "yaml.CUnsafeLoader",
                        "yaml.CFullLoader"):
                hit(node, f"{name} (an unsafe YAML loader)")
    return found


UNSAFE_SNIPPET = '''
import os, subprocess, yaml, torch
import numpy as np
import pickle as pk
from marshal import loads as mloads
import shelve
from torch import load as tload
eval("1 + 1")
exec("x = 1")
compile("1", "<s>", "eval")
pk.loads(b"")
mloads(b"")
shelve.open("db")
torch.load("a.pt")
torch.load("a.pt", weights_only=False)
tload("b.pt")
yaml.load(open("c.yaml"))
yaml.load(open("c.yaml"), Loader=yaml.Loader)
yaml.unsafe_load("x")
yaml.full_load("x")
os.system("ls")
subprocess.run("ls -l", shell=True)
subprocess.check_output("ls " + "-l")
np.load("x.npy", allow_pickle=True)
'''

SAFE_SNIPPET = '''
import subprocess, yaml, torch
import numpy as np
model.eval()
re.compile("x")
torch.load("a.pt", map_location="cpu", weights_only=True)
yaml.safe_load("x")
yaml.load("x", Loader=yaml.SafeLoader)
subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, timeout=5)
np.load("x.npz", allow_pickle=False)
np.load("x.npy")
'''


def test_scanner_finds_every_unsafe_form():
    found = scan_source(UNSAFE_SNIPPET)
    text = "\n".join(found)
    for what in ("import pickle", "from marshal import", "import shelve", "eval()", "exec()", "compile()",
                 "pickle.loads()", "marshal.loads()", "shelve.open()", "torch.load() without weights_only=True",
                 "yaml.load() without a safe Loader", "yaml.Loader (an unsafe YAML loader)", "yaml.unsafe_load()",
                 "yaml.full_load()", "os.system()", "subprocess.run(shell=...)",
                 "subprocess.check_output() with a command string", "numpy.load(allow_pickle=...)"):
        assert what in text, f"scanner missed {what!r}; found:\n{text}"
    # both torch.load forms (no flag, weights_only=False) and the `from torch import load` alias are caught
    assert sum("torch.load() without weights_only=True" in f for f in found) == 3
    assert scan_source(SAFE_SNIPPET) == []


def test_package_has_no_unsafe_calls():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 30  # the whole package is scanned, not an empty folder
    found = [f for path in files for f in scan_source(path.read_text(encoding="utf-8"),
                                                       str(path.relative_to(PACKAGE.parent)))]
    assert found == [], "unsafe calls in the package:\n" + "\n".join(found)


# --- 2. crafted pickle checkpoints -------------------------------------------------------------------------

class _Payload:
    """Unpickling this calls ``open(marker, "w")``: the marker file appears iff pickled code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_files(folder: Path, marker: Path) -> dict[str, Path]:
    """The same payload in every container a user might be handed: torch zip, legacy torch, raw pickle, a pickle
    named .safetensors, and a state dict whose tensors are real but which also carries the payload."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"conv.weight": torch.zeros(1), "evil": _Payload(marker)}
    files = {
        "zip.pt": lambda p: torch.save(payload, p),
        "legacy.pth": lambda p: torch.save(payload, p, _use_new_zipfile_serialization=False),
        "raw.pkl": lambda p: p.write_bytes(pickle.dumps(payload)),
        "named.safetensors": lambda p: p.write_bytes(pickle.dumps(payload)),
        "wrapped.ckpt": lambda p: torch.save({"state_dict": tiny_state(), "optimizer": _Payload(marker)}, p),
    }
    out = {}
    for name, write in files.items():
        write(folder / name)
        out[name] = folder / name
    assert not marker.exists()
    return out


def tiny_state() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in create_model("tiny_cnn", num_classes=6, in_chans=1).state_dict().items()}


@pytest.fixture()
def evil(tmp_path: Path) -> tuple[dict[str, Path], Path]:
    marker = tmp_path / "PWNED"
    return _evil_files(tmp_path / "ckpt", marker), marker


def test_payload_is_live_under_plain_pickle(tmp_path: Path):
    """Control: without the guard, loading the file runs the payload (so 'marker absent' below means refused)."""
    marker = tmp_path / "control-marker"
    files = _evil_files(tmp_path / "c", marker)
    obj = pickle.loads(files["raw.pkl"].read_bytes())
    obj["evil"].close()
    assert marker.exists()


@pytest.mark.parametrize("name", ["zip.pt", "legacy.pth", "raw.pkl", "named.safetensors", "wrapped.ckpt"])
def test_read_state_dict_refuses_pickled_code(evil, name: str):
    files, marker = evil
    with pytest.raises(ModelError) as e:
        read_state_dict(files[name])
    assert str(files[name]) in str(e.value)
    assert "safetensors" in str(e.value) or "weights-only" in str(e.value)
    assert not marker.exists()


def test_load_weights_refuses_pickled_code(evil):
    files, marker = evil
    model = create_model("tiny_cnn", num_classes=6, in_chans=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for path in files.values():
        with pytest.raises(ModelError, match="refused|not a readable safetensors"):
            load_weights(model, path, strict=False)
    assert not marker.exists()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model was not touched


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def _train_args(phantom_root: Path, out: Path) -> list[str]:
    return ["train", "--dataset", "phantom", "--root", str(phantom_root), "--model", "tiny_cnn", "--image-size", "32",
            "--limit", "16", "--epochs", "1", "--augment", "none", "--cache", "false", "--device", "cpu",
            "--out", str(out)]


def test_cli_train_weights_refuses_pickled_code(evil, phantom_root: Path, tmp_path: Path, capsys):
    files, marker = evil
    for k, name in enumerate(("zip.pt", "raw.pkl", "wrapped.ckpt")):
        code, err = _cli(_train_args(phantom_root, tmp_path / f"run{k}") + ["--weights", str(files[name])], capsys)
        assert code == 2, err
        assert f"medistill train: error: {files[name]}: refused or unreadable as a weights-only torch checkpoint" in err
        assert not (tmp_path / f"run{k}" / "state.pt").exists()
    assert not marker.exists()


def test_cli_distill_bare_teacher_refuses_pickled_code(evil, phantom_root: Path, tmp_path: Path, capsys):
    files, marker = evil
    for k, name in enumerate(("legacy.pth", "named.safetensors")):
        argv = ["distill", *_train_args(phantom_root, tmp_path / f"student{k}")[1:], "--teacher", str(files[name]),
                "--teacher-model", "tiny_cnn"]
        code, err = _cli(argv, capsys)
        assert code == 2, err
        assert f"medistill distill: error: {files[name]}:" in err
        assert "weights-only" in err or "safetensors" in err
    assert not marker.exists()


def test_resume_refuses_a_crafted_state_file(phantom_root: Path, tmp_path: Path, capsys):
    """A run directory handed over by someone else: its state.pt is a pickle bomb; --resume must not run it."""
    out = tmp_path / "run"
    code, err = _cli(_train_args(phantom_root, out), capsys)
    assert code == 0, err
    marker = tmp_path / "PWNED-state"
    torch.save({"epoch": 0, "optimizer": _Payload(marker)}, out / "state.pt")
    code, err = _cli(_train_args(phantom_root, out) + ["--resume"], capsys)
    assert code == 2, err
    assert f"{out / 'state.pt'}: refused or unreadable as a weights-only torch checkpoint" in err
    assert not marker.exists()


# --- 3. YAML that would call code --------------------------------------------------------------------------

def test_yaml_python_tags_are_refused(tmp_path: Path):
    marker = tmp_path / "PWNED-yaml"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"train:\n  epochs: !!python/object/apply:builtins.open ['{marker}', 'w']\n")
    with pytest.raises(ConfigError, match=r"evil\.yaml.* is not valid YAML.*python/object/apply"):
        load_yaml(cfg)
    assert not marker.exists()
    assert issubclass(ConfigError, MedistillError)
