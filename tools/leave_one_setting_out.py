"""Leave one setting out: predict every setting's runs from a fit on all the other settings' runs.

Groups the run directories given by their run.json setting (CFG, schedule, condition drop); for each setting,
``chain validate OTHERS --predict THESE --conformal --make-reference`` (through
:func:`validate.pipeline.validate_runs`, stats embedder, no decomposition, no bootstrap; the base model's missing
reference points and real data written first) writes a report folder ``OUT/held-<setting>``; then the skill of
every fold and of all folds pooled is printed as Markdown and written to ``OUT/summary.json``: the theory's and each
baseline's mean |Δ ln var| of the run-level within-caption variance (a baseline over the values it has), the
ratio to the best baseline among those every value has, the coverage of the 90 % intervals at run and caption
level, that of the conformal intervals at run and caption level (calibrated within each fold's training settings:
:mod:`validate.conformal`) and, where each held-out setting has several runs, the mean |Δ ln var| of forecasting
each run from the setting's other runs (:func:`validate.skill.replicate_forecast`: not a baseline, since it sees
their later iterations, but what a model that knew each setting's mean path could reach). Rerun to refresh;
nothing is cached between calls.

With ``--predict-from K`` each held-out run is predicted from its iteration K - 1 (``chain validate
--predict-from``): a chain that has begun at a setting no training run has, with the run's own trend as one more
baseline.

Usage: ``python tools/leave_one_setting_out.py runs/test/* --out runs/test-predict [--predict-from 2]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from chain.reference import make_reference
from qtm.io import write_json
from qtm.rundir import read_parameters
from validate.pipeline import validate_runs
from validate.skill import GOAL_RATIO, METHODS, RUN_LEVEL, replicate_forecast
from validate.state_filter import DEFAULT_STATES, STATES


def setting_of(path) -> str:
    """A run's setting as a folder-safe label: cfg, and the schedule and drop where they are not the plain ones."""
    params = read_parameters(path)
    label = f"cfg{float(params.get('cfg', float('nan'))):g}"
    if params.get("schedule", "constant") not in (None, "constant"):
        label += f"-{str(params['schedule']).replace(':', '_')}"
    if params.get("drop"):
        label += f"-drop{float(params['drop']):g}"
    return label


def replicate_errors(run: pd.DataFrame, *, origin: int = 0) -> np.ndarray:
    """|Δ ln var| of each run-level value of the skill rows ``run`` forecast from the other held-out runs of its
    setting (:func:`validate.skill.replicate_forecast` from iteration ``origin``, whose value persistence holds)."""
    start = (run[run["method"] == "persistence"].groupby(["held_out", "run"], as_index=False)["predicted"].first()
             .rename(columns={"predicted": "value"}).assign(iteration=origin))
    later = run[run["method"] == "theory"][["held_out", "run", "iteration", "measured"]].rename(
        columns={"measured": "value"})
    values = pd.concat([start, later], ignore_index=True).rename(columns={"held_out": "setting"})
    forecast = replicate_forecast(values, origin=origin)
    return (forecast["measured"] - forecast["predicted"]).abs().to_numpy()


