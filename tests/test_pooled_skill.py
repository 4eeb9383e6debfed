"""tools/pooled_skill.py: the skill of several reports scored as one sample of run-iterations."""

import numpy as np
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


def _seeded(folder, errors):
    """A skill.csv of four seeds (rows of ``errors``) x three settings (columns), one iteration: the theory's signed
    errors, against persistence's absolute error of 1."""
    rows = []
    for seed, row in enumerate(errors):
        for setting, error in zip(("cfg1", "cfg3", "cfg7.5"), row, strict=True):
            common = {"run": f"{setting}-s{seed}", "caption": RUN_LEVEL, "iteration": 2, "axis": -1,
                      "quantity": "log_var", "measured": 0.0}
            rows += [{**common, "method": "theory", "predicted": error, "abs_error": abs(error), "crps": abs(error),
                      "covered": True},
                     {**common, "method": "persistence", "predicted": 1.0, "abs_error": 1.0, "crps": 1.0,
                      "covered": None}]
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(folder / "skill.csv", index=False)


def test_runs_of_one_seed_count_as_one_unit(tool, tmp_path, capsys):
    # The seeds' shifts dominate the settings' offsets: the intra-seed correlation is near 1, and the ratio's interval
    # over resampled seeds lies within the seeds' own ratios (0.1 to 0.6 of persistence's error).
    shared = [[shift + offset for offset in (0.0, 0.05, -0.05)] for shift in (0.1, 0.3, -0.4, 0.6)]
    _seeded(tmp_path / "shared", shared)
    units = tool.seed_units(tool.pooled_table([tmp_path / "shared"]), "persistence")
    assert units["seeds"] == 4 and units["icc"] > 0.95 and units["p"] < 1e-3
    assert 0.1 <= units["interval"][0] < 0.35 < units["interval"][1] <= 0.6
    # BCa corrects the percentile interval's bias and skew; it still holds the pooled ratio (the mean |error|, 0.35)
    # and no value outside the seeds' own ratios.
    assert 0.1 <= units["interval_bca"][0] < 0.35 < units["interval_bca"][1] <= 0.6
    # Each seed holds the same three errors in another order: nothing is shared by a seed's runs.
    _seeded(tmp_path / "none", [np.roll([0.1, 0.3, 0.5], seed) for seed in range(4)])
    assert tool.seed_units(tool.pooled_table([tmp_path / "none"]), "persistence")["icc"] < 0.0
    assert tool.main(["--by-seed", str(tmp_path / "shared")]) == 0
    out = capsys.readouterr().out
    assert "with the 4 seeds as units: 90 % interval" in out and "BCa" in out


def test_by_seed_refuses_runs_named_otherwise_in_one_line(tool, tmp_path, capsys):
    _skill(tmp_path / "forecast", "a", [0.1], [True])
    assert tool.main(["--by-seed", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run 'a' is not named <setting>-s<seed>" in err


def test_a_seed_per_run_has_an_interval_and_no_correlation(tool, tmp_path, capsys):
    _seeded(tmp_path / "own", [[0.1 * (seed + 1)] * 3 for seed in range(4)])
    table = tool.pooled_table([tmp_path / "own"])
    table["run"] = [f"{name.split('-s')[0]}-s{i // 2}" for i, name in enumerate(table["run"])]  # 12 seeds, one each
    units = tool.seed_units(table, "persistence")
    assert units["seeds"] == 12 and "icc" not in units
    # Every seed's ratio alike: BCa is undefined (nan), and the percentile interval is the one ratio.
    _seeded(tmp_path / "alike", [[0.5] * 3] * 4)
    alike = tool.seed_units(tool.pooled_table([tmp_path / "alike"]), "persistence")
    assert np.isnan(alike["interval_bca"]).all() and np.allclose(alike["interval"], 0.5)
