"""The calibrated model (issue 21): guidance gain and unconditional drift in the engines, the calibration file,
``qtm simulate --calibration`` and its default, and divergence reported as "diverges at t"."""

import hashlib
import json
import math

import numpy as np
import pandas as pd
import pytest
from test_cli_usage import error_lines, run_main

from commands import qtm_program as cli
from qtm.calibration import Calibration, read_calibration, shipped_calibration, write_calibration
from qtm.errors import QTMError
from qtm.io import read_provenance
from qtm.params import default_uncond_fidelity, effective_cfg
from qtm.recursion import ChainTrajectory, divergence_iteration, simulate_moments

OLD_GRID = dict(cond_mean=[1.0, 0.3], cond_var=[1.0, 0.6], uncond_mean=[0.0, 0.1], uncond_var=[1.5, 2.0],
                data_mean=[1.0, 0.2], data_var=[1.0, 0.5], cfg=[[0.1], [2.5]], drop=0.3, fidelity=0.7,
                var_fidelity=0.6, var_shift=0.1, finetune="continue", iterations=3, steps=8, real_fraction=0.1)
#: Each sampler of OLD_ENGINE with a schedule: the fused DDIM kernel, DDPM, a solver kernel, the operator path.
OLD_SAMPLERS = {"ddim": "cosine", "ddpm": "constant", "euler": "linear", "tilt": "constant"}
#: simulate_moments before guidance_gain and uncond_drift existed (commit ad74b16), on OLD_GRID: per sampler the
#: mean and the variance, shape (cfg 2, axes 2, iterations 3), flattened.
OLD_ENGINE = {
    "ddim": (
        [0.5249141011542255, 0.42884455995428117, 0.3828785468913976, 0.1669952450329839, 0.1469180761683215,
         0.13530536497296217, 1.4216839662885072, 1.6567550012384786, 1.8457627973194517, 0.2634789819227243,
         0.2746696278700991, 0.2807569403742406],
        [0.9061781539263649, 0.8877421340227528, 0.8697443589211922, 0.6103430448801217, 0.6189684661965741,
         0.6105298378811613, 0.6723145761413276, 0.5489944733645856, 0.46314521079319315, 0.207939223991574,
         0.12490430049717109, 0.08090625299558378],
    ),
    "ddpm": (
        [0.28966812566773975, 0.2687645623208592, 0.2715885689690574, 0.13278149018209945, 0.12676841694041777,
         0.12571831651652593, 1.864565565157169, 2.4712364544192402, 3.1236276984804636, 0.2835765474361689,
         0.2953302041295879, 0.30073072244786747],
        [0.8564855070466093, 0.8141827796488932, 0.7740060882876425, 0.8869702955406414, 0.8484242646058213,
         0.7968786349452014, 0.43923305901130877, 0.24117847951270197, 0.18058499266437036, 0.07925714105785772,
         0.009022248981084639, 0.0040576814137188374],
    ),
    "euler": (
        [0.5915053754240814, 0.503883111725539, 0.4619761655695229, 0.17942221207384654, 0.1630982742506554,
         0.15377459298872911, 1.4740594705804986, 1.7579348468411304, 2.002475552878734, 0.26973214410326984,
         0.28413541726457636, 0.2926596133949732],
        [0.8487517356133478, 0.806967442265056, 0.7693023108042146, 0.5606683226826958, 0.5475447933871047,
         0.5216410551966247, 0.6384390141119586, 0.5006351621854379, 0.40947649839665684, 0.19329958234989345,
         0.10302051724334868, 0.05624993847399266],
    ),
    "tilt": (
        [0.30971894265437255, 0.27876538644157567, 0.28169495736460104, 0.14616508936706057, 0.13431638372265167,
         0.13263093358821562, 1.6769955909180299, 2.2498304148757557, 3.0166579312976602, 0.2611196048287312,
         0.2754392738932733, 0.28718410740106903],
        [1.3950186759856427, 1.4664672569570285, 1.5244035201644153, 1.3722837796406662, 1.5106137599066782,
         1.577793175071707, 0.8209017033052184, 0.806432887296609, 0.9009408936023336, 0.30563588805341485,
         0.23503678283904805, 0.18672752333374723],
    ),
}

