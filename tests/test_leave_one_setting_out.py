"""tools/leave_one_setting_out.py: every setting of a set of runs predicted from a fit on the others."""

import json
import sys

import pandas as pd
import pytest
from conftest import load_tool
from test_validate_command import TWO_CAPTIONS, make_run


@pytest.fixture(scope="module")
def tool():
    return load_tool("leave_one_setting_out")


def test_each_setting_is_predicted_from_the_others(tool, tmp_path, monkeypatch, capsys):
    runs = [make_run(tmp_path, f"cfg{cfg:g}", cfg=cfg, shrink=shrink, reference=True, seed=seed, n=12, iterations=3,
                     captions=TWO_CAPTIONS)
            for seed, (cfg, shrink) in enumerate(((1.0, 1.0), (3.0, 0.8), (5.0, 0.6)))]
    assert [tool.setting_of(run) for run in runs] == ["cfg1", "cfg3", "cfg5"]
    monkeypatch.setattr(sys, "argv", ["leave_one_setting_out", *map(str, runs), "--out", str(tmp_path / "out"),
                                      "--no-plots"])
    tool.main()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(summary["folds"]) == {"cfg1", "cfg3", "cfg5"}
    middle = summary["folds"]["cfg3"]
    assert middle["runs"] == [str(runs[1])] and middle["run_iterations"] == 2  # iterations 1-2 of one run
    assert {"theory", "persistence", "nearest", "interpolation"} <= set(middle)  # CFG 3 lies between 1 and 5
    assert "interpolation" not in summary["folds"]["cfg1"]  # nothing below CFG 1 to interpolate from
    # The pooled ratio only compares with a baseline every held-out value has.
    assert summary["pooled"]["best_baseline"] in ("persistence", "nearest")
    assert summary["pooled"]["ratio"] == pytest.approx(
        summary["pooled"]["theory"] / summary["pooled"][summary["pooled"]["best_baseline"]]
    )
    printed = capsys.readouterr().out
    assert printed.count("\n| cfg") == 3 and "| pooled | 3 |" in printed
    assert all("replicates" not in fold for fold in summary["folds"].values())  # one run per setting: no bound


def test_predict_from_a_later_iteration_scores_the_runs_own_trend_too(tool, tmp_path, monkeypatch):
    runs = [make_run(tmp_path, f"cfg{cfg:g}", cfg=cfg, shrink=shrink, reference=True, seed=seed, n=12, iterations=4,
                     captions=TWO_CAPTIONS)
            for seed, (cfg, shrink) in enumerate(((1.0, 1.0), (3.0, 0.8)))]
    monkeypatch.setattr(sys, "argv", ["leave_one_setting_out", *map(str, runs), "--out", str(tmp_path / "out"),
                                      "--no-plots", "--predict-from", "2"])
    tool.main()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert all(fold["run_iterations"] == 2 and "trend" in fold for fold in summary["folds"].values())  # 2 and 3


def test_each_held_out_run_is_also_forecast_from_the_other_runs_of_its_setting(tool):
    # Two held-out runs of one setting: ln v at iteration 0 (persistence's value) and at iterations 1-2.
    paths = {"a": [0.0, 1.0, 3.0], "b": [1.0, 1.5, 2.0]}
    rows = []
    for run, path in paths.items():
        for t in (1, 2):
            common = {"run": run, "caption": "(run)", "iteration": t, "axis": -1, "quantity": "log_var",
                      "measured": path[t], "held_out": "cfg3", "covered": True}
            rows += [{**common, "method": "theory", "predicted": path[0], "abs_error": abs(path[t] - path[0])},
                     {**common, "method": "persistence", "predicted": path[0], "abs_error": abs(path[t] - path[0])}]
    skill = pd.DataFrame(rows)
    # a from b's change (+0.5, +1.0): 0.5 and 1.0, errors 0.5 and 2.0; b from a's (+1, +3): 2 and 4, errors 0.5 and 2.
    assert sorted(tool.replicate_errors(skill).tolist()) == [0.5, 0.5, 2.0, 2.0]
    # From iteration 1 instead (persistence holding iteration 1's value): a from b's change 0.5, b from a's 2.
    later = skill[skill["iteration"] == 2].copy()
    later.loc[later["method"] == "persistence", "predicted"] = later["run"].map({"a": 1.0, "b": 1.5})
    assert sorted(tool.replicate_errors(later, origin=1).tolist()) == [1.5, 1.5]
    assert tool.fold_summary(skill)["replicates"] == pytest.approx(1.25)


def test_the_summary_counts_the_conformal_intervals_at_caption_level_where_they_are_bounded(tool):
    common = {"run": "a", "iteration": 1, "axis": 0, "quantity": "log_var", "held_out": "cfg3", "measured": 0.0,
              "predicted": 0.0}
    rows = [{**common, "caption": "(run)", "axis": -1, "method": "theory", "abs_error": 0.1, "covered": True,
             "conformal_covered": True},
            {**common, "caption": "(run)", "axis": -1, "method": "persistence", "abs_error": 0.4, "covered": None}]
    for caption, covered, conformal in (("x", True, True), ("y", False, True), ("z", True, False),
                                        ("w", True, None)):  # w: unbounded (too few scores), not counted
        rows.append({**common, "caption": caption, "method": "theory", "abs_error": 0.2, "covered": covered,
                     "conformal_covered": conformal})
    summary = tool.fold_summary(pd.DataFrame(rows))
    assert summary["caption_coverage"] == 0.75
    assert summary["caption_coverage_conformal"] == pytest.approx(2 / 3)
    assert summary["run_coverage_conformal"] == 1.0 and summary["ratio"] == pytest.approx(0.25)
