"""tools/leave_one_setting_out.py: every setting of a set of runs predicted from a fit on the others."""

import json
import sys

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