DOCUMENT = {
    "format": "chain-of-diffusion calibration",
    "version": 4,
    "parameters": {"fidelity": 0.7, "uncond_drift": 0.2, "var_fidelity": 0.6, "var_shift": 0.1,
                   "guidance_gain": 0.4, "selection_slope": -0.1, "sampler": "ddim", "steps": 12},
    "model": {"cond_mean": [0.5, -0.2], "cond_var": [0.8, 0.3], "uncond_mean": [0.0, 0.1], "uncond_var": [1.2, 0.9],
              "data_mean": [0.4, -0.1], "data_var": [0.7, 0.35]},
    "noise": {"process_sd_mean": 0.05, "process_sd_log_var": 0.3, "process_sd_common_mean": 0.03,
              "process_sd_common_log_var": 0.2},
    "standard_errors": {"fidelity": 0.02, "guidance_gain": None},
    "provenance": {"fit": "test", "runs": ["a", "b"]},
}


#: What a file older than version 4 lacks: the run-level part of the process noise.
WITHOUT_COMMON_NOISE = {"noise.process_sd_common_mean": None, "noise.process_sd_common_log_var": None}


def calibration_file(folder, **changes):
    """DOCUMENT with ``changes`` ("section.key": value, or a section; None deletes) written to folder/c.json."""
    document = json.loads(json.dumps(DOCUMENT))
    for where, value in changes.items():
        section, _, key = where.partition(".")
        target, name = (document[section], key) if key else (document, section)
        if value is None:
            del target[name]
        else:
            target[name] = value
    path = folder / "c.json"
    path.write_text(json.dumps(document))
    return path


def simulate(monkeypatch, capsys, *args):
    return run_main(monkeypatch, capsys, cli.main, "qtm", "simulate", *args)


# ------------------------------------------------------------------------------------------- the engines


# The Euler cases are the suite's first to compile the moments engine's solver kernel (15 s): on one worker, the
# second loads it from the cache instead of compiling it again beside the first.
SOLVER_KERNEL = pytest.mark.xdist_group("solver-kernel")


@SOLVER_KERNEL
@pytest.mark.parametrize("sampler", OLD_SAMPLERS)
def test_default_gain_and_drift_are_the_old_engine_bit_for_bit(sampler):
    expected = [np.reshape(values, (2, 2, 3)) for values in OLD_ENGINE[sampler]]
    grid = dict(OLD_GRID, sampler=sampler, schedule=OLD_SAMPLERS[sampler])
    for options in ({}, {"guidance_gain": 1.0, "uncond_drift": 0.0}):
        traj = simulate_moments(**grid, **options)
        assert np.array_equal(traj.mean, expected[0]) and np.array_equal(traj.var, expected[1])


@SOLVER_KERNEL
@pytest.mark.parametrize(("sampler", "schedule"), [("ddim", "cosine"), ("euler", "linear"), ("tilt", "constant"),
                                                   ("ode", "constant")])
def test_guidance_gain_guides_with_one_plus_g_times_cfg_minus_one(sampler, schedule):
    cfg, gain = np.array([1.0, 2.0, 4.0]), 0.6
    common = dict(OLD_GRID, cfg=cfg[:, None], sampler=sampler, schedule=schedule)
    gained = simulate_moments(**common, guidance_gain=gain)
    mapped = simulate_moments(**dict(common, cfg=(1 + gain * (cfg - 1))[:, None]))
    np.testing.assert_allclose(gained.mean, mapped.mean, rtol=1e-12)
    np.testing.assert_allclose(gained.var, mapped.var, rtol=1e-12)
    plain = simulate_moments(**common)
    assert np.array_equal(gained.var[0], plain.var[0])  # CFG 1 stays unguided whatever g
    assert not np.allclose(gained.var[1:], plain.var[1:])


