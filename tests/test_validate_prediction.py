"""``--predict``: the shared model (one for every setting), its prediction of held-out runs, and the baselines."""

import json

import numpy as np
import pandas as pd
import pytest
from test_cli_usage import run_main
from test_validate_command import TWO_CAPTIONS, make_run

from qtm.calibration import read_calibration
from qtm.recursion import simulate_moments
from validate.errors import ValidateError
from validate.pipeline import validate_runs
from validate.prediction import predict, prediction_baselines
from validate.skill import RUN_LEVEL
from validate.transition import BaseMoments, Trajectory, TransitionModel, Transitions

TRUTH = {"fidelity": 0.6, "uncond_drift": 0.2, "var_fidelity": 0.7, "var_shift": 0.1, "guidance_gain": 0.5,
         "selection_slope": -0.15}
BASE = {"cond_mean": [0.3, -0.2], "cond_var": [0.5, 0.4], "uncond_mean": [0.0, 0.0], "uncond_var": [1.0, 1.0],
        "data_mean": [0.4, -0.1], "data_var": [0.6, 0.3]}


def engine_chain(run, cfg, *, iterations=5, population=10**4):
    """A run whose moments are the moments engine's (one caption; the base's unconditional SD is 1, so the
    fit's scaled units are the engine's)."""
    out = simulate_moments(**{k: np.array(v) for k, v in BASE.items()}, **TRUTH, cfg=cfg, sampler="ddim", steps=10,
                           iterations=iterations)
    return Trajectory(run=run, setting=f"cfg={cfg:g} constant", cfg=cfg, iterations=np.arange(iterations),
                      mean=out.mean.T, var=out.var.T, population=population, steps=10)


def engine_base():
    pair = lambda name: (np.array(BASE[f"{name}_mean"]), np.array(BASE[f"{name}_var"]))  # noqa: E731
    return BaseMoments(cond=pair("cond"), uncond=pair("uncond"), data=pair("data"))


def test_shared_model_selects_the_mean_by_the_sampler_and_ln_var_by_its_slope():
    """With gain 1 the shared model's mean is the per-setting model's at w = cfg; its ln var is the finetuned
    model's plus beta ln w_geo, w_geo = cfg for the constant schedule."""
    trajectories = [engine_chain("a", 3.0), engine_chain("b", 5.0)]
    for tr in trajectories:
        tr.drop = 0.25  # a drop: the shared unconditional fidelity is min(1, a + drop rho)
    data = Transitions(trajectories, engine_base(), None)
    per_setting, shared = TransitionModel(data), TransitionModel(data, guidance="shared")
    rho, drift = 0.6, 0.2
    x_setting = np.array([rho, drift + 0.25 * rho, 0.7, 0.1, 3.0, 5.0, -3.0, -4.0])
    x_shared = np.array([rho, drift, 0.7, 0.1, 1.0, -0.2, -3.0, -4.0])
    assert [name for name, _, _ in shared.names] == [
        "fidelity", "uncond_drift", "var_fidelity", "var_shift", "guidance_gain", "selection_slope",
        "log_process_var", "log_process_var",
    ]
    args = (data.src_mean, data.src_log, data.pool_mean, data.pool_log)
    (mean_setting, _), (mean_shared, log_shared) = per_setting.transition(x_setting, *args), shared.transition(
        x_shared, *args)
    np.testing.assert_allclose(mean_shared, mean_setting, rtol=1e-12)
    finetuned = data.base_log + 0.7 * (data.src_log - data.base_log) + 0.1
    np.testing.assert_allclose(log_shared, finetuned - 0.2 * np.log(data.cfg[:, None]), rtol=1e-12)
    # A batch gives each vector's own numbers.
    stronger = x_shared.copy()
    stronger[4] = 1.5
    batch = shared.nll_many(np.array([x_shared, stronger]))
    assert batch[0] == pytest.approx(shared.nll(x_shared), rel=1e-12)
    assert batch[1] == pytest.approx(shared.nll(stronger), rel=1e-12)


