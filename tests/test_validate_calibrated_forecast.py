"""``--forecast-from K --calibration FILE``: a forecast whose model was fitted on other chains, nothing on these."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from conftest import load_tool
from test_cli_usage import run_main
from test_validate_command import TWO_CAPTIONS, make_run
from test_validate_prediction import TRUTH, engine_base, engine_chain

from qtm.calibration import Calibration, read_calibration, write_calibration
from validate.calibration import calibrated_parameters
from validate.errors import ValidateError
from validate.forecast import forecast
from validate.pipeline import validate_runs
from validate.skill import RUN_LEVEL
from validate.transition import BaseMoments, Trajectory, TransitionModel, Transitions

NOISE = {"process_sd_mean": 1e-3, "process_sd_log_var": 1e-3}


def engine_calibration(**changes) -> Calibration:
    """The engine's own parameters as a calibration (the model lists are not used by a forecast)."""
    return Calibration(parameters={**TRUTH, "sampler": "ddim", "steps": 10, **changes}, model={}, noise=NOISE,
                       standard_errors={name: 1e-3 for name in TRUTH})


def run_level_errors(result) -> pd.Series:
    rows = result.skill[result.skill["caption"] == RUN_LEVEL]
    return rows.pivot_table(index="iteration", columns="method", values="abs_error")["theory"]


def test_a_calibrated_forecast_fits_nothing_and_follows_the_engine_it_came_from():
    """The engine's CFG-3 chain forecast from iteration 1 with the engine's own parameters: the forecast's table is
    the calibration's, and the forecast follows the chain; a calibration with another selection slope does not."""
    chain = [engine_chain("cfg3", 3.0, iterations=6)]
    result = forecast(chain, base=engine_base(), forecast_from=2, draws=200, calibration=engine_calibration())
    table = result.parameters.set_index("parameter")
    for name, truth in TRUTH.items():
        assert table.loc[name, "estimate"] == truth and table.loc[name, "stderr"] == pytest.approx(1e-3)
    assert result.goodness["message"].startswith("parameters from the calibration, not fitted")
    assert result.goodness["forecast_calibration"] == {"training_runs": 0}
    assert set(result.skill["iteration"]) == {2, 3, 4, 5}
    assert (run_level_errors(result) < 0.02).all()
    assert result.goodness["forecast_run_coverage"] == 1.0
    # The calibration is what forecasts: a selection slope 0.5 stronger misses by about 0.5 ln per iteration ahead
    # (the model's ln var adds slope * ln 3 at each generation and keeps var_fidelity = 0.7 of the last one).
    wrong = forecast(chain, base=engine_base(), forecast_from=2, draws=200,
                     calibration=engine_calibration(selection_slope=TRUTH["selection_slope"] - 0.5))
    assert (run_level_errors(wrong) > 0.4).all()


def two_caption_model() -> TransitionModel:
    runs = [Trajectory(run="r", setting="cfg=3 constant", cfg=3.0, iterations=np.arange(3), mean=np.zeros((3, 1)),
                       var=np.ones((3, 1)), population=50, group=group) for group in ("a", "b")]
    pair = (np.zeros(1), np.ones(1))
    base = BaseMoments(cond={"a": pair, "b": pair}, uncond=(np.zeros(1), np.full(1, 2.0)), data=None)
    return TransitionModel(Transitions(runs, base, None), guidance="shared")


def test_the_process_noise_splits_into_the_runs_shock_and_each_captions_own():
    model = two_caption_model()
    calibration = engine_calibration()
    calibration = dataclasses.replace(calibration, noise={"process_sd_mean": 0.5, "process_sd_log_var": 0.5,
                                                          "process_sd_common_mean": 0.3,
                                                          "process_sd_common_log_var": 0.4})
    x, covariance = calibrated_parameters(calibration, model, where="c.json")
    own, common = model.noise(x)
    assert own == pytest.approx({"mean": 0.25 - 0.09, "log_var": 0.25 - 0.16})
    assert common == pytest.approx({"mean": 0.09, "log_var": 0.16})
    assert np.diag(covariance)[len(TRUTH):].tolist() == [0.0] * 4  # the noise is held, not drawn
    with pytest.raises(ValidateError, match=r"does not split its process noise .* before format version 4"):
        calibrated_parameters(engine_calibration(), model, where="c.json")
    with pytest.raises(ValidateError, match=r"c\.json has no selection slope"):
        calibrated_parameters(engine_calibration(selection_slope=None), model, where="c.json")


def fitted_calibration(tmp_path, **options):
    """calibration.json of a shared fit on two synthetic training runs of two captions (``options``: more of
    validate_runs')."""
    low = make_run(tmp_path, "cfg1", cfg=1.0, shrink=1.0, reference=True, seed=1, captions=TWO_CAPTIONS, n=24)
    high = make_run(tmp_path, "cfg5", cfg=5.0, shrink=0.6, reference=True, seed=2, captions=TWO_CAPTIONS, n=24)
    validate_runs([low, high], report=tmp_path / "fit", axes=2, bootstrap=0, guidance="shared",
                  decompose_runs=False, plots=False, warn=print, **options)
    return tmp_path / "fit" / "calibration.json"