@pytest.mark.parametrize("schedule", ["constant", "cosine", "interval:0.5:20"])
def test_selection_slope_makes_ln_var_linear_in_the_schedules_mean_log_scale(schedule):
    """With a slope beta the generated variance is the finetuned model's times exp(beta mean(ln w_t)) and the mean is
    the sampler's law's, iterated here by hand with the operators; NaN entries keep the sampler's law (through the
    operators, where the fused kernel gave it: equal to rounding)."""
    from qtm.gaussian import inherit
    from qtm.sampler_map import prepare_sampler

    cfg, gain, slope, rho_u = np.array([1.0, 3.0, 7.5]), 0.3, -0.12, 0.2 + 0.3 * 0.7
    common = dict(OLD_GRID, cfg=cfg[:, None], finetune="base", real_fraction=0.0, schedule=schedule,
                  guidance_gain=gain, uncond_drift=0.2)
    sloped = simulate_moments(**common, selection_slope=slope)
    prepared = prepare_sampler("ddim", cfg=1.0, schedule=schedule, steps=OLD_GRID["steps"])
    log_scale = prepared.at(cfg[:, None]).mean_log_scales
    if schedule == "constant":
        np.testing.assert_allclose(log_scale, np.log(cfg)[:, None], rtol=1e-12)
    share = min(1.0, rho_u / 0.7)
    base_c = (np.array(OLD_GRID["cond_mean"]), np.array(OLD_GRID["cond_var"]))
    base_u = (np.array(OLD_GRID["uncond_mean"]), np.array(OLD_GRID["uncond_var"]))
    data = (np.array(OLD_GRID["data_mean"]), np.array(OLD_GRID["data_var"]))
    data = tuple(np.broadcast_to(x, (3, 2)) for x in data)
    for t in range(OLD_GRID["iterations"]):
        cond = inherit(*base_c, *data, fidelity=0.7, var_fidelity=0.6, var_shift=0.1)
        uncond = inherit(*base_u, *data, fidelity=rho_u, var_fidelity=share * 0.6, var_shift=share * 0.1)
        mean = prepared.at((1 + gain * (cfg - 1))[:, None]).moments(*cond, *uncond).mean
        var = cond[1] * np.exp(slope * log_scale)
        np.testing.assert_allclose(sloped.mean[..., t], mean, rtol=1e-12)
        np.testing.assert_allclose(sloped.var[..., t], var, rtol=1e-12)
        data = (mean, var)
    plain = simulate_moments(**common)
    mixed = simulate_moments(**common, selection_slope=np.array([[np.nan], [slope], [slope]]))
    np.testing.assert_allclose(mixed.var[0], plain.var[0], rtol=1e-12)
    assert np.array_equal(mixed.var[1:], sloped.var[1:])
    with pytest.raises(QTMError, match="selection_slope must be finite"):
        simulate_moments(**common, selection_slope=np.inf)
    # ln 0: a slope cannot select at a scale of 0; the same point without a slope runs.
    with pytest.raises(QTMError, match="schedule 'cosine:0' reaches a scale of 0"):
        simulate_moments(**dict(common, schedule="cosine:0"), selection_slope=slope)
    zero = dict(common, cfg=np.array([[0.0], [3.0], [7.5]]))
    with pytest.raises(QTMError, match="give cfg > 0 and a schedule that ends above 0"):
        simulate_moments(**zero, selection_slope=slope)
    unsloped_zero = simulate_moments(**zero, selection_slope=np.array([[np.nan], [slope], [slope]]))
    assert np.array_equal(unsloped_zero.var[1:], sloped.var[1:])


def test_effective_cfg_is_exact_at_unit_gain():
    cfg = np.array([0.0, 0.1, 1.0, 1.3, 7.5, 1e6])
    assert np.array_equal(effective_cfg(cfg, 1.0), cfg)
    np.testing.assert_allclose(effective_cfg(cfg, 0.25), 1 + 0.25 * (cfg - 1), rtol=1e-15)


