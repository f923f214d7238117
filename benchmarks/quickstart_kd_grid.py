"""The quickstart's KD alpha / temperature, chosen on the validation split.

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/quickstart_kd_grid.py --quickstart runs/quickstart

Takes a finished quickstart (its teacher and its KD student's config) and trains the same KD student at each
``--grid`` point alpha:T, plus the student without KD, under the same data, augmentation, schedule and seed; each
run is evaluated on the test split. The choice is by best *validation* macro AUC; the test figures are reported
beside it, never used to choose. Runs live under ``--runs`` (a finished one is skipped, so re-running continues).

Results: ``benchmarks/results/quickstart_kd_grid.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench as B  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quickstart", default="runs/quickstart", help="a finished quickstart folder")
    p.add_argument("--grid", default="0.5:4,0.5:2,0.5:1,0.5:0.5,0.2:1,0.8:1", help="alpha:T points")
    p.add_argument("--runs", default="runs/qs_grid", help="parent of the run directories (git-ignored)")
    p.add_argument("--results", default=str(B.RESULTS / "quickstart_kd_grid.json"))
    return p.parse_args()


def main() -> None:
    a = parse()
    from medistill import runs
    from medistill.config import RunConfig, build

    base = Path(a.quickstart) / "student" / "config.yaml"
    if not base.is_file():
        raise SystemExit(f"{base}: not found; run `medistill quickstart --out {a.quickstart}` first")
    points: list[tuple[str, dict[str, str]]] = [("nokd", {"distill.teacher": "", "distill.teacher_views": "0"})]
    for point in a.grid.split(","):
        alpha, temp = point.split(":")
        points.append((f"a{alpha}_T{temp}", {"distill.alpha": alpha, "distill.temperature": temp,
                                             "distill.teacher_views_dir": str(Path(a.runs) / "views")}))
    res: dict[str, Any] = {"quickstart": a.quickstart, "grid": a.grid, "runs": {},
                           "command": f"OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/quickstart_kd_grid.py "
                                      f"--quickstart {a.quickstart} --grid {a.grid}"}
    for name, over in points:
        cfg = build(RunConfig, file=str(base), overrides={"out": str(Path(a.runs) / name), **over})
        r = B.train_and_evaluate(cfg, n_bootstrap=200)
        info = runs.RunDir(cfg.out).info()
        res["runs"][name] = {"val_macro_auc": info.get("best_val_macro_auc"), "test_macro_auc": r.get("macro_auc"),
                             "command": r["command"]}
        print(f"{name}: validation {info.get('best_val_macro_auc'):.4f}, test {r.get('macro_auc'):.4f}", flush=True)
    kd = {k: v for k, v in res["runs"].items() if k != "nokd"}
    res["chosen"] = max(kd, key=lambda k: kd[k]["val_macro_auc"])
    res["machine"] = B.machine()
    out = Path(a.results)
    B.write_json(out, res)
    lines = ["# The quickstart's KD alpha / T, chosen on validation", "", f"Reproduce: `{res['command']}`", "",
             B.machine_line(res["machine"]), "",
             "| run | best validation macro AUC | test macro AUC |", "|---|---|---|"]
    for name, row in res["runs"].items():
        lines.append(f"| {name} | {row['val_macro_auc']:.4f} | {row['test_macro_auc']:.4f} |")
    lines += ["", f"Best on validation: {res['chosen']}.", ""]
    out.with_suffix(".md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
