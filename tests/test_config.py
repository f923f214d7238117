"""Configs: typed dataclasses from YAML + overrides; unknown keys, wrong types and ranges are clear errors."""

from __future__ import annotations

import pytest

from medistill.cli import build_parser
from medistill.cli.common import config_from_args
from medistill.config import ConfigError, RunConfig, build, to_dict


def test_defaults_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  dataset: folder\n  image_size: 96\ntrain:\n  epochs: 3\n  lr: 0.01\n")
    cfg = build(RunConfig, file=f, overrides={"train.epochs": "5", "data.views": "PA,AP", "model.pretrained": "true"})
    assert cfg.data.dataset == "folder" and cfg.data.image_size == 96
    assert cfg.train.epochs == 5 and cfg.train.lr == 0.01
    assert cfg.data.views == ["PA", "AP"] and cfg.model.pretrained is True
    assert to_dict(cfg)["train"]["epochs"] == 5


def test_unknown_key_names_key_and_valid_keys(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError) as e:
        build(RunConfig, file=f)
    assert "train.epochz" in str(e.value) and "epochs" in str(e.value) and "batch_size" in str(e.value)


def test_wrong_type_and_range():
    with pytest.raises(ConfigError, match=r"train.epochs: got 'many', expected an integer"):
        build(RunConfig, overrides={"train.epochs": "many"})
    with pytest.raises(ConfigError, match=r"distill.*alpha: got 1.5, expected a value in \[0.0, 1.0\]"):
        build(RunConfig, overrides={"distill.alpha": "1.5"})
    with pytest.raises(ConfigError, match="dataset: got 'imagenet'"):
        build(RunConfig, overrides={"data.dataset": "imagenet"})