def test_uncond_drift_moves_the_default_uncond_fidelity_only():
    drop, fidelity = np.array([[0.0], [0.3], [1.0]]), 0.9
    for drift in (0.0, 0.2, 0.6):
        expected = np.minimum(1.0, drift + drop * fidelity)
        np.testing.assert_array_equal(default_uncond_fidelity(drop, fidelity, drift), expected)
        common = dict(OLD_GRID, cfg=3.0, drop=drop, fidelity=fidelity)
        np.testing.assert_array_equal(simulate_moments(**common, uncond_drift=drift).var,
                                      simulate_moments(**common, uncond_fidelity=expected).var)
    assert float(default_uncond_fidelity(1.0, 0.9, 0.6)) == 1.0  # capped
    # A given uncond_fidelity wins over the drift; NaN entries take the drift's default.
    given = simulate_moments(**dict(OLD_GRID, cfg=3.0), uncond_fidelity=[0.25, np.nan], uncond_drift=0.5)
    expected = simulate_moments(**dict(OLD_GRID, cfg=3.0), uncond_fidelity=[0.25, min(1.0, 0.5 + 0.3 * 0.7)])
    np.testing.assert_array_equal(given.var, expected.var)
    with pytest.raises(QTMError, match="uncond_drift must lie in"):
        simulate_moments(**OLD_GRID, uncond_drift=1.5)
    with pytest.raises(QTMError, match="guidance_gain must be >= 0"):
        simulate_moments(**OLD_GRID, guidance_gain=-0.1)


def test_particle_sweep_honours_gain_and_drift(tmp_path):
    """A gain g at CFG 3 is CFG 1 + 2g, and a drift a at drop 0 is uncond_fidelity a, replicate for replicate."""
    from qtm.particles.sweep import simulate_particles

    options = {"population": 30, "replicates": 2, "seed": 4, "uncond_var": 2.0}
    base = {"iterations": [2], "steps": [6], "drop": [0.0], "fidelity": [0.8]}
    tables = {}
    for name, point in {"model": {"cfg": [3.0], "guidance_gain": [0.5], "uncond_drift": [0.25]},
                        "explicit": {"cfg": [2.0], "uncond_fidelity": [0.25]},
                        "plain": {"cfg": [3.0]}}.items():
        path = simulate_particles(pd.DataFrame({**base, **point}), options=options, out=tmp_path / f"{name}.csv",
                                  calibration={"path": "c.json"} if name == "model" else None)
        tables[name] = pd.read_csv(path)
    np.testing.assert_array_equal(tables["model"]["var"], tables["explicit"]["var"])
    assert not np.array_equal(tables["model"]["var"], tables["plain"]["var"])
    assert set(tables["model"]["cfg"]) == {3.0}  # the table keeps the real CFG scale
    assert read_provenance(tmp_path / "model.csv")["parameters"]["calibration"] == {"path": "c.json"}


# ------------------------------------------------------------------------------------------- divergence


def test_divergence_iteration_rule():
    data_mean, data_var = np.array([1.0, 1.0, 1.0, 1.0, 1.0]), np.array([4.0, 4.0, 4.0, 4.0, 4.0])
    mean = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0 + 2e6], [1.0, 1.0 + 2.1e6], [1.0, np.nan]])
    var = np.array([[4.0, 4e6], [4.0, 4.1e6], [4.0, 4.0], [4.0, 4.0], [4.0, 4.0]])
    first = divergence_iteration(ChainTrajectory(mean, var, data_mean, data_var))
    assert first.tolist() == [-1, 1, -1, 1, 1]  # at the bound is not beyond it; the mean's bound is in SDs


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_an_overflowing_point_diverges_and_keeps_its_rows(monkeypatch, capsys, tmp_path, suffix):
    calibration = calibration_file(tmp_path, **{"parameters.guidance_gain": 1e150})
    out = tmp_path / f"s{suffix}"
    status, stdout, stderr = simulate(monkeypatch, capsys, "--calibration", str(calibration), "--cfg", "1,3",
                                      "--schedule", "constant", "--drop", "0", "--iterations", "3", "--out", str(out))
    assert status == 0, stderr
    assert "diverges at 0" in stdout and "never" in stdout
    table = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)
    assert len(table) == 2 * 3 * 2
    assert set(table[table.cfg == 3.0]["diverged_at"]) == {0} and set(table[table.cfg == 1.0]["diverged_at"]) == {-1}
    assert not np.isfinite(table[table.cfg == 3.0]["var"]).all() and np.isfinite(table[table.cfg == 1.0]["var"]).all()


def test_an_overflowing_cfg_diverges_at_once(monkeypatch, capsys, tmp_path):
    """CFG 1e308 was a bad-input error (the moments overflowed); it is a point that diverges at iteration 0."""
    out = tmp_path / "s.csv"
    status, stdout, _ = simulate(monkeypatch, capsys, "--cfg", "1e308", "--schedule", "constant", "--drop", "0",
                                 "--iterations", "2", "--out", str(out))
    assert status == 0 and "diverges at 0" in stdout and set(pd.read_csv(out)["diverged_at"]) == {0}