def collapsed_run(tmp_path, name, *, cfg, shrink, seed):
    """A synthetic run of two captions whose "a dark square" images are all identical at iteration 4."""
    run = make_run(tmp_path, name, cfg=cfg, shrink=shrink, reference=True, seed=seed, captions=TWO_CAPTIONS, n=24,
                   iterations=5)
    folder = run / "iter-004"
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    dark = [row["file_name"] for row in rows if row["caption"] == "a dark square"]
    for file_name in dark[1:]:
        (folder / file_name).write_bytes((folder / dark[0]).read_bytes())
    return run


def test_chain_validate_forecasts_with_a_calibration_of_other_runs(monkeypatch, capsys, tmp_path):
    from commands.chain_program import main

    path = fitted_calibration(tmp_path)
    calibration = read_calibration(path)
    assert calibration.provenance["validation"]["parameters"]["setup"] == dict.fromkeys(
        ("data", "backend", "preset", "model"))
    assert set(calibration.noise) == {"process_sd_mean", "process_sd_log_var", "process_sd_common_mean",
                                      "process_sd_common_log_var"}
    middle = make_run(tmp_path, "cfg3", cfg=3.0, shrink=0.8, reference=True, seed=3, captions=TWO_CAPTIONS, n=24)
    status, stdout, stderr = run_main(monkeypatch, capsys, main, "chain", "validate", str(middle), "--forecast-from",
                                      "2", "--calibration", str(path), "--axes", "2", "--bootstrap", "0",
                                      "--no-decompose", "--no-plots", "--report", str(tmp_path / "r"))
    assert status == 0, stderr
    assert "forecast from iteration 2 with the calibration's model: mean |Δ ln var| " in stdout
    fit = json.loads((tmp_path / "r" / "fit.json").read_text())
    forecast_table = pd.DataFrame(fit["forecast"]["parameters"]).set_index("parameter")
    for name in TRUTH:
        assert forecast_table.loc[name, "estimate"] == pytest.approx(calibration.parameters[name], rel=1e-12)
    assert fit["forecast"]["forecast_calibration"]["sha256"] == calibration.source["sha256"]
    assert fit["forecast"]["process_sd_log_var"] == pytest.approx(calibration.noise["process_sd_log_var"])
    text = (tmp_path / "r" / "report.md").read_text()
    assert f"Parameters and process noise from the calibration `{path}` (the shared model fitted on 2 runs, named " \
        "in its provenance), none fitted on these runs" in text
    assert "named as one of the calibration's training runs" not in text
    # A forecast run that bears a training run's name may be that run: the forecast says it may be in sample.
    status, _, stderr = run_main(monkeypatch, capsys, main, "chain", "validate", str(tmp_path / "cfg1"),
                                 "--forecast-from", "2", "--calibration", str(path), "--axes", "2", "--bootstrap",
                                 "0", "--no-decompose", "--no-plots", "--report", str(tmp_path / "again"))
    assert status == 0 and "cfg1: named as one of the calibration's training runs; if it is that run, its forecast " \
        "is in sample" in stderr
    skill = pd.read_csv(tmp_path / "r" / "skill.csv")
    assert set(skill["iteration"]) == {2, 3} and {"persistence", "trend"} <= set(skill["method"])


def test_calibration_bad_input_is_one_line_exit_2_and_writes_nothing(monkeypatch, capsys, tmp_path):
    from commands.chain_program import main

    path = fitted_calibration(tmp_path)
    run = make_run(tmp_path, "cfg3", cfg=3.0, shrink=0.8, reference=True, seed=3, n=12)
    other = make_run(tmp_path, "emoji", cfg=3.0, shrink=0.8, reference=True, seed=4, n=12)
    document = json.loads((other / "run.json").read_text())
    document["parameters"]["data"] = "emoji:32"
    (other / "run.json").write_text(json.dumps(document))
    unrecorded = read_calibration(path)
    unrecorded.provenance["validation"]["parameters"].pop("setup")
    old = write_calibration(tmp_path / "old.json", dataclasses.replace(unrecorded, source={}))
    fitted = read_calibration(path)
    unsloped = write_calibration(tmp_path / "unsloped.json", dataclasses.replace(
        fitted, parameters={**fitted.parameters, "selection_slope": None}, source={}))
    for target, flags, message in (
        (run, ["--calibration", str(path)], "--calibration gives the forecast its model; add --forecast-from K"),
        (run, ["--forecast-from", "2", "--calibration", str(tmp_path / "nope.json")], "does not exist"),
        (run, ["--forecast-from", "2", "--calibration", str(path), "--embedder", "clip"],
         "was fitted on stats traits, not clip; validate with --embedder stats"),
        (other, ["--forecast-from", "2", "--calibration", str(path)],
         "data 'emoji:32' differs from --calibration"),
        (run, ["--forecast-from", "2", "--calibration", "shipped"],
         "data None differs from the shipped calibration's runs' 'digits:500'"),
        (run, ["--forecast-from", "2", "--calibration", str(old)],
         "does not record the embedder and the runs it was fitted on"),
        (run, ["--forecast-from", "2", "--calibration", str(unsloped)],
         "has no selection slope; the forecast's shared model needs one"),
    ):
        status, _, stderr = run_main(monkeypatch, capsys, main, "chain", "validate", str(target), *flags,
                                     "--no-decompose", "--report", str(tmp_path / "r"))
        assert status == 2 and "Traceback" not in stderr, stderr
        assert len(stderr.strip().splitlines()) == 1 and message in stderr, stderr
    assert not (tmp_path / "r").exists()