def test_the_selection_slope_acts_on_the_mean_log_scale_of_each_runs_schedule():
    """ReDiFine's cosine schedule at peak 7.5 over 25 steps guides at a geometric mean of 3.48 (its arithmetic mean
    4.25): its rows' ln var move by beta ln 3.48, a constant schedule's at CFG 3 by beta ln 3, CFG 1's not at
    all."""
    trajectories = [engine_chain("a", 1.0), engine_chain("b", 3.0), engine_chain("c", 7.5)]
    trajectories[2].schedule, trajectories[2].steps = "cosine", 25
    data = Transitions(trajectories, engine_base(), None)
    scales = np.array([1.0 + 6.5 * (1 + np.cos(np.pi * i / 24)) / 2 for i in range(25)])
    expected = {"a": 0.0, "b": np.log(3.0), "c": np.log(scales).mean()}
    np.testing.assert_allclose(data.log_scale, [expected[trajectories[r].run] for r in data.traj], rtol=1e-12)
    shared = TransitionModel(data, guidance="shared")
    x = np.array([0.6, 0.2, 0.7, 0.1, 0.5, -0.2, -3.0, -4.0])
    args = (data.src_mean, data.src_log, data.pool_mean, data.pool_log)
    flat = x.copy()
    flat[5] = 0.0
    step = shared.transition(x, *args)[1] - shared.transition(flat, *args)[1]
    np.testing.assert_allclose(step, np.broadcast_to(-0.2 * data.log_scale[:, None], step.shape), atol=1e-12)


def test_fit_on_cfg_1_and_5_recovers_the_engine_and_predicts_cfg_3():
    """Chains of the moments engine with known parameters: the shared fit on CFG 1 and 5 finds them, predicts the
    CFG-3 chain it never saw from its iteration 0, and its calibration makes the engine repeat that chain."""
    train = [engine_chain("cfg1", 1.0), engine_chain("cfg5", 5.0)]
    held_out = [engine_chain("cfg3", 3.0)]
    result = predict(train, held_out, base=engine_base(), draws=200)
    values = {name: result.fit.values[(name, "", -1)] for name in TRUTH}
    for name, truth in TRUTH.items():
        assert values[name] == pytest.approx(truth, abs=0.02), name
    # The engine's chains have no process noise: its variances sit on their floor, and the table says so.
    bounds = result.fit.parameters.set_index("parameter")["bound"]
    assert (bounds[list(TRUTH)] == "").all() and (bounds["log_process_var"] == "lower").all()
    run = result.skill[result.skill["caption"] == RUN_LEVEL].pivot_table(
        index="iteration", columns="method", values="abs_error"
    )
    assert (run["theory"] < 0.05).all()
    assert run["theory"].mean() < 0.2 * run["persistence"].mean()
    assert result.goodness["predict_run_coverage"] == 1.0
    calibration = result.calibration
    assert calibration.parameters["sampler"] == "ddim" and calibration.parameters["steps"] == 10
    repeated = simulate_moments(**calibration.options(), cfg=3.0, iterations=5)
    np.testing.assert_allclose(np.log(repeated.var.T), np.log(held_out[0].var), atol=0.05)


def series_run(run, cfg, values, *, schedule="constant"):
    """A one-caption, one-axis run whose ln var is ``values``."""
    values = np.asarray(values, float)
    return Trajectory(run=run, setting=run, cfg=cfg, iterations=np.arange(len(values)),
                      mean=np.zeros((len(values), 1)), var=np.exp(values)[:, None], population=50, schedule=schedule)


def test_prediction_baselines_shift_the_training_settings_to_the_held_out_start():
    train = [series_run("a1", 1.0, [0.0, 1.0, 2.0]), series_run("a2", 1.0, [1.0, 2.0, 3.0]),
             series_run("b", 5.0, [0.0, -1.0, -2.0]), series_run("c", 7.5, [0.0, 9.0, 9.0], schedule="cosine")]
    held_out = [series_run("h", 2.0, [10.0, 0.0, 0.0])]
    points = prediction_baselines(train, held_out, base=BaseMoments(cond=(np.zeros(1), np.ones(1))))
    row = {"run": "h", "caption": RUN_LEVEL, "iteration": 2, "axis": -1, "quantity": "log_var"}
    found = points(row, np.arange(3), np.array([10.0, 0.0, 0.0]))
    # cfg 1 changes by +2 at iteration 2 (both seeds), cfg 5 by -2: interpolation at cfg 2 is 0.75 * 2 - 0.25 * 2.
    assert found == {"persistence": 10.0, "nearest": 12.0, "interpolation": 11.0}
    # No training setting above the held-out CFG with its schedule: no interpolation, nearest in CFG.
    outside = prediction_baselines(train, [series_run("h", 9.0, [10.0, 0.0, 0.0])],
                                   base=BaseMoments(cond=(np.zeros(1), np.ones(1))))
    found = outside(row, np.arange(3), np.array([10.0, 0.0, 0.0]))
    assert found["nearest"] == 8.0 and np.isnan(found["interpolation"])


