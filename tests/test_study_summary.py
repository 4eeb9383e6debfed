"""tools/study_summary.py's predictability bound: each run forecast by its setting's other replicate runs."""

import doctest

import numpy as np
from conftest import load_tool

summary = load_tool("study_summary")


def records(run, log_values):
    return [{"run": run, "iteration": t, "measured_var": float(np.exp(v))} for t, v in enumerate(log_values)]


def test_examples():
    assert doctest.testmod(summary, raise_on_error=True).attempted > 0


def test_each_run_is_forecast_from_the_mean_change_of_the_other_runs_of_its_setting():
    path = np.array([0.0, 0.5, 1.0, 1.2, 1.0, 0.6])
    shocks = {"s0": [0, 0, 0.3, 0.3, 0.3, 0.3], "s1": [0, 0.2, 0.2, -0.1, -0.1, -0.1], "s2": [0, 0, 0, 0, 0, 0.6]}
    within = {"a": [row for run, shock in shocks.items() for row in records(f"a-{run}", path + shock)]}
    out = summary.replicate_bound(within)["from iteration 0"]["a"]
    logs = {run: path + np.array(shock) for run, shock in shocks.items()}
    expected = []
    for run, x in logs.items():
        others = [logs[r] for r in logs if r != run]
        for t in range(1, 6):
            change = np.mean([o[t] - o[0] for o in others])
            expected.append(abs(x[t] - x[0] - change))
    assert np.isclose(out["replicates"], np.mean(expected))
    assert np.isclose(out["persistence"], np.mean([abs(x[t] - x[0]) for x in logs.values() for t in range(1, 6)]))
    assert out["trend"] is None and out["best_baseline"] == "persistence" and out["run_iterations"] == 15


def test_settings_never_share_replicates_and_a_lone_run_is_left_out():
    rising, falling = np.linspace(0, 2, 6), np.linspace(0, -2, 6)
    within = {"up": records("up-s0", rising) + records("up-s1", rising),
              "down": records("down-s0", falling) + records("down-s1", falling),
              "alone": records("alone-s0", rising)}
    out = summary.replicate_bound(within)["forecast from 0-1"]
    assert out["up"]["replicates"] == 0 and out["down"]["replicates"] == 0
    assert "alone" not in out and out["pooled"]["run_iterations"] == 16