def test_growth_beyond_a_million_times_the_data_is_divergence_not_never(monkeypatch, capsys, tmp_path):
    """The issue's example: CFG 7.5 with CFG 1's fitted inheritance grew to 1e13 x the data's variance."""
    out = tmp_path / "s.parquet"
    status, stdout, _ = simulate(monkeypatch, capsys, "--calibration", "none", "--cfg", "1,7.5", "--var-shift",
                                 "0.58", "--var-fidelity", "0.82", "--iterations", "6", "--schedule", "constant",
                                 "--drop", "0", "--out", str(out))
    assert status == 0
    table = pd.read_parquet(out)
    row = next(line for line in stdout.splitlines() if "7.5" in line)
    first = int(table[table.cfg == 7.5]["diverged_at"].iloc[0])
    assert first > 0 and f"diverges at {first}" in row and "never" not in row
    last = table[(table.cfg == 7.5) & (table.iteration == first)]
    assert (last["var"] > 1e6).all() or (last["mean"].abs() > 1e6).all()
    assert set(table[table.cfg == 1.0]["diverged_at"]) == {-1}


# ------------------------------------------------------------------------------------------- the file


def test_write_then_read_gives_the_same_calibration(tmp_path):
    calibration = read_calibration(calibration_file(tmp_path))
    again = read_calibration(write_calibration(tmp_path / "again.json",
                                               Calibration(**{**vars(calibration), "source": {}})))
    for name in ("parameters", "noise", "standard_errors", "provenance"):
        assert getattr(again, name) == getattr(calibration, name) == DOCUMENT[name]
    for name, values in DOCUMENT["model"].items():
        assert again.model[name].tolist() == calibration.model[name].tolist() == values
    assert again.source["sha256"] == hashlib.sha256((tmp_path / "again.json").read_bytes()).hexdigest()
    options = again.options()
    assert options["guidance_gain"] == 0.4 and options["steps"] == 12 and options["cond_var"] == [0.8, 0.3]
    assert set(options) == {*DOCUMENT["parameters"], *DOCUMENT["model"]}


def test_a_version_1_file_reads_with_the_samplers_law_for_the_variance(tmp_path):
    """Version 1 had no selection slope: its files still read, the slope null (the sampler's law, as they meant)."""
    path = calibration_file(tmp_path, **{"version": 1, "parameters.selection_slope": None, **WITHOUT_COMMON_NOISE})
    calibration = read_calibration(path)
    assert calibration.parameters["selection_slope"] is None
    assert {k: v for k, v in calibration.parameters.items() if k != "selection_slope"} == {
        k: v for k, v in DOCUMENT["parameters"].items() if k != "selection_slope"}


def test_a_version_2_file_without_a_slope_reads(tmp_path):
    """Version 2's slope meant another form (per unit of the mean scale): only its files without one still read."""
    path = calibration_file(tmp_path, **{"version": 2, "parameters.selection_slope": None, **WITHOUT_COMMON_NOISE})
    path.write_text(path.read_text().replace('"steps": 12}', '"steps": 12, "selection_slope": null}'))
    assert read_calibration(path).parameters["selection_slope"] is None


def test_a_version_3_file_reads_without_the_run_level_noise(tmp_path):
    """Version 4 added the run-level part of the process noise, optional: a version-3 file is read without it."""
    calibration = read_calibration(calibration_file(tmp_path, **{"version": 3, **WITHOUT_COMMON_NOISE}))
    assert calibration.noise == {"process_sd_mean": 0.05, "process_sd_log_var": 0.3}


def test_an_infinite_standard_error_is_written_as_null(tmp_path):
    calibration = read_calibration(calibration_file(tmp_path))
    path = write_calibration(tmp_path / "inf.json", Calibration(
        calibration.parameters, calibration.model, calibration.noise, {"fidelity": math.inf}, {}))
    assert json.loads(path.read_text())["standard_errors"] == {"fidelity": None}