def test_prediction_baselines_from_a_later_iteration_start_there_and_add_the_runs_own_trend():
    """--predict-from 2: every baseline starts from the held-out iteration 1; the trend runs through 0-1."""
    train = [series_run("a1", 1.0, [0.0, 1.0, 2.0, 4.0]), series_run("a2", 1.0, [1.0, 2.0, 3.0, 3.0]),
             series_run("b", 5.0, [0.0, -1.0, -2.0, -5.0])]
    held = np.array([10.0, 8.0, 0.0, 0.0])
    points = prediction_baselines(train, [series_run("h", 2.0, held)], base=BaseMoments(cond=(np.zeros(1),
                                  np.ones(1))), start=1)
    row = {"run": "h", "caption": RUN_LEVEL, "iteration": 3, "axis": -1, "quantity": "log_var"}
    found = points(row, np.arange(4), held)
    # From iteration 1 to 3: cfg 1 changes by +3 and +1 (mean 2), cfg 5 by -4; the trend falls by 2 per iteration.
    assert found == pytest.approx({"persistence": 8.0, "nearest": 10.0, "interpolation": 8.0 + 0.75 * 2 - 0.25 * 4,
                                   "trend": 4.0}, abs=1e-12)
    # From iteration 0 there is no trend to extend.
    assert "trend" not in prediction_baselines(train, [series_run("h", 2.0, held)], base=BaseMoments(
        cond=(np.zeros(1), np.ones(1))))(row, np.arange(4), held)


def test_predict_from_a_later_iteration_starts_from_it():
    """The engine's chains predicted from iteration 2: only iterations 3-4 are predicted, as closely as from 0."""
    train = [engine_chain("cfg1", 1.0), engine_chain("cfg5", 5.0)]
    held_out = [engine_chain("cfg3", 3.0)]
    result = predict(train, held_out, base=engine_base(), draws=200, predict_from=3)
    assert set(result.rows["iteration"]) == {3, 4} and result.goodness["predict_from"] == 3
    run = result.skill[result.skill["caption"] == RUN_LEVEL].pivot_table(
        index="iteration", columns="method", values="abs_error")
    assert set(run.columns) == {"theory", "persistence", "trend", "nearest", "interpolation"}
    assert (run["theory"] < 0.05).all()
    with pytest.raises(ValidateError, match="end at iteration 4; nothing to predict"):
        predict(train, held_out, base=engine_base(), draws=20, predict_from=5)


