"""The forecast is scored against persistence and the trend: skill.csv, its baselines, CRPS and coverage."""

import numpy as np
import pandas as pd
import pytest
from test_validate_command import TWO_CAPTIONS, make_run
from test_validate_fit import chain

from validate.forecast import forecast
from validate.pipeline import validate_runs
from validate.skill import (
    RUN_LEVEL,
    crps,
    forecast_baselines,
    partial_baselines,
    persistence_and_trend,
    skill_summary,
    skill_table,
    skill_verdict,
)
from validate.transition import BaseMoments, Trajectory

COLUMNS = ["run", "caption", "iteration", "axis", "quantity", "method", "predicted", "lo", "hi", "measured", "unit",
           "abs_error", "crps", "covered"]


def straight(*, iterations=6):
    """One caption whose ln var and mean are exact straight lines in the iteration, on two axes."""
    t = np.arange(iterations)
    log_var = np.stack([0.5 - 0.3 * t, -0.2 + 0.1 * t], axis=1)
    mean = np.stack([1.0 + 0.25 * t, -0.5 * t], axis=1)
    return Trajectory(run="r", setting="cfg=5", cfg=5.0, iterations=t, mean=mean, var=np.exp(log_var),
                      population=100, group="c")


def test_persistence_and_trend_on_a_known_trajectory():
    """Persistence holds iteration K - 1 exactly; the trend through iterations < K of an exact line is exact."""
    tr, k = straight(), 3
    base = BaseMoments(cond={"c": (np.zeros(2), np.full(2, 4.0))}, data={"c": (np.zeros(2), np.array([4.0, 0.25]))})
    theory = []
    for t in range(k, 6):
        for axis in range(2):
            for quantity, value in (("mean", tr.mean[t, axis]), ("log_var", np.log(tr.var[t, axis]))):
                theory.append({"run": "r", "caption": "c", "iteration": t, "axis": axis, "quantity": quantity,
                               "measured": value, "predicted": value + 1.0, "lo": value, "hi": value + 2.0,
                               "covered": True, "crps": 0.5})
        theory.append({"run": "r", "caption": RUN_LEVEL, "iteration": t, "axis": -1, "quantity": "log_var",
                       "measured": np.log(tr.var[t].sum()), "predicted": 0.0, "lo": -1.0, "hi": 1.0,
                       "covered": False, "crps": 0.1})
    table = skill_table(pd.DataFrame(theory), [tr], base=base, baselines=forecast_baselines(k))
    assert list(table.columns) == COLUMNS
    assert len(table) == 3 * len(theory)
    caption = table[table["caption"] == "c"].set_index(["method", "iteration", "axis", "quantity"])
    for t in range(k, 6):
        for axis in range(2):
            assert caption.loc[("persistence", t, axis, "mean"), "predicted"] == tr.mean[k - 1, axis]
            assert caption.loc[("persistence", t, axis, "log_var"), "predicted"] == pytest.approx(
                np.log(tr.var[k - 1, axis]))
            assert caption.loc[("trend", t, axis, "mean"), "abs_error"] == pytest.approx(0, abs=1e-9)
            assert caption.loc[("trend", t, axis, "log_var"), "abs_error"] == pytest.approx(0, abs=1e-9)
    # |Δ mean| in the real data's SD (2 and 0.5 on the two axes); a point forecast's CRPS is its error.
    theory_means = caption.xs(("theory", "mean"), level=("method", "quantity"))
    assert theory_means.xs(0, level="axis")["abs_error"].tolist() == pytest.approx([0.5] * 3)
    assert theory_means.xs(1, level="axis")["crps"].tolist() == pytest.approx([1.0] * 3)
    points = table[table["method"] != "theory"]
    assert (points["crps"] == points["abs_error"]).all() and points["covered"].isna().all()
    # Run level: ln of the variance summed over axes is not a line, so persistence and the trend are computed.
    run = table[table["caption"] == RUN_LEVEL].set_index(["method", "iteration"])
    seen = [np.log(tr.var[t].sum()) for t in range(k)]
    slope, intercept = np.polyfit(np.arange(k), seen, 1)
    for t in range(k, 6):
        assert run.loc[("persistence", t), "predicted"] == pytest.approx(seen[-1])
        assert run.loc[("trend", t), "predicted"] == pytest.approx(intercept + slope * t)


def test_baselines_with_one_iteration_seen_persist():
    points = persistence_and_trend([0, 1, 2], [2.0, 3.0, 4.0], forecast_from=1, target=2)
    assert points == {"persistence": 2.0, "trend": 2.0}


def test_theory_crps_is_scoringrules_on_known_draws():
    """The CRPS of the draws is scoringrules' (and the energy form E|X - y| - E|X - X'| / 2); NaN draws dropped."""
    import scoringrules  # here, not at collection: it compiles its Numba kernels on import (3 s per process)

    draws = np.random.default_rng(7).normal(0.3, 1.2, 401)
    observed = 1.1
    expected = float(scoringrules.crps_ensemble(observed, draws))
    assert crps(draws, observed) == pytest.approx(expected, rel=1e-12)
    energy = np.abs(draws - observed).mean() - np.abs(draws[:, None] - draws[None, :]).mean() / 2
    assert expected == pytest.approx(energy, rel=1e-9)
    assert crps(np.append(draws, [np.nan, np.inf]), observed) == pytest.approx(expected, rel=1e-12)
    assert np.isnan(crps([np.nan], observed))


