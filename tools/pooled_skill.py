"""The skill of several reports pooled: every ``skill.csv`` under the folders given, read as one table.

Prints, per method, :func:`validate.skill.skill_summary` of the pooled rows (mean |Δ ln var| at run and caption
level, CRPS, 90 % coverage at run and caption level) and the number of run-level values each method has, then the
theory's ratio to the better baseline among those every run-level value has (:func:`validate.skill.skill_verdict`). A
test set's protocols write one report per protocol (a leave-one-setting-out tool run one per fold), so pooling
their folders scores several protocols, or several test sets, as one sample of run-iterations; the folders should
hold different runs or different protocols, never the same forecasts twice.

With ``--by-seed`` (run names ``<setting>-s<seed>``, as the Makefile's test sets name them) the runs of one seed
are counted as one unit, since a seed fixes a chain's image noise and finetuning stream whatever its setting
(:mod:`chain.seeds`): the ratio's 90 % percentile interval over seeds resampled with replacement, the BCa interval
beside it, and the intra-seed correlation of the runs' mean signed errors once each setting's mean is taken out
(one-way ANOVA).

Usage: ``python tools/pooled_skill.py runs/seventh-predict/calibrated-forecast runs/seventh-predict/leave-one-out``
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import DegenerateDataWarning, bootstrap
from scipy.stats import f as f_distribution

from qtm.random import check_random_state
from validate.skill import GOAL_RATIO, RUN_LEVEL, skill_summary, skill_verdict

#: A run name of the Makefile's test sets: its setting and its seed.
RUN_NAME = r"^(?P<setting>.+)-s(?P<seed>\d+)$"
RESAMPLES = 10_000


def pooled_table(folders) -> pd.DataFrame:
    """The rows of every ``skill.csv`` under ``folders``, each with the file it came from (``source``)."""
    files = sorted({path for folder in folders for path in Path(folder).rglob("skill.csv")})
    if not files:
        raise FileNotFoundError(f"no skill.csv under {', '.join(map(str, folders))}: give report folders of "
                                "`chain validate --forecast-from` or `--predict`")
    return pd.concat([pd.read_csv(path).assign(source=str(path)) for path in files], ignore_index=True)


def _ratio_of_sums(theory, baseline, axis=-1):
    return theory.sum(axis=axis) / baseline.sum(axis=axis)


def seed_units(table: pd.DataFrame, baseline: str, *, resamples: int = RESAMPLES, random_state=2026) -> dict:
    """The theory's ratio to ``baseline`` with the seeds as units: its 90 % percentile interval over seeds
    resampled with replacement (``interval``) and the BCa one (``interval_bca``), and the intra-seed correlation of
    the runs' mean signed run-level errors with each setting's mean taken out (ICC(1) of a one-way ANOVA over seeds,
    with its F and p; left out where every run has a seed of its own)."""
    names = table["run"].str.extract(RUN_NAME)
    if names["seed"].isna().any():
        odd = table.loc[names["seed"].isna(), "run"].iloc[0]
        raise ValueError(f"run {odd!r} is not named <setting>-s<seed>; leave out --by-seed")
    rows = table.assign(**names)
    rows = rows[(rows["caption"] == RUN_LEVEL) & (rows["quantity"] == "log_var")]
    sums = rows[rows["method"].isin(("theory", baseline))].pivot_table(
        index="seed", columns="method", values="abs_error", aggfunc="sum")
    rng = check_random_state(random_state)
    draws = rng.integers(len(sums), size=(resamples, len(sums)))
    ratios = sums["theory"].to_numpy()[draws].sum(axis=1) / sums[baseline].to_numpy()[draws].sum(axis=1)
    # The study's rules were written for the percentile interval; BCa, beside it, corrects its bias and skew, and at
    # a goal's edge the two can fall on either side. Every seed's ratio alike: BCa's acceleration is 0/0 (nan).
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", DegenerateDataWarning)
        bca = bootstrap((sums["theory"].to_numpy(), sums[baseline].to_numpy()), _ratio_of_sums, paired=True,
                        vectorized=True, confidence_level=0.9, n_resamples=resamples, method="BCa",
                        rng=rng).confidence_interval
    theory = rows[rows["method"] == "theory"]
    runs = (theory["predicted"] - theory["measured"]).groupby([theory["source"], theory["run"]]).mean()
    runs = pd.DataFrame({"error": runs}).join(
        theory.groupby(["source", "run"])[["setting", "seed"]].first())
    runs["error"] -= runs.groupby("setting")["error"].transform("mean")
    groups = runs.groupby("seed")["error"]
    n, a = len(runs), groups.ngroups
    units = {"seeds": a, "interval": np.percentile(ratios, [5, 95]), "interval_bca": np.array([bca.low, bca.high])}
    if n == a:  # a seed per run: nothing is shared to measure
        return units
    sizes = groups.size().to_numpy()
    between = np.float64((sizes * (groups.mean() - runs["error"].mean()) ** 2).sum()) / (a - 1)
    within = np.float64(((runs["error"] - groups.transform("mean")) ** 2).sum()) / (n - a)
    size = (n - (sizes**2).sum() / n) / (a - 1)
    with np.errstate(divide="ignore", invalid="ignore"):  # errors identical within every seed: no F
        icc, f_value = (between - within) / (between + (size - 1) * within), between / within
    return {**units, "icc": float(icc), "F": float(f_value), "p": float(f_distribution.sf(f_value, a - 1, n - a))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="report folders (searched for skill.csv)")
    parser.add_argument("--by-seed", action="store_true", help="count the runs of one seed as one unit (run names "
                        "<setting>-s<seed>): the ratio's interval over seeds and the intra-seed correlation")
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
    better = verdict["skill_better_baseline"]
    print(f"theory against {better}, the better baseline that every value has: ratio {verdict['skill_ratio']:.2f} "
          f"(goal <= {GOAL_RATIO})")
    if args.by_seed:
        try:
            units = seed_units(table, better)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        low, high = units["interval"]
        bca_low, bca_high = units["interval_bca"]
        shared = (f"intra-seed correlation of the runs' errors {units['icc']:.2f} (F {units['F']:.1f}, p "
                  f"{units['p']:.1g})" if "icc" in units else "each run has a seed of its own")
        print(f"with the {units['seeds']} seeds as units: 90 % interval {low:.2f}-{high:.2f} ({RESAMPLES} resamples; "
              f"BCa {bca_low:.3f}-{bca_high:.3f}); {shared}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