def test_chain_validate_predict_writes_the_prediction_skill_and_calibration(tmp_path):
    low = make_run(tmp_path, "cfg1", cfg=1.0, shrink=1.0, reference=True, seed=1, captions=TWO_CAPTIONS, n=24)
    high = make_run(tmp_path, "cfg5", cfg=5.0, shrink=0.6, reference=True, seed=2, captions=TWO_CAPTIONS, n=24)
    middle = make_run(tmp_path, "cfg3", cfg=3.0, shrink=0.8, seed=3, captions=TWO_CAPTIONS, n=24)
    result = validate_runs([low, high], predict=[middle], conformal=True, report=tmp_path / "r", axes=2,
                           bootstrap=0, forecast_from=2, warn=print)
    report = tmp_path / "r"
    prediction = pd.read_csv(report / "prediction.csv")
    assert set(prediction["run"]) == {"cfg3"} and set(prediction["iteration"]) == {1, 2, 3}
    assert set(prediction["group"]) == set(TWO_CAPTIONS)
    assert (prediction["lo"] <= prediction["hi"]).all()
    skill = pd.read_csv(report / "skill.csv")
    assert set(skill["task"]) == {"forecast", "predict"}
    assert set(skill.loc[skill["task"] == "predict", "method"]) == {"theory", "persistence", "nearest",
                                                                     "interpolation"}
    assert set(skill.loc[skill["task"] == "forecast", "run"]) == {"cfg1", "cfg5"}  # held-out runs are not fitted
    calibration = read_calibration(report / "calibration.json")
    assert len(calibration.model["cond_mean"]) == 2
    assert calibration.provenance["training_runs"] == ["cfg1", "cfg5"]
    assert calibration.provenance["validation"]["parameters"]["predict"] == [str(middle)]
    fit = json.loads((report / "fit.json").read_text())
    assert fit["prediction"]["held_out_runs"] == ["cfg3"]
    # With --predict the report's fit is the shared model, and the prediction reuses it rather than refitting.
    assert fit["prediction"]["parameters"] == fit["parameters"]
    assert {p["parameter"] for p in fit["prediction"]["parameters"]} >= {"guidance_gain", "uncond_drift"}
    assert result["prediction"]["skill_forecasts"] == 3
    text = (report / "report.md").read_text()
    assert text.index("## Prediction of held-out runs") < text.index("## Forecast skill")
    assert (report / "prediction.png").exists()
    # Two training settings: the conformal calibration has each one's 3 iterations predicted from the other, too
    # few scores per iteration for a bounded 90 % interval, and the report says so.
    calibrated = fit["prediction"]["interval_calibration"]["run log_var"]
    assert calibrated == {"stretch": {"1": None, "2": None, "3": None}, "scores": 6, "coverage": None}
    assert "run log_var unbounded at iterations 1, 2, 3 (too few scores) from 6 scores." in text
    assert "], conformal unbounded |" in text  # the run-level table's theory cells
    theory = skill[(skill["task"] == "predict") & (skill["method"] == "theory")]
    assert np.isinf(theory["conformal_hi"]).all() and theory["conformal_covered"].isna().all()
    assert np.isinf(pd.read_csv(report / "prediction.csv")["conformal_lo"]).all()


def test_chain_validate_predict_from_a_later_iteration(tmp_path):
    low = make_run(tmp_path, "cfg1", cfg=1.0, shrink=1.0, reference=True, seed=1, n=16)
    high = make_run(tmp_path, "cfg5", cfg=5.0, shrink=0.6, reference=True, seed=2, n=16)
    middle = make_run(tmp_path, "cfg3", cfg=3.0, shrink=0.8, seed=3, n=16)
    validate_runs([low, high], predict=[middle], predict_from=2, report=tmp_path / "r", axes=1, bootstrap=0,
                  decompose_runs=False, warn=print)
    assert set(pd.read_csv(tmp_path / "r" / "prediction.csv")["iteration"]) == {2, 3}
    skill = pd.read_csv(tmp_path / "r" / "skill.csv")
    assert "trend" in set(skill["method"])
    assert "from their measured iteration 1 and run.json" in (tmp_path / "r" / "report.md").read_text()
    fit = json.loads((tmp_path / "r" / "fit.json").read_text())
    assert fit["prediction"]["predict_from"] == 2


def test_predict_bad_input_is_one_line_exit_2_and_writes_nothing(monkeypatch, capsys, tmp_path):
    from commands.chain_program import main

    train = make_run(tmp_path, "train", cfg=1.0, shrink=1.0, iterations=2, n=8, reference=True)
    other = make_run(tmp_path, "other", cfg=3.0, shrink=1.0, iterations=2, n=8)
    document = json.loads((other / "run.json").read_text())
    document["parameters"]["data"] = "emoji:32"
    (other / "run.json").write_text(json.dumps(document))
    unfinished = make_run(tmp_path, "unfinished", cfg=3.0, shrink=1.0, iterations=2, n=8, finished=0)
    for held, message in (
        (other, "data 'emoji:32' differs from the training runs' None"),
        (unfinished, "iteration 0 is not finished"),
        (train, "also a training run"),
        (tmp_path / "missing", "does not exist"),
    ):
        status, _, stderr = run_main(monkeypatch, capsys, main, "chain", "validate", str(train), "--predict",
                                     str(held), "--no-decompose", "--report", str(tmp_path / "r"))
        assert status == 2, stderr
        assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
        assert message in stderr
    status, _, stderr = run_main(monkeypatch, capsys, main, "chain", "validate", str(train), "--guidance", "free",
                                 "--no-decompose", "--report", str(tmp_path / "r"))
    assert status == 2 and "--guidance 'free' is not one of: per-setting, shared" in stderr
    status, _, stderr = run_main(monkeypatch, capsys, main, "chain", "validate", str(train), "--conformal",
                                 "--no-decompose", "--report", str(tmp_path / "r"))
    assert status == 2 and "--conformal calibrates the intervals of --predict; add --predict HELD_OUT_RUNS" in stderr
    status, _, stderr = run_main(monkeypatch, capsys, main, "chain", "validate", str(train), "--predict-from", "2",
                                 "--no-decompose", "--report", str(tmp_path / "r"))
    assert status == 2 and "--predict-from starts the prediction of --predict; add --predict" in stderr
    one_done = make_run(tmp_path, "one", cfg=3.0, shrink=1.0, iterations=2, n=8, finished=1)
    for flags, message in ((["--predict-from", "0"], "--predict-from must be >= 1"),
                           (["--predict-from", "2"], "iteration 1 is not finished; a prediction starts from it "
                                                     "(--predict-from 2)")):
        status, _, stderr = run_main(monkeypatch, capsys, main, "chain", "validate", str(train), "--predict",
                                     str(one_done), *flags, "--no-decompose", "--report", str(tmp_path / "r"))
        assert status == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not (tmp_path / "r").exists()


