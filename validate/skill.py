"""The forecast's skill against naive baselines built from the same information.

``--forecast-from K`` sees iterations ``< K``. From them alone, persistence holds iteration
``K - 1``'s measured value and the trend extends the least-squares line through iterations
``0 .. K - 1`` (in ln var for variances, so a log-linear trend; in the trait for means).
``--predict`` sees a held-out run's iteration 0 and the training runs: its baselines
(:func:`validate.prediction.prediction_baselines`) are persistence of iteration 0, the nearest
training setting's trajectory and the interpolation in CFG between the bracketing ones, both
shifted to the held-out iteration 0.
:func:`skill_table` scores the theory's forecast draws and the baselines on every held-out
value: the absolute error (ln var; the mean in SDs of the real data), the CRPS
(:func:`scoringrules.crps_ensemble` of the draws; a point forecast's CRPS is its absolute
error) and, for the theory, whether its 90 % interval covered the measurement.
:func:`skill_summary` averages them per method; :func:`skill_verdict` compares the theory
with the better baseline.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from validate.transition import BaseMoments, Trajectory, for_group

METHODS = ("theory", "persistence", "trend", "nearest", "interpolation")
#: The issue's goal: the theory's mean |Δ ln var| at most this share of the better baseline's.
GOAL_RATIO = 0.7
#: What a run-level row has in its ``caption`` column: the within-caption variance, averaged over captions.
RUN_LEVEL = "(run)"


def crps(draws, observed: float) -> float:
    """The CRPS of the forecast ``draws`` (non-finite draws dropped) at ``observed``; NaN without a finite draw.

    Examples
    --------
    >>> round(crps([0.0, 1.0, 2.0], 0.5), 4)
    0.3889
    """
    # Imported here: scoringrules compiles its Numba kernels on import (about 5 s), which every command that
    # imports validate (chain --version, chain run) would pay.
    import scoringrules

    draws = np.asarray(draws, dtype=float)
    draws = draws[np.isfinite(draws)]
    return float(scoringrules.crps_ensemble(float(observed), draws)) if len(draws) else float("nan")


def persistence_and_trend(iterations, values, *, forecast_from: int, target: int) -> dict[str, float]:
    """Persistence of iteration ``forecast_from - 1`` and the least-squares line through iterations ``< forecast_from``.

    With one iteration seen the trend is that value (no slope to extend).

    Examples
    --------
    >>> points = persistence_and_trend([0, 1, 2, 3], [1.0, 2.0, 9.0, 9.0], forecast_from=2, target=4)
    >>> {name: round(value, 6) for name, value in points.items()}
    {'persistence': 2.0, 'trend': 5.0}
    """
    iterations, values = np.asarray(iterations, float), np.asarray(values, float)
    seen = (iterations < forecast_from) & np.isfinite(values)
    last = values[iterations == forecast_from - 1]
    persistence = float(last[0]) if len(last) else float("nan")
    if seen.sum() >= 2:
        slope, intercept = np.polyfit(iterations[seen], values[seen], 1)
        trend = float(intercept + slope * target)
    else:
        trend = persistence
    return {"persistence": persistence, "trend": trend}


def replicate_forecast(values: pd.DataFrame, *, origin: int) -> pd.DataFrame:
    """Each run's later values forecast from the other runs of its setting: its own value at ``origin`` plus their
    mean change from ``origin`` to that iteration.

    ``values`` has columns ``setting``, ``run``, ``iteration`` and ``value`` (ln var). Returns ``setting``,
    ``run``, ``iteration``, ``predicted`` and ``measured`` for every iteration after ``origin`` that the run and
    at least one other run of its setting have, with ``origin``. Not a baseline: it sees the other runs' later
    iterations. It shows what a model that knew each setting's mean path (as well as the other seeds tell it)
    could reach while a chain's own finetuning shocks after ``origin`` are unknown.

    Examples
    --------
    >>> values = pd.DataFrame({"setting": "a", "run": ["r0"] * 3 + ["r1"] * 3 + ["r2"] * 3,
    ...                        "iteration": [0, 1, 2] * 3, "value": [0, 1, 2, 1, 1, 1, 0, 2, 4.0]})
    >>> out = replicate_forecast(values, origin=0)
    >>> out[out["run"] == "r1"][["iteration", "predicted", "measured"]].values.tolist()  # r0, r2 rise 1.5 and 3
    [[1.0, 2.5, 1.0], [2.0, 4.0, 1.0]]
    """
    table = values.pivot_table(index=["setting", "run"], columns="iteration", values="value", aggfunc="first")
    rows = []
    for setting, runs in table.groupby(level="setting"):
        runs = runs.droplevel("setting")
        for run, own in runs.iterrows():
            others = runs.drop(index=run)
            for t in (t for t in runs.columns if t > origin and np.isfinite(own[t]) and np.isfinite(own[origin])):
                seen = others[[origin, t]].dropna()
                if len(seen):
                    rows.append({"setting": setting, "run": run, "iteration": int(t),
                                 "predicted": float(own[origin] + (seen[t] - seen[origin]).mean()),
                                 "measured": float(own[t])})
    return pd.DataFrame(rows, columns=["setting", "run", "iteration", "predicted", "measured"])


def run_level_log_var(trajectories: list[Trajectory]) -> tuple[np.ndarray, np.ndarray]:
    """Iterations and ln of the run-level within-caption variance (mean over captions, summed over axes).

    The forecast's run-level quantity; only iterations every caption has.
    """
    common = sorted(set.intersection(*({int(t) for t in tr.iterations} for tr in trajectories)))
    values = [
        np.log(np.mean([tr.var[list(tr.iterations).index(t)].sum() for tr in trajectories])) for t in common
    ]
    return np.array(common), np.array(values)


def forecast_baselines(forecast_from: int):
    """The baselines of ``--forecast-from K`` for :func:`skill_table`: persistence and the trend."""

    def points(row, iterations, values):
        return persistence_and_trend(iterations, values, forecast_from=forecast_from, target=row["iteration"])

    return points


def series(members: list[Trajectory], row, *, base: BaseMoments) -> tuple[np.ndarray, np.ndarray, float]:
    """The measured series a skill row belongs to, in one run's trajectories ``members``: iterations, values
    (ln var, or the mean) and the unit its errors are counted in (the real data's SD for a mean, else 1)."""
    if row["caption"] == RUN_LEVEL:
        iterations, values = run_level_log_var(members)
        return iterations, values, 1.0
    tr = next(tr for tr in members if tr.group == row["caption"])
    if row["quantity"] == "log_var":
        return tr.iterations, np.log(tr.var[:, row["axis"]]), 1.0
    unit_source = base.data if base.data is not None else base.cond
    unit = float(np.sqrt(np.asarray(for_group(unit_source, tr.group)[1], float)[row["axis"]]))
    return tr.iterations, tr.mean[:, row["axis"]], unit


def skill_table(theory: pd.DataFrame, trajectories: list[Trajectory], *, base: BaseMoments, baselines) -> pd.DataFrame:
    """The theory's forecast rows and the baselines', scored against the measurements.

    Parameters
    ----------
    theory : DataFrame
        One row per held-out value: ``run``, ``caption`` (:data:`RUN_LEVEL` for the run-level
        ln var), ``iteration``, ``axis`` (-1: summed over axes), ``quantity`` ("mean" or
        "log_var"), ``measured``, ``predicted`` (the draws' median), ``lo``, ``hi``, ``covered``
        and ``crps`` (of the draws, in the quantity's units), all in trait units (ln var for "log_var").
    trajectories : list of Trajectory
        The measured trajectories of the held-out runs (a baseline sees only what ``baselines`` lets it).
    base : BaseMoments
        The SD unit of the means: the real data's per caption and axis where measured, else the base model's.
    baselines : callable
        ``baselines(row, iterations, values)`` -> {method: point} from the row's own measured series
        (:func:`forecast_baselines`; :func:`validate.prediction.prediction_baselines`); a NaN point is
        "not available" and left out.

    Returns
    -------
    DataFrame
        ``theory``'s rows once per method (``method``), with ``unit`` (the SD a mean's error is
        divided by; 1 for ln var), ``abs_error`` and ``crps`` in those units; a baseline's ``lo``
        and ``hi`` are its point and its ``covered`` is missing.
    """
    rows = []
    for row in theory.to_dict("records"):
        members = [tr for tr in trajectories if tr.run == row["run"]]
        iterations, values, unit = series(members, row, base=base)
        points = baselines(row, iterations, values)
        rows.append(
            {**row, "method": "theory", "unit": unit, "abs_error": abs(row["predicted"] - row["measured"]) / unit,
             "crps": row["crps"] / unit}
        )
        for method, point in points.items():
            if not np.isfinite(point):
                continue
            error = abs(point - row["measured"]) / unit
            rows.append(
                {**row, "method": method, "predicted": point, "lo": point, "hi": point, "covered": None,
                 "unit": unit, "abs_error": error, "crps": error}
            )
    columns = ["run", "caption", "iteration", "axis", "quantity", "method", "predicted", "lo", "hi", "measured",
               "unit", "abs_error", "crps", "covered"]
    return pd.DataFrame(rows, columns=columns)


def skill_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per method: mean |Δ ln var| and CRPS (run and caption level), |Δ mean| in SDs, 90 % coverage.

    Examples
    --------
    >>> table = pd.DataFrame({"caption": ["(run)"] * 2, "quantity": ["log_var"] * 2, "method": ["theory", "trend"],
    ...                       "abs_error": [0.2, 0.4], "crps": [0.1, 0.4], "covered": [True, None]})
    >>> float(skill_summary(table).loc["trend", "|Δ ln var| (run)"])
    0.4
    """
    run = table["caption"] == RUN_LEVEL
    parts = {
        "|Δ ln var| (run)": (run & (table["quantity"] == "log_var"), "abs_error"),
        "|Δ ln var| (caption)": (~run & (table["quantity"] == "log_var"), "abs_error"),
        "|Δ mean| / SD (caption)": (~run & (table["quantity"] == "mean"), "abs_error"),
        "CRPS ln var (run)": (run & (table["quantity"] == "log_var"), "crps"),
        "CRPS ln var (caption)": (~run & (table["quantity"] == "log_var"), "crps"),
        "CRPS mean / SD (caption)": (~run & (table["quantity"] == "mean"), "crps"),
        "90 % coverage (run)": (run, "covered"),
        "90 % coverage (caption)": (~run, "covered"),
    }
    summary = pd.DataFrame(index=pd.Index([m for m in METHODS if m in set(table["method"])], name="method"))
    for name, (rows, column) in parts.items():
        values = table[rows].groupby("method")[column]
        summary[name] = values.apply(lambda v: v.dropna().astype(float).mean() if v.notna().any() else np.nan)
    return summary


def partial_baselines(verdict: dict) -> list[str]:
    """Phrases comparing the theory with each baseline that only some run-iterations have, on those.

    Examples
    --------
    >>> partial_baselines({"skill_forecasts": 8, "skill_interpolation_forecasts": 4, "skill_ratio_vs_interpolation":
    ...                    1.34, "skill_persistence_forecasts": 8, "skill_ratio_vs_persistence": 0.4})
    ['interpolation on the 4 of 8 run-iterations it has: ratio 1.34']
    """
    n = verdict["skill_forecasts"]
    return [
        f"{m} on the {verdict[f'skill_{m}_forecasts']} of {n} run-iterations it has: ratio "
        f"{verdict[f'skill_ratio_vs_{m}']:.2f}"
        for m in METHODS[1:]
        if 0 < verdict.get(f"skill_{m}_forecasts", 0) < n
    ]


def skill_verdict(table: pd.DataFrame) -> dict:
    """The theory's run-level mean |Δ ln var| against the better baseline's: their ratio, whether it meets
    :data:`GOAL_RATIO` against every baseline, and in how many run-iterations the theory was closer than each.

    The better baseline is chosen among those with a value at every run-iteration, so that both means run over
    the same values. A baseline that some values lack (interpolation, where no training setting brackets the
    held-out one) is compared on the values it has: ``skill_ratio_vs_<baseline>`` and ``skill_<baseline>_forecasts``
    (every baseline has them).

    Examples
    --------
    >>> table = pd.DataFrame({"caption": ["(run)"] * 3, "quantity": ["log_var"] * 3, "run": ["a"] * 3,
    ...                       "iteration": [2] * 3, "method": ["theory", "persistence", "trend"],
    ...                       "abs_error": [0.2, 0.4, 0.5], "crps": [0.1, 0.4, 0.5], "covered": [True, None, None]})
    >>> skill_verdict(table)["skill_ratio"]
    0.5
    """
    run = table[(table["caption"] == RUN_LEVEL) & (table["quantity"] == "log_var")]
    errors = run.pivot_table(index=["run", "iteration"], columns="method", values="abs_error")
    means = errors.mean()
    present = [m for m in METHODS[1:] if m in errors and errors[m].notna().any()]
    complete = [m for m in present if errors[m].notna().all()] or present
    better = min(complete, key=lambda m: means[m])

    def ratio_to(baseline):
        rows = errors[baseline].notna()
        denominator = errors.loc[rows, baseline].mean()
        return float(errors.loc[rows, "theory"].mean() / denominator) if denominator > 0 else float("nan")

    ratios = {m: ratio_to(m) for m in present}
    return {
        **{f"skill_{m}_abs_log_var": float(means[m]) for m in METHODS if m in means},
        "skill_better_baseline": better,
        "skill_ratio": ratios[better],
        "skill_goal_met": all(ratio <= GOAL_RATIO for ratio in ratios.values()),
        **{f"skill_theory_wins_over_{m}": int((errors["theory"] < errors[m]).sum()) for m in present},
        **{f"skill_ratio_vs_{m}": ratios[m] for m in present},
        **{f"skill_{m}_forecasts": int(errors[m].notna().sum()) for m in present},
        "skill_forecasts": len(errors),
    }
