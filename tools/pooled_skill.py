"""The skill of several reports pooled: every ``skill.csv`` under the folders given, read as one table.

Prints, per method, :func:`validate.skill.skill_summary` of the pooled rows (mean |Δ ln var| at run and caption
level, CRPS, 90 % coverage at run and caption level) and the number of run-level values each method has, then the
theory's ratio to the better baseline among those every run-level value has (:func:`validate.skill.skill_verdict`). A
test set's protocols write one report per protocol (a leave-one-setting-out tool run one per fold), so pooling
their folders scores several protocols, or several test sets, as one sample of run-iterations; the folders should
hold different runs or different protocols, never the same forecasts twice.

Usage: ``python tools/pooled_skill.py runs/seventh-predict/calibrated-forecast runs/seventh-predict/leave-one-out``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from validate.skill import GOAL_RATIO, RUN_LEVEL, skill_summary, skill_verdict


def pooled_table(folders) -> pd.DataFrame:
    """The rows of every ``skill.csv`` under ``folders``, each with the file it came from (``source``)."""
    files = sorted({path for folder in folders for path in Path(folder).rglob("skill.csv")})
    if not files:
        raise FileNotFoundError(f"no skill.csv under {', '.join(map(str, folders))}: give report folders of "
                                "`chain validate --forecast-from` or `--predict`")
    return pd.concat([pd.read_csv(path).assign(source=str(path)) for path in files], ignore_index=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="report folders (searched for skill.csv)")
    args = parser.parse_args(argv)
    try:
        table = pooled_table(args.folders)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary = skill_summary(table)
    run_level = table[(table["caption"] == RUN_LEVEL) & (table["quantity"] == "log_var")]
    summary.insert(0, "run-iterations", run_level.groupby("method")["abs_error"].count())
    print(f"{table['source'].nunique()} skill.csv files, {table['run'].nunique()} runs")
    print(summary.round(3).to_string())
    # The same run in two reports (two protocols of one test set) is two forecasts, not one.
    verdict = skill_verdict(table.assign(run=table["source"] + ":" + table["run"]))
    print(f"theory against {verdict['skill_better_baseline']}, the better baseline that every value has: ratio "
          f"{verdict['skill_ratio']:.2f} (goal <= {GOAL_RATIO})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