def test_coverage_and_verdict_counted():
    """Coverage is the share of the theory's covered rows per level; baselines have none; the verdict's ratio."""
    rows = []
    for i, (covered, theory, persistence, trend) in enumerate(
        [(True, 0.1, 0.3, 0.4), (False, 0.5, 0.2, 0.6), (True, 0.3, 0.4, 0.1), (True, 0.2, 0.5, 0.15)]
    ):
        for method, error in (("theory", theory), ("persistence", persistence), ("trend", trend)):
            rows.append({"run": "r", "caption": RUN_LEVEL, "iteration": i, "quantity": "log_var", "method": method,
                         "abs_error": error, "crps": error, "covered": covered if method == "theory" else None})
    for j, covered in enumerate([True, False, False, True, True]):
        rows.append({"run": "r", "caption": "c", "iteration": j, "quantity": "mean", "method": "theory",
                     "abs_error": 1.0, "crps": 0.5, "covered": covered})
    table = pd.DataFrame(rows)
    summary = skill_summary(table)
    assert summary.loc["theory", "90 % coverage (run)"] == 0.75
    assert summary.loc["theory", "90 % coverage (caption)"] == 0.6
    assert np.isnan(summary.loc["persistence", "90 % coverage (run)"])
    assert summary.loc["persistence", "|Δ ln var| (run)"] == pytest.approx(0.35)
    verdict = skill_verdict(table)
    assert verdict["skill_better_baseline"] == "trend"
    assert verdict["skill_ratio"] == pytest.approx(0.275 / 0.3125)
    assert not verdict["skill_goal_met"]
    assert (verdict["skill_theory_wins_over_persistence"], verdict["skill_theory_wins_over_trend"]) == (3, 2)


def test_forecast_scores_every_held_out_value():
    """The forecast's skill rows: run level and every caption x axis x quantity, three methods each; the run-level
    coverage is the forecast's own."""
    trajectories, base = chain(seed=5, captions=3, iterations=5)
    result = forecast(trajectories, base=base, forecast_from=2, draws=200, random_state=1)
    table = result.skill
    assert list(table.columns) == COLUMNS
    assert len(table) == 3 * 2 * 3 * (1 + 3 * 2 * 2)  # methods x runs x held-out iterations x values
    theory = table[table["method"] == "theory"]
    run = theory[theory["caption"] == RUN_LEVEL]
    assert run["covered"].mean() == result.goodness["forecast_run_coverage"]
    held = pd.DataFrame(result.forecast)
    assert np.exp(run["predicted"]).tolist() == pytest.approx(held["predicted_var"].tolist())
    assert (theory["crps"] > 0).all() and (theory["lo"] <= theory["hi"]).all()
    assert result.goodness["skill_forecasts"] == 6


def test_report_opens_with_the_skill_table_only_with_forecast_from(tmp_path):
    runs = [
        make_run(tmp_path, "cfg1", cfg=1.0, shrink=1.0, reference=True, seed=1, captions=TWO_CAPTIONS),
        make_run(tmp_path, "cfg5", cfg=5.0, shrink=0.6, seed=2, captions=TWO_CAPTIONS),
    ]
    validate_runs(runs, report=tmp_path / "skill", axes=2, forecast_from=2, bootstrap=0, warn=lambda m: None)
    skill = pd.read_csv(tmp_path / "skill" / "skill.csv")
    assert list(skill.columns) == [*COLUMNS, "task"] and set(skill["task"]) == {"forecast"}
    assert set(skill["method"]) == {"theory", "persistence", "trend"}
    assert set(skill["iteration"]) == {2, 3}
    text = (tmp_path / "skill" / "report.md").read_text()
    assert text.index("## Forecast skill from iteration 2") < text.index("## Runs")
    assert "| method | \\|Δ ln var\\| (run) |" in text and "(skill.csv)" in text
    validate_runs(runs, report=tmp_path / "plain", axes=2, bootstrap=0, decompose_runs=False, plots=False,
                  warn=lambda m: None)
    assert not (tmp_path / "plain" / "skill.csv").exists()
    assert "Forecast skill" not in (tmp_path / "plain" / "report.md").read_text()


def test_the_better_baseline_is_one_every_value_has_and_a_partial_one_is_compared_on_its_own_values():
    """Interpolation exists for half the held-out values and is good there: it must not become the headline's
    baseline with a mean over other values than the theory's, but its own comparison is reported."""
    rows = []
    for i, (theory, persistence, nearest, interpolation) in enumerate(
        [(0.5, 1.0, 0.8, 0.2), (0.5, 1.0, 0.8, 0.3), (0.2, 1.0, 0.8, np.nan), (0.2, 1.0, 0.8, np.nan)]
    ):
        for method, error in (("theory", theory), ("persistence", persistence), ("nearest", nearest),
                              ("interpolation", interpolation)):
            rows.append({"run": "r", "caption": RUN_LEVEL, "iteration": i, "quantity": "log_var", "method": method,
                         "abs_error": error})
    verdict = skill_verdict(pd.DataFrame(rows))
    assert verdict["skill_better_baseline"] == "nearest"
    assert verdict["skill_ratio"] == pytest.approx(0.35 / 0.8)
    assert verdict["skill_ratio_vs_interpolation"] == pytest.approx(0.5 / 0.25)
    assert verdict["skill_interpolation_forecasts"] == 2 and verdict["skill_forecasts"] == 4
    assert partial_baselines(verdict) == ["interpolation on the 2 of 4 run-iterations it has: ratio 2.00"]
    assert not verdict["skill_goal_met"]  # 0.44 against the nearest setting, but 2.0 against interpolation
