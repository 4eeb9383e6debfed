"""``qtm map`` and ``qtm simulate``: outputs, config override, the particle hand-off and one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from commands import qtm_program as cli
from qtm.io import read_provenance
from qtm.recursion import simulate_moments
from qtm.sampler_map import guided_moments


def run_qtm(monkeypatch, capsys, *args):
    """Run the real entry point in-process; return (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["qtm", *args])
    monkeypatch.setenv("COLUMNS", "200")
    try:
        cli.main()
        status = 0
    except SystemExit as done:
        status = done.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_uncalibrated_default_sweep_shows_collapse_and_redifine(monkeypatch, capsys, tmp_path):
    out = tmp_path / "sweep.parquet"
    status, stdout, _ = run_qtm(monkeypatch, capsys, "simulate", "--calibration", "none", "--out", str(out))
    assert status == 0
    table = pd.read_parquet(out)
    assert list(table.columns) == [
        "cfg", "schedule", "drop", "fidelity", "uncond_fidelity", "iterations", "finetune", "real_fraction",
        "sampler", "steps", "eta", "mutation", "var_fidelity", "var_shift", "process_noise", "uncond_drift",
        "guidance_gain", "selection_slope", "data_workflow", "iteration", "axis", "mean", "var", "diverged_at",
    ]
    assert len(table) == 3 * 2 * 2 * 10
    final = table[table.iteration == 9].set_index(["cfg", "schedule", "drop"])["var"]
    # Collapse at the reference setting, and each part of ReDiFine keeps more variance.
    assert final[(7.5, "constant", 0.0)] < 1e-3
    assert final[(7.5, "constant", 0.0)] < final[(7.5, "constant", 0.2)] < final[(7.5, "cosine", 0.2)]
    assert final[(1.0, "constant", 0.0)] > 0.5
    assert read_provenance(out)["parameters"]["engine"] == "moments"
    assert "collapse at" in stdout and "never" in stdout and "wrote 120 rows" in stdout
    assert "calibration: none" in stdout and (table.diverged_at == -1).all()
    assert "calibration" not in read_provenance(out)["parameters"]


def test_table_rows_are_the_recursion(monkeypatch, capsys, tmp_path):
    """Two trait axes and two iteration counts: each point keeps its own number of iterations."""
    out = tmp_path / "sweep.csv"
    status, _, _ = run_qtm(
        monkeypatch, capsys, "simulate", "--calibration", "none", "--cfg", "2:4:2", "--schedule", "cutoff:0.5",
        "--drop", "0.3",
        "--iterations", "2,3", "--cond-mean", "1,-1", "--data-mean", "1,-1", "--finetune", "continue",
        "--steps", "20", "--real-fraction", "0.1", "--mutation", "0.01", "--out", str(out),
    )  # fmt: skip
    assert status == 0
    table = pd.read_csv(out)
    assert len(table) == 2 * (2 + 3) * 2
    assert (tmp_path / "sweep.provenance.json").exists()
    traj = simulate_moments(cond_mean=-1.0, cond_var=1.0, uncond_mean=0.0, uncond_var=1.5, data_mean=-1.0,
                            data_var=1.0, cfg=4.0, schedule="cutoff:0.5", drop=0.3, fidelity=0.5,
                            finetune="continue", iterations=3, steps=20, real_fraction=0.1, mutation=0.01)
    rows = table[(table.cfg == 4.0) & (table.iterations == 3) & (table.axis == 1)].sort_values("iteration")
    np.testing.assert_allclose(rows["mean"], traj.mean, rtol=1e-12)
    np.testing.assert_allclose(rows["var"], traj.var, rtol=1e-12)


def test_command_line_overrides_config(monkeypatch, capsys, tmp_path):
    config = tmp_path / "sweep.toml"
    config.write_text('cfg = [2, 4]\niterations = 3\nschedule = "constant"\ndrop = 0\nsteps = 10\n'
                      'out = "from-config.parquet"\n')
    out = tmp_path / "cli.parquet"
    status, _, _ = run_qtm(monkeypatch, capsys, "simulate", "--config", str(config), "--cfg", "5",
                           "--out", str(out))
    assert status == 0
    table = pd.read_parquet(out)
    assert set(table.cfg) == {5.0} and set(table.iteration) == {0, 1, 2} and set(table.steps) == {10}