def test_the_shared_fit_writes_a_calibration_and_the_per_setting_fit_none(tmp_path):
    low = make_run(tmp_path, "cfg1", cfg=1.0, shrink=1.0, reference=True, seed=1, n=16)
    high = make_run(tmp_path, "cfg5", cfg=5.0, shrink=0.6, reference=True, seed=2, n=16)
    validate_runs([low, high], report=tmp_path / "shared", axes=1, bootstrap=0, guidance="shared",
                  decompose_runs=False, plots=False, warn=print)
    calibration = read_calibration(tmp_path / "shared" / "calibration.json")
    parameters = pd.read_csv(tmp_path / "shared" / "parameters.csv").set_index("parameter")
    assert calibration.parameters["guidance_gain"] == pytest.approx(parameters.loc["guidance_gain", "estimate"])
    assert "w_eff" not in parameters.index
    validate_runs([low, high], report=tmp_path / "per-setting", axes=1, bootstrap=0, decompose_runs=False,
                  plots=False, warn=print)
    assert not (tmp_path / "per-setting" / "calibration.json").exists()


def test_held_out_runs_with_another_caption_structure_are_refused():
    """Two captions per training run (a run-level noise term) against one held out (none): one line, no guess."""
    train = []
    for run, cfg in (("a", 1.0), ("b", 5.0)):
        for group in ("x", "y"):
            trajectory = engine_chain(run, cfg)
            trajectory.group = group
            train.append(trajectory)
    with pytest.raises(ValidateError, match="held-out runs' captions differ from the training runs'"):
        predict(train, [engine_chain("h", 3.0)], base=engine_base(), draws=50)


def test_the_calibration_keeps_a_typical_captions_distance_from_the_unconditional_branch():
    """Two captions on either side of the unconditional branch: their mean position is the branch itself, where
    guidance selects nothing; the calibration's caption lies at their RMS distance, its data as far beyond it as
    each caption's data lie beyond that caption's branch."""
    from validate.calibration import typical_caption

    pair = lambda m, v: (np.array(m), np.array(v))  # noqa: E731
    base = BaseMoments(cond={"a": pair([2.0, 0.5], [0.4, 0.3]), "b": pair([-2.0, 1.5], [0.6, 0.5])},
                       uncond=pair([0.0, 0.0], [4.0, 1.0]),
                       data={"a": pair([2.5, 0.5], [0.2, 0.1]), "b": pair([-2.5, 1.5], [0.4, 0.3])})
    scale = np.array([2.0, 1.0])
    (cond_mean, cond_var), (data_mean, data_var) = typical_caption(base, scale, np.zeros(2))
    np.testing.assert_allclose(cond_mean, [1.0, np.sqrt((0.25 + 2.25) / 2)])
    np.testing.assert_allclose(cond_var, [0.125, 0.4])
    np.testing.assert_allclose(data_mean, [1.25, np.sqrt(1.25)])
    np.testing.assert_allclose(data_var, [0.075, 0.2])
    one = BaseMoments(cond=pair([-0.3], [0.5]), uncond=pair([0.1], [1.0]), data=pair([-0.1], [0.6]))
    (cond_mean, cond_var), (data_mean, data_var) = typical_caption(one, np.ones(1), np.array([0.1]))
    np.testing.assert_allclose([cond_mean, cond_var, data_mean, data_var], [[-0.3], [0.5], [-0.1], [0.6]])