def fold_summary(skill: pd.DataFrame, *, origin: int = 0) -> dict:
    """Mean |Δ ln var| (run level) per method, the ratio to the best baseline, and the coverages."""
    run = skill[(skill["caption"] == RUN_LEVEL) & (skill["quantity"] == "log_var")]
    means = run.groupby("method")["abs_error"].mean()
    counts = run.groupby("method")["abs_error"].count()
    # Only a baseline every held-out value has (interpolation needs bracketing settings) competes for the best.
    baselines = [m for m in METHODS[1:] if m in means and counts[m] == counts["theory"]]
    best = min(baselines, key=lambda m: means[m])
    theory = skill[skill["method"] == "theory"]
    run_theory = theory[theory["caption"] == RUN_LEVEL]
    # Unbounded conformal intervals (too few training scores) have no coverage to count.
    conformal = run_theory.get("conformal_covered", pd.Series(dtype=float)).dropna()
    captions = theory[theory["caption"] != RUN_LEVEL]
    conformal_captions = captions.get("conformal_covered", pd.Series(dtype=float)).dropna()
    # Where every held-out value's setting has another held-out run: what the setting's mean path would give.
    replicates = replicate_errors(run, origin=origin)
    return {
        **{m: float(means[m]) for m in METHODS if m in means},
        "best_baseline": best,
        "ratio": float(means["theory"] / means[best]),
        "run_coverage": float(run_theory["covered"].astype(float).mean()),
        "caption_coverage": float(captions["covered"].astype(float).mean()),
        **({"run_coverage_conformal": float(conformal.astype(float).mean())} if len(conformal) else {}),
        **({"caption_coverage_conformal": float(conformal_captions.astype(float).mean())}
           if len(conformal_captions) else {}),
        **({"replicates": float(replicates.mean())} if len(replicates) == counts["theory"] else {}),
        "run_iterations": len(run[run["method"] == "theory"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories of at least two settings")
    parser.add_argument("--out", type=Path, required=True, help="folder of the folds' reports and summary.json")
    parser.add_argument("--no-plots", dest="plots", action="store_false", help="write the folds' reports without "
                        "their plots (the summary reads only their tables)")
    parser.add_argument("--predict-from", type=int, default=1, help="K: predict each held-out run from its iteration "
                        "K - 1 (chain validate --predict-from; default 1, from iteration 0)")
    parser.add_argument("--states", choices=STATES, default=DEFAULT_STATES,
                        help=f"the fits' source states (chain validate --states; default {DEFAULT_STATES})")
    args = parser.parse_args()
    settings: dict[str, list[Path]] = {}
    for path in args.runs:
        settings.setdefault(setting_of(path), []).append(path)
    if len(settings) < 2:
        parser.error("give runs of at least two settings")
    folds, tables = {}, []
    origin = args.predict_from - 1
    for held, runs in settings.items():
        train = [p for other, paths in settings.items() if other != held for p in paths]
        began = time.perf_counter()
        validate_runs(train, predict=runs, predict_from=args.predict_from, conformal=True, states=args.states,
                      report=args.out / f"held-{held}", decompose_runs=False, bootstrap=0, plots=args.plots,
                      prepare=make_reference, warn=lambda message: None)
        skill = pd.read_csv(args.out / f"held-{held}" / "skill.csv")
        skill = skill[skill["task"] == "predict"].assign(held_out=held)
        tables.append(skill)
        folds[held] = {**fold_summary(skill, origin=origin), "runs": [str(p) for p in runs],
                       "seconds": time.perf_counter() - began}
    pooled = fold_summary(pd.concat(tables, ignore_index=True), origin=origin)
    write_json(args.out / "summary.json", {"folds": folds, "pooled": pooled, "goal_ratio": GOAL_RATIO})
    header = ["held-out setting", "runs", *METHODS, "best baseline", "ratio", "run coverage", "caption coverage",
              "run coverage, conformal", "caption coverage, conformal", "other seeds of the setting (a bound)"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    every_run = [run for fold in folds.values() for run in fold["runs"]]
    for name, row in [*folds.items(), ("pooled", {**pooled, "runs": every_run})]:
        cells = [name, str(len(row["runs"])), *(f"{row[m]:.3g}" if m in row else "–" for m in METHODS),
                 row["best_baseline"], f"{row['ratio']:.2f}", f"{100 * row['run_coverage']:.0f} %",
                 f"{100 * row['caption_coverage']:.0f} %",
                 *(f"{100 * row[key]:.0f} %" if key in row else "–"
                   for key in ("run_coverage_conformal", "caption_coverage_conformal")),
                 f"{row['replicates']:.3g}" if "replicates" in row else "–"]
        print("| " + " | ".join(cells) + " |")
    print(json.dumps({"pooled_ratio": pooled["ratio"], "goal_ratio": GOAL_RATIO}))


if __name__ == "__main__":
    main()
