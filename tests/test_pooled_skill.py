"""tools/pooled_skill.py: the skill of several reports scored as one sample of run-iterations."""

import pandas as pd
import pytest
from conftest import load_tool

from validate.skill import RUN_LEVEL


@pytest.fixture(scope="module")
def tool():
    return load_tool("pooled_skill")


def _skill(folder, run, errors, covered, *, trend=False):
    """A skill.csv of one run's run-level ln var: the theory's errors and coverage, persistence's errors x 2 and
    with ``trend`` the trend's x 1.2."""
    baselines = (("persistence", 2.0),) + ((("trend", 1.2),) if trend else ())
    rows = [{"run": run, "caption": RUN_LEVEL, "iteration": i + 1, "axis": -1, "quantity": "log_var",
             "method": method, "abs_error": error * scale, "crps": error * scale,
             "covered": hit if method == "theory" else None}
            for i, (error, hit) in enumerate(zip(errors, covered, strict=True))
            for method, scale in (("theory", 1.0), *baselines)]
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(folder / "skill.csv", index=False)


def test_pooling_weighs_every_run_iteration_alike(tool, tmp_path, capsys):
    # One report of three values and one (a fold, one level down) of one: the pooled mean is over all four values,
    # not the mean of the two reports' means (0.35).
    _skill(tmp_path / "forecast", "a", [0.1, 0.2, 0.3], [True, True, False])
    _skill(tmp_path / "leave-one-out" / "held-b", "b", [0.6], [True])
    table = tool.pooled_table([tmp_path / "forecast", tmp_path / "leave-one-out"])
    assert table["source"].nunique() == 2
    assert tool.main([str(tmp_path / "forecast"), str(tmp_path / "leave-one-out")]) == 0
    out = capsys.readouterr().out
    assert "2 skill.csv files, 2 runs" in out
    theory = next(line for line in out.splitlines() if line.startswith("theory")).split()
    assert theory[1:3] == ["4", "0.3"]  # run-iterations, mean |Δ ln var| (run)
    assert float(theory[-2]) == 0.75  # run-level coverage: 3 of 4
    assert out.splitlines()[-1].startswith("theory against persistence, the better baseline that every value has: "
                                           "ratio 0.50")


def test_the_same_run_in_two_reports_counts_as_two_forecasts(tool, tmp_path, capsys):
    # Two protocols forecasting run "a", the trend in one only: it lacks three of the six values, so the ratio is to
    # persistence (0.3 against 0.6). Merged by (run, iteration), the trend would seem to have every value and win.
    _skill(tmp_path / "forecast", "a", [0.1, 0.2, 0.3], [True] * 3, trend=True)
    _skill(tmp_path / "leave-one-out", "a", [0.5, 0.2, 0.5], [True] * 3)
    assert tool.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 skill.csv files, 1 runs" in out
    assert next(line for line in out.splitlines() if line.startswith("theory")).split()[1] == "6"
    assert out.splitlines()[-1].startswith("theory against persistence, the better baseline that every value has: "
                                           "ratio 0.50")


def test_a_folder_without_reports_is_refused_in_one_line(tool, tmp_path, capsys):
    assert tool.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no skill.csv" in err