def test_particle_engine_gets_the_grid_and_options(monkeypatch, capsys, tmp_path):
    import qtm.particles.sweep as sweep
    from qtm.io import write_table

    calls = {}

    def fake(points, *, options, out, progress, calibration):
        calls.update(points=points, options=options, calibration=calibration)
        progress(len(points), len(points))
        rows = points.loc[points.index.repeat(2)].reset_index(drop=True)
        rows = rows.assign(replicate=[0, 1] * len(points), iteration=0, axis=0, mean=1.0, var=0.5)
        write_table(rows, out, provenance={"parameters": {"options": options}})
        return out

    monkeypatch.setattr(sweep, "simulate_particles", fake)
    out = tmp_path / "particles.parquet"
    status, stdout, _ = run_qtm(
        monkeypatch, capsys, "simulate", "--calibration", "none", "--engine", "particles", "--cfg", "1,7.5",
        "--schedule", "cosine",
        "--drop", "0.2", "--iterations", "1", "--population", "64", "--replicates", "2", "--seed", "3",
        "--dims", "2", "--modes", "1", "--particle-model", "sampler", "--cond-mean", "1,2", "--out", str(out),
    )  # fmt: skip
    assert status == 0
    assert calls["points"]["cfg"].tolist() == [1.0, 7.5]
    assert calls["points"]["schedule"].tolist() == ["cosine", "cosine"]
    options = calls["options"]
    assert options["population"] == 64 and options["replicates"] == 2 and options["seed"] == 3
    assert options["dims"] == 2 and options["particle_model"] == "sampler" and "cluster" not in options
    assert options["cond_mean"] == [1.0, 2.0] and options["data_var"] == [1.0, 1.0]
    assert "particles" in stdout and "0.5" in stdout and calls["calibration"] is None
    # Without --calibration the particle engine sweeps uncalibrated, since the shipped calibration has a selection
    # slope it has no form of, and says so (an explicit sloped calibration is refused: test_calibration.py).
    status, stdout, _ = run_qtm(monkeypatch, capsys, "simulate", "--engine", "particles", "--cfg", "1", "--iterations",
                                "1", "--population", "64", "--replicates", "2", "--out", str(out))
    assert status == 0 and calls["calibration"] is None
    assert "calibration: none" in stdout and "the particle engine has no form of" in " ".join(stdout.split())


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--cond-var", "-1"], "--cond-var must be > 0"),
        (["--data-var", "1,-2", "--cond-mean", "0,0"], "--data-var must be > 0"),
        (["--fidelity", "0.5,1.5"], "fidelity must lie in [0, 1]"),
        (["--schedule", "constant,wobbly"], "unknown CFG schedule 'wobbly'"),
        (["--cfg", "1:5:0"], "step 0"),
        (["--sampler", "tilt", "--cond-var", "10", "--uncond-var", "1", "--data-var", "10", "--fidelity", "0"],
         "precision"),
        (["--out", "table.txt"], "--out must end in .parquet or .csv"),
        (["--engine", "quantum"], "unknown --engine"),
        (["--replicates", "5"], "--replicates applies to --engine particles only"),
        (["--population", "1"], "--population must be >= 2"),
        (["--cfg", "0:1e308:1"], "more than 1e+06"),
        (["--cfg", "1,,2"], "empty item"),
        (["--iterations", "2.5"], "--iterations must be whole numbers"),
    ],
)
def test_simulate_bad_input_is_one_line_and_writes_nothing(monkeypatch, capsys, tmp_path, args, pattern):
    monkeypatch.chdir(tmp_path)
    if "--out" not in args:
        args = [*args, "--out", "sweep.parquet"]
    status, _, stderr = run_qtm(monkeypatch, capsys, "simulate", "--calibration", "none", "--steps", "5", *args)
    assert status == 2
    assert stderr.startswith("qtm: error: ") and stderr.count("\n") == 1, stderr
    assert pattern in stderr
    assert list(tmp_path.iterdir()) == []


