"""README.md says only what the tool does: every ``medistill`` command in its bash blocks parses with the real CLI
parser (no unknown subcommand, no unknown or abbreviated flag), every ``--flag`` it names anywhere is one of the
CLI's, and its Python API example runs as written."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from medistill.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
#: flags the README names that belong to other programs
OTHER_PROGRAMS = {"--nproc_per_node"}  # torchrun


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(encoding="utf-8"), re.S | re.M)


def commands() -> list[str]:
    """Each ``medistill ...`` line of the bash blocks, continuation lines joined, comments dropped."""
    out = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "medistill":
                out.append(line)
    return out


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # noqa: SLF001 - argparse keeps its subcommands here
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return action.choices
    return {}


def all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    return [parser, *(p for sub in subparsers(parser).values() for p in all_parsers(sub))]


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}  # noqa: SLF001


def check(line: str) -> None:
    words = shlex.split(line, comments=True)[1:]
    parser = build_parser()
    try:
        parser.parse_args(words)
    except SystemExit:
        pytest.fail(f"README command does not parse: {line.strip()}")
    # argparse accepts a unique prefix of a flag; the README must spell each one out
    sub, rest = parser, list(words)
    while rest and rest[0] in subparsers(sub):
        sub = subparsers(sub)[rest.pop(0)]
    flags = {w.split("=", 1)[0] for w in rest if w.startswith("--")}
    if not flags <= options(sub):
        pytest.fail(f"{line.strip()}: not a flag of this command: {sorted(flags - options(sub))}")


def test_the_readme_has_commands_and_an_api_example():
    assert len(commands()) >= 15 and len(blocks("python")) == 1
    assert any(line.startswith("medistill study ") for line in commands())


@pytest.mark.parametrize("line", commands(), ids=lambda line: " ".join(line.split()[:3]))
def test_every_readme_command_parses(line):
    check(line)


def test_the_check_refuses_unknown_and_abbreviated_flags():
    for bad in ("medistill trian --epochs 2", "medistill train --epoch 2", "medistill train --no-such-flag 1",
                "medistill study --width 0.5"):
        with pytest.raises(pytest.fail.Exception):
            check(bad)


def test_every_flag_the_readme_names_is_a_cli_flag():
    known = set().union(*(options(p) for p in all_parsers(build_parser())))
    named = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", README.read_text(encoding="utf-8")))
    assert named - known - OTHER_PROGRAMS == set()


@pytest.mark.slow
def test_the_python_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDISTILL_CACHE", str(tmp_path / "cache"))
    (code,) = blocks("python")
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})  # noqa: S102 - the README's own code
    auc = float(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= auc <= 1.0
    for run in ("teacher", "student"):
        assert (tmp_path / "runs" / "api" / run / "model.safetensors").is_file()
    assert (tmp_path / "runs" / "api" / "student" / "metrics.json").is_file()


def test_the_readmes_stay_short():
    """Issue 35: the README is reference (at most 250 lines, findings on their own page), benchmarks/README.md one
    section per script (at most 300 lines)."""
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 250
    assert len((README.parent / "benchmarks" / "README.md").read_text(encoding="utf-8").splitlines()) <= 300
    findings = README.parent / "docs" / "findings.md"
    assert "docs/findings.md" in README.read_text(encoding="utf-8") and findings.is_file()