def test_ship_calibration_adds_how_it_was_made_and_keeps_the_fit(tmp_path, capsys):
    path = fitted_calibration(tmp_path)
    load_tool("ship_calibration").main([str(path), "--made-by", "make it", "--warning", "in sample",
                                        "--out", str(tmp_path / "shipped.json")])
    fitted, shipped = read_calibration(path), read_calibration(tmp_path / "shipped.json")
    assert shipped.parameters == fitted.parameters and shipped.noise == fitted.noise
    assert shipped.provenance == {**fitted.provenance, "made_by": "make it", "warning": "in sample"}
    assert "shipped.json" in capsys.readouterr().out


def test_a_caption_that_collapses_totally_is_followed_until_its_collapse(tmp_path):
    """Identical images of one caption at iteration 4 (ln var has no value there): the fit and the forecast use that
    caption's iterations 0-3 and the other caption's all, a note says so, and the run-level score skips iteration 4
    (its quantity needs every caption, as the baselines' series does)."""
    run = collapsed_run(tmp_path, "cfg5", cfg=5.0, shrink=0.7, seed=2)
    messages = []
    result = validate_runs([run], report=tmp_path / "r", axes=2, bootstrap=0, forecast_from=3, decompose_runs=False,
                           plots=False, warn=messages.append)
    assert any("caption 'a dark square': no positive trait variance at iteration 4 (identical images: a total "
               "collapse" in message for message in messages), messages
    assert result["fit"] is not None and result["forecast"] is not None
    skill = pd.read_csv(tmp_path / "r" / "skill.csv", comment="#")
    run_level = skill[skill["caption"] == RUN_LEVEL]
    assert set(run_level["iteration"]) == {3}
    captions = skill[(skill["caption"] != RUN_LEVEL) & (skill["iteration"] == 4)]
    assert set(captions["caption"]) == {"a light square"}
    assert "total collapse" in (tmp_path / "r" / "report.md").read_text()


def test_a_held_out_run_that_collapses_totally_is_told_on_the_warning_channel(tmp_path):
    """``--predict`` follows a held-out caption up to its total collapse, as the fit does, and says so where the
    user reads (the command's stderr), not only in the report."""
    train = make_run(tmp_path, "cfg3", cfg=3.0, shrink=0.8, reference=True, seed=1, captions=TWO_CAPTIONS, n=24,
                     iterations=5)
    held_out = collapsed_run(tmp_path, "cfg5", cfg=5.0, shrink=0.7, seed=2)
    messages = []
    validate_runs([train], predict=[held_out], report=tmp_path / "r", axes=2, bootstrap=0, decompose_runs=False,
                  plots=False, warn=messages.append)
    assert any("cfg5" in message and "total collapse" in message for message in messages), messages


def test_a_calibration_fitted_with_filtered_states_forecasts_from_filtered_states(monkeypatch, capsys, tmp_path):
    """The calibration records its fit's states (validate.state_filter); the forecast starts alike, and a --states
    that differs is refused in one line."""
    from commands.chain_program import main

    path = fitted_calibration(tmp_path, states="filtered")
    assert read_calibration(path).provenance["states"] == "filtered"
    middle = make_run(tmp_path, "cfg3", cfg=3.0, shrink=0.8, reference=True, seed=3, captions=TWO_CAPTIONS, n=24)
    flags = ["--forecast-from", "2", "--calibration", str(path), "--axes", "2", "--bootstrap", "0", "--no-decompose",
             "--no-plots"]
    status, _, stderr = run_main(monkeypatch, capsys, main, "chain", "validate", str(middle), *flags, "--states",
                                 "measured", "--report", str(tmp_path / "refused"))
    assert status == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert "--states measured: the calibration was fitted with filtered states" in stderr
    assert not (tmp_path / "refused").exists()
    status, _, stderr = run_main(monkeypatch, capsys, main, "chain", "validate", str(middle), *flags,
                                 "--report", str(tmp_path / "r"))
    assert status == 0, stderr
    fit = json.loads((tmp_path / "r" / "fit.json").read_text())
    assert fit["forecast"]["states"] == "filtered"
