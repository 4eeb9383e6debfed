"""validate.conformal: prediction intervals calibrated on the training settings' out-of-sample errors."""

import numpy as np
import pandas as pd
import pytest
from test_validate_prediction import engine_base, engine_chain

from validate.conformal import conformal_stretch, stretch_intervals, stretch_scores
from validate.prediction import predict
from validate.report_markdown import skill_section
from validate.skill import RUN_LEVEL


def _rows(measured, predicted, lo, hi, *, caption=RUN_LEVEL, quantity="log_var", iteration=1):
    return pd.DataFrame({"caption": caption, "quantity": quantity, "iteration": iteration, "measured": measured,
                         "predicted": predicted, "lo": lo, "hi": hi})


def test_conformal_intervals_cover_at_least_the_level_and_not_much_more():
    """The split-conformal guarantee, checked by simulation: intervals whose width is wrong by a factor 3 (and
    skewed) still cover between level and level + 1/(n + 1) once stretched on n exchangeable scores.

    4000 trials at n = 19 (exact coverage 18/20 = 0.9 for continuous scores): the binomial SD of the measured
    coverage is 0.0047, and each bound allows 3.5 SD (false-failure rate about 5e-4 per bound, fixed seed).
    """
    rng = np.random.default_rng(7)
    n, trials, level = 19, 4000, 0.9
    errors = rng.standard_t(5, size=(trials, n + 1)) * 3.0 + 0.5  # the truth minus the median: wide, off-centre
    scores = stretch_scores(_rows(errors.ravel(), 0.0, -1.0, 1.5)).reshape(trials, n + 1)
    inside = [score[n] <= conformal_stretch(score[:n], level) for score in scores]
    coverage = np.mean(inside)
    sd = np.sqrt(level * (1 - level) / trials)
    assert level - 3.5 * sd <= coverage <= level + 1 / (n + 1) + 3.5 * sd


def test_stretched_bounds_agree_with_the_scores_and_pools_stay_apart():
    calibration = pd.concat([
        _rows(np.arange(1.0, 20.0), 0.0, -1.0, 1.0),  # run level, iteration 1: scores 1..19, stretch 18
        _rows(np.full(9, 0.5), 0.0, -1.0, 1.0, iteration=2),  # iteration 2: 9 scores of 0.5, stretch 0.5
        _rows(np.full(9, 0.5), 0.0, -1.0, 1.0, caption="a", quantity="mean"),  # stretch 0.5
        _rows(np.full(8, 0.5), 0.0, -1.0, 1.0, caption="a"),  # 8: too few for 90 %
    ], ignore_index=True)
    held_out = pd.concat([
        _rows([-17.5, 19.0], 1.0, 0.0, 2.0),
        _rows([1.4], 1.0, 0.0, 2.0, iteration=2),
        _rows([5.0], 1.0, 0.0, 2.0, iteration=3),  # no scores at iteration 3
        _rows([0.4, 1.0], 1.0, 0.0, 2.0, caption="b", quantity="mean"),
        _rows([5.0], 1.0, 0.0, 2.0, caption="b"),
    ], ignore_index=True)
    stretched, summary = stretch_intervals(held_out, calibration, 0.9)
    assert summary == {
        "caption log_var": {"stretch": {"1": None}, "scores": 8, "coverage": None},
        "caption mean": {"stretch": {"1": 0.5}, "scores": 9, "coverage": 0.5},
        "run log_var": {"stretch": {"1": 18.0, "2": 0.5}, "scores": 28, "coverage": 2 / 3},
    }
    np.testing.assert_allclose(stretched["conformal_lo"], [-17.0, -17.0, 0.5, np.nan, 0.5, 0.5, -np.inf])
    np.testing.assert_allclose(stretched["conformal_hi"], [19.0, 19.0, 1.5, np.nan, 1.5, 1.5, np.inf])
    assert stretched["conformal_covered"].tolist() == [False, True, True, pd.NA, False, True, pd.NA]
    # An interval with no width on the measured value's side cannot be stretched to reach it.
    assert stretch_scores(_rows([0.5, 1.0], 1.0, 1.0, 2.0)).tolist() == [np.inf, 0.0]
    assert conformal_stretch([], 0.9) == np.inf


def test_predict_calibrates_its_intervals_on_the_training_settings():
    # Three runs per training setting (the engine's chains are deterministic: three copies of one run).
    train = [engine_chain(f"cfg{cfg:g}-{copy}", cfg, population=300) for cfg in (1.0, 3.0, 5.0) for copy in "abc"]
    held_out = [engine_chain("cfg2", 2.0, population=300)]
    calls = []
    result = predict(train, held_out, base=engine_base(), draws=200, calibrate_intervals=True,
                     progress=lambda done, total, what: calls.append((done, total, what)))
    assert calls == [(0, 3, "conformal calibration (CFG 1 constant drop 0)"),
                     (1, 3, "conformal calibration (CFG 3 constant drop 0)"),
                     (2, 3, "conformal calibration (CFG 5 constant drop 0)"), (3, 3, "conformal calibration")]
    pools = result.goodness["interval_calibration"]
    # Each training setting's runs, iterations 1-4, predicted from the other two settings: 9 run-level scores per
    # iteration, the fewest that give a finite 90 % stretch (the largest of them).
    assert pools["run log_var"]["scores"] == 9 * 4
    assert all(q is not None and q > 0 for q in pools["run log_var"]["stretch"].values())
    assert pools["caption log_var"]["scores"] == pools["caption mean"]["scores"] == 9 * 4 * 2  # two axes
    theory = result.skill[result.skill["method"] == "theory"]
    inside = (theory["conformal_lo"] <= theory["measured"]) & (theory["measured"] <= theory["conformal_hi"])
    assert (theory["conformal_covered"].astype(bool) == inside).all()
    run = theory[theory["caption"] == RUN_LEVEL]
    assert pools["run log_var"]["coverage"] == pytest.approx(run["conformal_covered"].astype(float).mean())
    # The report's run-level table gives each theory cell its conformal interval too.
    table = "\n".join(skill_section(result.skill, result.goodness, heading="prediction", how=""))
    first = run.sort_values("iteration").iloc[0]
    assert f"conformal [{first['conformal_lo']:.3g}, {first['conformal_hi']:.3g}]" in table
    # prediction.csv's caption rows carry the same conformal intervals as the skill table's.
    captions = theory[theory["caption"] != RUN_LEVEL].rename(columns={"caption": "group"})
    merged = result.rows.merge(captions, on=["run", "group", "iteration", "axis", "quantity"], suffixes=("", "_skill"))
    assert len(merged) == len(result.rows) == len(captions)
    np.testing.assert_array_equal(merged["conformal_hi"], merged["conformal_hi_skill"])
    baselines = result.skill[result.skill["method"] != "theory"]
    assert baselines["conformal_lo"].isna().all()
    # Without calibration the prediction is the same, with no conformal columns.
    plain = predict(train, held_out, base=engine_base(), draws=200)
    assert "interval_calibration" not in plain.goodness and "conformal_lo" not in plain.skill
    pd.testing.assert_frame_equal(plain.skill, result.skill[plain.skill.columns])