def test_writing_a_bad_calibration_writes_nothing(tmp_path):
    calibration = read_calibration(calibration_file(tmp_path))
    bad = Calibration({**calibration.parameters, "fidelity": 1.5}, calibration.model, calibration.noise)
    with pytest.raises(QTMError, match=r"parameters\.fidelity must lie in \[0, 1\]"):
        write_calibration(tmp_path / "bad.json", bad)
    assert not (tmp_path / "bad.json").exists()


BAD_FILES = {
    "missing file": ({"__path__": "nope.json"}, "does not exist"),
    "not JSON": ({"__text__": "{fidelity: 0.8"}, "is not JSON"),
    "a JSON list": ({"__text__": "[1, 2]"}, "is not a calibration"),
    "another format": ({"format": "something else"}, "is not a calibration"),
    "a newer version": ({"version": 5}, "written by a newer version of the toolkit; upgrade"),
    "version 4 without the selection slope": ({"parameters.selection_slope": None}, "lacks parameters.selection_slope"),
    "version 3 with the run-level noise": ({"version": 3}, "unknown noise.process_sd_common_log_var"),
    "a run-level noise above the whole": ({"noise.process_sd_common_log_var": 0.4},
                                          "noise.process_sd_common_log_var (0.4) exceeds noise.process_sd_log_var"),
    "version 2 with a slope in the mean scale": ({"version": 2, **WITHOUT_COMMON_NOISE},
                                                 "format version 2, whose selection slope is per unit of the "
                                                 "schedule's mean scale"),
    "no version": ({"version": None}, "no valid format version"),
    "a missing section": ({"noise": None}, 'lacks "noise"'),
    "a missing parameter": ({"parameters.steps": None}, "lacks parameters.steps"),
    "an unknown parameter": ({"parameters.cfg": 3.0}, "unknown parameters.cfg"),
    "a missing model list": ({"model.data_var": None}, "lacks model.data_var"),
    "model lists of different lengths": ({"model.cond_var": [0.8, 0.3, 0.2]}, "differ in length"),
    "an empty model list": ({"model.cond_mean": []}, "non-empty list of numbers"),
    "a non-finite parameter": ({"__text__": json.dumps(DOCUMENT).replace('"var_shift": 0.1', '"var_shift": NaN')},
                               "parameters.var_shift must be finite"),
    "a non-finite model value": ({"__text__": json.dumps(DOCUMENT).replace("0.7, 0.35", "0.7, Infinity")},
                                 "model.data_var must be finite"),
    "a variance of zero": ({"model.uncond_var": [1.2, 0.0]}, "model.uncond_var must be > 0"),
    "a fidelity out of range": ({"parameters.fidelity": 1.5}, "parameters.fidelity must lie in [0, 1]"),
    "a negative guidance gain": ({"parameters.guidance_gain": -1}, "parameters.guidance_gain must be >= 0"),
    "a number as text": ({"parameters.fidelity": "0.7"}, "parameters.fidelity must be a number"),
    "fractional steps": ({"parameters.steps": 2.5}, "parameters.steps must be a whole number"),
    "an unknown sampler": ({"parameters.sampler": "rk4"}, "unknown parameters.sampler 'rk4'"),
    "negative process noise": ({"noise.process_sd_log_var": -0.1}, "noise.process_sd_log_var must be a finite"),
    "a negative standard error": ({"standard_errors.fidelity": -1}, "standard_errors.fidelity must be a number"),
    "provenance not an object": ({"provenance": "digits"}, 'has no JSON object as "provenance"'),
}