def test_bad_config_file_is_one_line(monkeypatch, capsys, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("colour = 'red'\n")
    status, _, stderr = run_qtm(monkeypatch, capsys, "simulate", "--config", str(config))
    assert status == 2 and "unknown option 'colour'" in stderr


def test_real_exit_status_and_no_traceback(tmp_path):
    """The console script as a user runs it (a subprocess): exit 2, one line, no traceback, no file."""
    out = tmp_path / "x.parquet"
    done = subprocess.run(
        [sys.executable, "-m", "commands.qtm_program", "simulate", "--fidelity", "1.5", "--out", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["qtm: error: --fidelity must lie in [0, 1], got 1.5"]
    assert "Traceback" not in done.stderr and not out.exists()


def test_map_prints_the_exact_moments(monkeypatch, capsys):
    status, stdout, _ = run_qtm(monkeypatch, capsys, "map", "--cond-mean", "1,2", "--cfg", "3", "--schedule",
                                "cosine", "--json")
    assert status == 0
    record = json.loads(stdout)
    expected = guided_moments([1.0, 2.0], 1.0, 0.0, 1.5, cfg=3.0, schedule="cosine")
    np.testing.assert_allclose([a["mean"] for a in record["axes"]], expected.mean, rtol=1e-12)
    np.testing.assert_allclose([a["var"] for a in record["axes"]], expected.var, rtol=1e-12)
    assert record["parameters"]["schedule"] == "cosine"
    status, stdout, _ = run_qtm(monkeypatch, capsys, "map", "--sampler", "tilt", "--cfg", "2")
    tilt = guided_moments(1.0, 1.0, 0.0, 1.5, cfg=2.0, sampler="tilt")
    assert status == 0 and f"{float(tilt.var):.6g}" in stdout


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--cfg", "1,2"], "qtm map takes one value of --cfg"),
        (["--uncond-var", "-1"], "--uncond-var must be > 0"),
        (["--sampler", "bogus"], "unknown --sampler 'bogus'"),
        (["--sampler", "tilt", "--cond-var", "10", "--uncond-var", "1", "--cfg", "3"], "precision"),
        (["--eta", "2"], "eta must lie in [0, 1]"),
    ],
)
def test_map_bad_input(monkeypatch, capsys, args, pattern):
    status, _, stderr = run_qtm(monkeypatch, capsys, "map", *args)
    assert status == 2 and stderr.startswith("qtm: error: ") and stderr.count("\n") == 1
    assert pattern in stderr


def test_simulate_takes_the_scheduler_and_every_solver(monkeypatch, capsys, tmp_path):
    """The scheduler parameters reach the engine: a v-prediction preset gives the same law (the
    prediction type never changes it) and trailing spacing a different one; a DPM-Solver++ grid runs."""
    from qtm.solvers import SchedulerConfig

    rows = {}
    for name, extra in {"sd15": [], "sd21v": ["--scheduler", "sd21v"],
                        "trailing": ["--timestep-spacing", "trailing"]}.items():
        out = tmp_path / f"{name}.parquet"
        status, _, _ = run_qtm(monkeypatch, capsys, "simulate", "--calibration", "none", "--cfg", "3", "--schedule",
                               "constant", "--drop", "0", "--sampler", "dpm++2m", "--steps", "10", "--iterations", "2",
                               "--out", str(out), *extra)
        assert status == 0
        rows[name] = pd.read_parquet(out)["var"].to_numpy()
    expected = simulate_moments(cond_mean=1.0, cond_var=1.0, uncond_mean=0.0, uncond_var=1.5, data_mean=1.0,
                                data_var=1.0, cfg=3.0, fidelity=0.5, iterations=2, sampler="dpm++2m", steps=10,
                                scheduler=SchedulerConfig.from_parameters(timestep_spacing="trailing")).var
    np.testing.assert_allclose(rows["sd21v"], rows["sd15"], rtol=1e-9)
    np.testing.assert_allclose(rows["trailing"], expected, rtol=1e-12)
    assert not np.allclose(rows["trailing"], rows["sd15"])
    status, _, stderr = run_qtm(monkeypatch, capsys, "simulate", "--engine", "particles", "--scheduler", "sd3",
                                "--out", str(tmp_path / "p.parquet"))
    assert status == 2 and "--scheduler applies to --engine moments only" in stderr