def test_yaml_never_constructs_objects(tmp_path):
    f = tmp_path / "evil.yaml"
    f.write_text("out: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build(RunConfig, file=f)


def test_cli_flags_map_to_fields(tmp_path):
    args = build_parser().parse_args(["train", "--dataset", "folder", "--root", "x", "--model", "densenet121",
                                      "--image-size", "64", "--epochs", "2", "--limit", "1000", "--out", "r",
                                      "--frontal-only", "--set", "train.lr=0.5"])
    cfg = config_from_args(RunConfig, args)
    assert (cfg.model.name, cfg.data.image_size, cfg.train.epochs, cfg.data.limit, cfg.out) == ("densenet121", 64, 2, 1000, "r")
    assert cfg.data.frontal_only is True and cfg.train.lr == 0.5


@pytest.mark.parametrize("command", ["data", "train", "distill", "evaluate", "compare", "explain", "export",
                                     "predict", "benchmark", "report", "serve", "quickstart"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([command, "--help"])
    assert e.value.code == 0
    assert "usage: medistill " + command in capsys.readouterr().out


@pytest.mark.parametrize("command", ["data inspect", "train", "distill", "evaluate", "compare", "explain", "export",
                                     "predict", "benchmark", "report", "serve", "quickstart"])
def test_every_subcommand_takes_a_config_file(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command.split(), "--help"])
    assert "--config FILE.yaml" in capsys.readouterr().out


def test_options_file_of_a_plain_command(tmp_path, capsys):
    from medistill.cli import main
    from medistill.cli.evaluate import EvaluateOptions

    f = tmp_path / "eval.yaml"
    f.write_text("split: val\nbatch_sizes: 3\n")
    assert main(["evaluate", str(tmp_path / "run"), "--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'batch_sizes'" in err and "batch_size" in err and str(f) in err
    assert len(err.strip().splitlines()) == 1
    f.write_text("split: val\nbatch_size: 3\nno_latency: true\n")
    args = build_parser().parse_args(["evaluate", "RUN", "--config", str(f), "--split", "test"])
    o = config_from_args(EvaluateOptions, args)
    assert (args.run_dir, o.split, o.batch_size, o.no_latency) == ("RUN", "test", 3, True)  # the flag wins
    f.write_text("batch_size: many\n")
    with pytest.raises(ConfigError, match=f"{f}: batch_size: got 'many', expected an integer"):
        config_from_args(EvaluateOptions, args)


@pytest.mark.parametrize("argv, positionals", [
    (["evaluate", "--json", "RUN", "--no-latency"], {"run_dir": "RUN"}),
    (["compare", "--json", "A", "B"], {"run_dirs": ["A", "B"]}),
    (["export", "--int8", "--explain", "RUN", "--json"], {"run_dir": "RUN"}),
    (["predict", "--json", "--explain", "M.onnx", "a.png"], {"model": "M.onnx", "inputs": ["a.png"]}),
    (["report", "--explain", "E", "A", "B"], {"run_dirs": ["A", "B"]}),
    (["serve", "--allow-host", "a.lan", "M.onnx"], {"model": "M.onnx"}),
    (["data", "inspect", "--json", "--check-readable"], {})])
def test_switches_never_swallow_a_positional(argv, positionals):
    """The flags of commands with positional arguments are switches (``--json``) or take one value each
    (``--explain DIR``, repeatable), as their hand-written flags did: the positionals stay positional."""
    args = vars(build_parser().parse_args(argv))
    assert {k: args[k] for k in positionals} == positionals
    assert {v for k, v in args.items() if k.startswith("cfg__") and isinstance(v, str)} <= {"true"}
    assert [v for k, v in args.items() if k.startswith("cfg__") and isinstance(v, list)] in ([], [["E"]], [["a.lan"]])


def test_export_per_tensor_and_per_channel():
    from medistill.cli.export import ExportOptions

    def per_channel(*flags):
        return config_from_args(ExportOptions, build_parser().parse_args(["export", "RUN", *flags])).per_channel

    assert (per_channel(), per_channel("--per-channel"), per_channel("--per-tensor")) == ("auto", True, False)
    assert per_channel("--set", "per_channel=auto") == "auto"
    with pytest.raises(ConfigError, match="calibration_method: got 'best'"):
        config_from_args(ExportOptions, build_parser().parse_args(["export", "RUN", "--calibration-method", "best"]))


def test_optional_string_flags_stay_as_typed():
    from medistill.cli.compare import CompareOptions

    o = config_from_args(CompareOptions, build_parser().parse_args(["compare", "A", "--out", "1e3"]))
    assert o.out == "1e3"
    assert config_from_args(CompareOptions, build_parser().parse_args(["compare", "A", "--out", "null"])).out is None


def test_flag_help_comes_from_field_metadata_not_source():
    import argparse
    import dataclasses

    from medistill.cli.common import add_config_args
    from medistill.config import field_help, option

    opts = dataclasses.make_dataclass("Opts", [("side", int, option(3, "side in px")),
                                               ("names", list, option(factory=list, help="label names"))])
    assert field_help(opts) == {"side": "side in px", "names": "label names"}  # make_dataclass: no source to read
    parser = argparse.ArgumentParser()
    add_config_args(parser, opts)
    assert "side in px (side)" in " ".join(parser.format_help().split())
    assert field_help(RunConfig)["train.epochs"] == "passes over the training split"


def test_benchmark_options_file_names_valid_keys(tmp_path, capsys):
    from medistill.cli import main

    f = tmp_path / "bench.yaml"
    f.write_text("runz: 3\n")
    assert main(["benchmark", str(tmp_path / "model.onnx"), "--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'runz'" in err and "runs" in err and "warmup" in err
    f.write_text("batch: '0'\n")
    assert main(["benchmark", str(tmp_path / "model.onnx"), "--config", str(f)]) == 2
    assert "--batch '0'" in capsys.readouterr().err


def _leaf_parsers(parser):
    """Every (sub)command parser that has no subcommands of its own."""
    import argparse

    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [parser]
    return [leaf for action in subs for child in dict.fromkeys(action.choices.values()) for leaf in _leaf_parsers(child)]


def test_every_option_is_a_generated_flag():
    """One config mechanism: besides positionals, -h, --config and --set, every flag of every command comes from
    an options dataclass (dest ``cfg__...``), so it is also a key of that command's --config YAML. Not options:
    train / distill --resume (an action on the run in --out, not part of its saved config) and explain's required
    --out (where to write, beside the run to explain)."""
    allowed = {"help", "config", "set", "verbose"}
    hand_written = [f"{leaf.prog} {a.option_strings[0]}" for leaf in _leaf_parsers(build_parser())
                    for a in leaf._actions if a.option_strings and not a.dest.startswith("cfg__")
                    and a.dest not in allowed]
    assert sorted(hand_written) == ["medistill distill --resume", "medistill explain --out",
                                    "medistill train --resume"]


def test_every_generated_flag_has_help():
    missing = []
    for leaf in _leaf_parsers(build_parser()):
        for action in leaf._actions:
            if action.dest.startswith("cfg__") and not action.option_strings[0].startswith("--no-"):
                text = (action.help or "").rsplit(" (", 1)[0].strip()
                if not text:
                    missing.append(f"{leaf.prog} {action.option_strings[0]}")
    assert not missing, "flags without help (declare the field with config.option(default, help)): " + ", ".join(missing)


def test_recipes_sit_under_the_file_and_the_flags(tmp_path):
    from medistill.config import RunConfig, build, recipe_names

    assert {"finetune", "scratch", "distill"} <= set(recipe_names())
    cfg = build(RunConfig, overrides={"recipe": "finetune"})
    assert cfg.model.pretrained and cfg.train.label_smoothing == 0.1 and cfg.train.ema_decay > 0
    assert cfg.train.warmup_epochs == 1 and cfg.data.augment == "light"
    cfg = build(RunConfig, overrides={"recipe": "finetune", "train.lr": "0.0003"})  # a flag wins
    assert cfg.train.lr == 0.0003 and cfg.model.pretrained
    f = tmp_path / "c.yaml"
    f.write_text("recipe: distill\ntrain:\n  epochs: 7\n")
    cfg = build(RunConfig, file=f)  # a file wins over its recipe
    assert cfg.train.epochs == 7 and cfg.distill.teacher_views == 4 and cfg.recipe == "distill"


def test_unknown_recipe_names_the_valid_ones():
    from medistill.config import ConfigError, RunConfig, build

    with pytest.raises(ConfigError, match=r"recipe: got 'fast', expected one of \['distill', 'finetune', 'scratch'\]"):
        build(RunConfig, overrides={"recipe": "fast"})