@pytest.mark.parametrize(("changes", "message"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_a_bad_calibration_is_one_line_exit_2_and_writes_nothing(monkeypatch, capsys, tmp_path, changes, message):
    changes = dict(changes)
    if "__path__" in changes:
        path = tmp_path / changes["__path__"]
    elif "__text__" in changes:
        path = tmp_path / "c.json"
        path.write_text(changes["__text__"])
    else:
        path = calibration_file(tmp_path, **changes)
    before = sorted(tmp_path.iterdir())
    status, _, stderr = simulate(monkeypatch, capsys, "--calibration", str(path), "--out", str(tmp_path / "s.csv"))
    assert status == 2 and "Traceback" not in stderr
    assert len(stderr.splitlines()) == 1 and len(error_lines(stderr)) == 1, stderr
    assert stderr.startswith(f"qtm: error: --calibration '{path}'") and message in stderr, stderr
    assert sorted(tmp_path.iterdir()) == before


# ------------------------------------------------------------------------------------------- qtm simulate


def test_a_calibration_sets_the_sweep_and_its_provenance(monkeypatch, capsys, tmp_path):
    path = calibration_file(tmp_path)
    out = tmp_path / "s.parquet"
    status, stdout, _ = simulate(monkeypatch, capsys, "--calibration", str(path), "--cfg", "1,4", "--schedule",
                                 "cosine", "--drop", "0.2", "--iterations", "3", "--out", str(out))
    assert status == 0 and f"calibration: {path}" in stdout
    table = pd.read_parquet(out)
    assert sorted(set(table.cfg)) == [1.0, 4.0]  # the real CFG scales
    assert set(table.guidance_gain) == {0.4} and set(table.fidelity) == {0.7} and set(table.steps) == {12}
    assert set(table.axis) == {0, 1}
    record = read_provenance(out)["parameters"]["calibration"]
    assert record == {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                      "provenance": DOCUMENT["provenance"]}
    expected = simulate_moments(**{k: np.array(v)[None, :] for k, v in DOCUMENT["model"].items()},
                                cfg=np.array([[1.0], [4.0]]), schedule="cosine", drop=0.2,
                                **{k: v for k, v in DOCUMENT["parameters"].items()}, iterations=3)
    rows = table.sort_values(["cfg", "axis", "iteration"])
    np.testing.assert_array_equal(rows["var"].to_numpy(), expected.var.ravel())
    np.testing.assert_array_equal(rows["mean"].to_numpy(), expected.mean.ravel())


def test_config_and_command_line_override_the_calibration(monkeypatch, capsys, tmp_path):
    path = calibration_file(tmp_path)
    config = tmp_path / "c.toml"
    config.write_text("fidelity = 0.6\nguidance-gain = 0.9\niterations = 2\n")
    out = tmp_path / "s.parquet"
    status, _, _ = simulate(monkeypatch, capsys, "--calibration", str(path), "--config", str(config),
                            "--fidelity", "0.5", "--cfg", "3", "--out", str(out))
    assert status == 0
    table = pd.read_parquet(out)
    assert set(table.fidelity) == {0.5} and set(table.guidance_gain) == {0.9}  # command line, then config
    assert set(table.steps) == {12} and set(table.uncond_drift) == {0.2}  # the calibration's, not overridden
    assert set(table.schedule) == {"constant", "cosine"} and set(table["drop"]) == {0.0, 0.2}  # the default grid


def test_no_calibration_is_the_reference_setup(monkeypatch, capsys, tmp_path):
    out = tmp_path / "s.parquet"
    status, stdout, _ = simulate(monkeypatch, capsys, "--calibration", "none", "--iterations", "2", "--out", str(out))
    assert status == 0 and "calibration: none" in stdout
    table = pd.read_parquet(out)
    assert set(table.fidelity) == {0.5} and set(table.guidance_gain) == {1.0} and set(table.uncond_drift) == {0.0}
    assert set(table.axis) == {0} and set(table.steps) == {50}
    assert "calibration" not in read_provenance(out)["parameters"]


def test_the_default_sweep_uses_the_shipped_calibration(monkeypatch, capsys, tmp_path):
    shipped = shipped_calibration()
    assert shipped.provenance == json.loads(open(shipped.source["path"]).read())["provenance"]
    out = tmp_path / "s.parquet"
    status, stdout, _ = simulate(monkeypatch, capsys, "--out", str(out))
    assert status == 0 and "calibration: " in stdout and "calibration_digits.json" in stdout
    assert ("calibration warning: " in stdout) == bool(shipped.provenance.get("warning"))
    table = pd.read_parquet(out)
    assert sorted(set(table.cfg)) == [1.0, 3.0, 7.5] and set(table["drop"]) == {0.0, 0.2}
    assert set(table.schedule) == {"constant", "cosine"} and len(set(table.iteration)) == 10
    assert set(table.fidelity) == {shipped.parameters["fidelity"]}
    assert set(table.guidance_gain) == {shipped.parameters["guidance_gain"]}
    assert set(table.axis) == set(range(len(shipped.model["data_mean"])))
    record = read_provenance(out)["parameters"]["calibration"]
    assert record["sha256"] == shipped.source["sha256"] and record["provenance"] == shipped.provenance
    # Both failure modes of the digits chains, in sign and order of magnitude (docs/study.md: their run-level
    # variance at iteration 5 is 16-19 times the real data's at CFG 1 and 0.13-0.5 times at CFG 7.5; the fit on all
    # 64 chains gives 12-27 and 0.23-0.51 times), and at CFG 7.5 the narrowing goes on after iteration 5.
    def ratio(iteration):
        plain = table[(table.schedule == "constant") & (table["drop"] == 0.0) & (table.iteration == iteration)]
        return plain.set_index(["cfg", "axis"])["var"] / np.asarray(shipped.model["data_var"])[plain.axis.to_numpy()]

    at_5, at_9 = ratio(5), ratio(9)
    assert (at_5[1.0] > 5).all() and (at_5[1.0] < 50).all()
    assert (at_5[7.5] > 0.02).all() and (at_5[7.5] < 1).all() and (at_9[7.5] < at_5[7.5]).all()


def test_dims_that_disagree_with_the_calibration_is_one_line(monkeypatch, capsys, tmp_path):
    status, _, stderr = simulate(monkeypatch, capsys, "--calibration", str(calibration_file(tmp_path)), "--engine",
                                 "particles", "--dims", "3", "--out", str(tmp_path / "s.csv"))
    assert status == 2 and "--dims 3 differs from the model's 2 trait axes" in stderr
    assert not (tmp_path / "s.csv").exists()


def test_the_particle_engine_refuses_a_selection_slope_in_one_line(monkeypatch, capsys, tmp_path):
    status, _, stderr = simulate(monkeypatch, capsys, "--calibration", str(calibration_file(tmp_path)), "--engine",
                                 "particles", "--out", str(tmp_path / "s.csv"))
    assert status == 2 and len(error_lines(stderr)) == 1 and "has no particle form; use --engine moments" in stderr
    assert "--calibration none" in stderr and not (tmp_path / "s.csv").exists()
    status, _, stderr = simulate(monkeypatch, capsys, "--calibration", "none", "--engine", "particles",
                                 "--selection-slope", "-0.1", "--out", str(tmp_path / "s.csv"))
    assert status == 2 and len(error_lines(stderr)) == 1 and "or no --selection-slope" in stderr
    assert not (tmp_path / "s.csv").exists()


def test_a_sweep_without_guidance_says_its_settings_change_nothing(monkeypatch, capsys, tmp_path):
    """A fit can find guidance gain 0 (the emoji chains' EfficientNet fit did): every CFG, schedule and drop then
    gives the same path, which the summary says rather than leaving twelve identical rows to be read as a result."""
    path = calibration_file(tmp_path, **{"parameters.guidance_gain": 0.0, "parameters.selection_slope": 0.0})
    out = tmp_path / "s.parquet"
    status, stdout, _ = simulate(monkeypatch, capsys, "--calibration", str(path), "--iterations", "2",
                                 "--out", str(out))
    assert status == 0 and "note: guidance gain 0" in stdout
    table = pd.read_parquet(out)
    last = table[table.iteration == 1].pivot_table(index=["cfg", "schedule", "drop"], columns="axis", values="var")
    np.testing.assert_allclose(last.to_numpy(), np.broadcast_to(last.to_numpy()[:1], last.shape), rtol=1e-12)
    status, stdout, _ = simulate(monkeypatch, capsys, "--calibration", str(path), "--guidance-gain", "0.5",
                                 "--iterations", "2", "--out", str(out))
    assert status == 0 and "note: guidance gain 0" not in stdout
    # A selection slope lets CFG change the variance without any guidance of the mean.
    sloped = calibration_file(tmp_path, **{"parameters.guidance_gain": 0.0})
    status, stdout, _ = simulate(monkeypatch, capsys, "--calibration", str(sloped), "--iterations", "2",
                                 "--out", str(out))
    assert status == 0 and "note: guidance gain 0" not in stdout
