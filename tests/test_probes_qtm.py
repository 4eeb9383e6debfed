"""Hostile probes of ``qtm`` (issue 23): each row of the issue's table that concerns qtm, kept as a test.

Every probe goes through the installed entry point's code (:func:`commands.qtm_program.main`) and checks the
promise of docs/errors.md: one line on stderr, the documented exit status, nothing written. The interrupt of a
particle sweep on a Dask cluster runs in a child process of its own session, so that Ctrl-C reaches its whole
process group (the cluster's workers too), as it does in a terminal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli_usage import error_lines, run_main

from commands import qtm_program

REPOSITORY = Path(__file__).resolve().parents[1]


def qtm(monkeypatch, capsys, *args):
    return run_main(monkeypatch, capsys, qtm_program.main, "qtm", *args)


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_a_ddim_family_sampler_on_a_flow_matching_scheduler_is_refused_by_simulate_as_by_map(
        monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    for command in (["simulate", "--out", "sweep.csv"], ["map"]):
        status, _, err = qtm(monkeypatch, capsys, *command, "--scheduler", "sd3", "--sampler", "ddim", "--cfg", "3")
        assert status == 2
        assert "does not sample flow-matching models" in one_line(err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "named", "not_named"),
    [
        (["--cfg", "1e300"], "--cfg 1e+300", "--cond-mean"),
        (["--cond-mean", "1e308", "--cfg", "100"], "--cond-mean 1e+308", "--uncond-mean"),
        (["--cond-mean", "1.7e308", "--cfg", "1.5"], "--cond-mean 1.7e+308 and --cfg 1.5", "--cond-var"),
    ],
)
@pytest.mark.parametrize("as_json", [True, False])
def test_an_overflowing_law_is_one_line_naming_the_input_with_no_numpy_warning(
        monkeypatch, capsys, args, named, not_named, as_json):
    status, out, err = qtm(monkeypatch, capsys, "map", *args, *(["--json"] if as_json else []))
    line = one_line(err)
    assert status == 2 and out == ""
    assert line.startswith("qtm: error: the sampler's output overflowed") and named in line
    assert not_named not in line


def test_map_of_large_but_finite_values_still_answers(monkeypatch, capsys):
    status, out, err = qtm(monkeypatch, capsys, "map", "--cond-mean", "1e300", "--cfg", "1", "--json")
    assert status == 0 and err == ""
    assert json.loads(out)["axes"][0]["mean"] > 1e299


@pytest.mark.parametrize("out", ["", "   "])
def test_simulate_to_an_empty_out_is_refused_and_writes_nothing(monkeypatch, capsys, tmp_path, out):
    monkeypatch.chdir(tmp_path)
    status, _, err = qtm(monkeypatch, capsys, "simulate", "--cfg", "3", "--out", out)
    assert status == 2
    assert one_line(err) == "qtm: error: --out: the path is empty; give a path"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["verify", "figures"])
def test_an_empty_output_folder_is_a_usage_error(monkeypatch, capsys, tmp_path, command):
    monkeypatch.chdir(tmp_path)
    status, _, err = qtm(monkeypatch, capsys, command, "--out", "")
    assert status == 2 and "Invalid value for '--out': the path is empty; give a path" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("out", "says"),
    [
        ("a" * 300 + ".parquet", "in one name; give a shorter name"),
        ("/".join(["b" * 200] * 25) + ".csv", "give a shorter path"),
    ],
    ids=["name", "path"],
)
@pytest.mark.parametrize("command", ["simulate", "verify", "figures"])
def test_an_over_long_output_path_is_one_short_line(monkeypatch, capsys, tmp_path, out, says, command):
    monkeypatch.chdir(tmp_path)
    if command != "simulate":
        out = out.removesuffix(".parquet").removesuffix(".csv")
    status, _, err = qtm(monkeypatch, capsys, command, "--out", out)
    # A folder option's value is checked as the option is parsed: a usage error, its usage line above.
    (line,) = error_lines(err) if command != "simulate" else [one_line(err)]
    assert status == 2 and says in line
    assert len(line) < 250, "the name is shown shortened"
    assert list(tmp_path.iterdir()) == []


# A sweep big enough for a LocalCluster (the limit is lowered), whose tasks take a few seconds each.
PARTICLE_SWEEP = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
import qtm.particles.sweep as sweep
sweep.LOCAL_WORK_LIMIT = 0
sys.argv = ["qtm", "simulate", "--calibration", "none", "--engine", "particles", "--cfg", "1,2,3,4",
            "--population", "20000", "--replicates", "100", "--iterations", "10", "--out", "sweep.parquet"]
from commands.qtm_program import main
main()
"""


def test_ctrl_c_on_a_particle_sweep_with_a_local_cluster_is_one_line(tmp_path):
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY), "COLUMNS": "200"}
    child = subprocess.Popen([sys.executable, "-c", PARTICLE_SWEEP], cwd=tmp_path, env=environment,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    # Ctrl-C once the cluster's workers run (each holds a numba cache file handle, or the sweep has ended).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and child.poll() is None and _workers(child.pid) < 2:
        time.sleep(0.5)
    time.sleep(3)
    os.killpg(child.pid, signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert [line for line in err.splitlines() if line.strip()] == ["qtm: interrupted"]
    assert not any(path.name.startswith(("sweep", ".sweep")) for path in tmp_path.iterdir())


def _workers(pid: int) -> int:
    """How many processes of ``pid``'s session run besides it (the cluster's nannies and workers)."""
    found = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != pid:
            try:
                if os.getsid(int(entry.name)) == pid:
                    found += 1
            except (ProcessLookupError, PermissionError):
                continue
    return found


@pytest.mark.parametrize("sampler", ["ode", "sde"])
def test_a_continuous_sampler_that_overflows_reads_as_diverged_in_a_sweep_and_one_line_in_map(
        monkeypatch, capsys, tmp_path, sampler):
    """The continuous-time laws return inf like every other sampler: a sweep says where the chain diverges (it
    once stopped with an error), ``qtm map`` names the inputs."""
    from qtm.grid_sweep import sweep

    frame = sweep(sampler=sampler, schedule="constant", drop=0.0, cfg=[2.0, 1e4], cond_var=2.0, uncond_var=1.0,
                  iterations=3).frame
    diverged = frame[frame["cfg"] == 1e4]
    assert diverged["var"].isna().all() and frame[frame["cfg"] == 2.0]["var"].notna().all()
    status, _, err = qtm(monkeypatch, capsys, "map", "--sampler", sampler, "--cfg", "1e4", "--cond-var", "2",
                         "--uncond-var", "1")
    assert status == 2 and "overflowed to inf or NaN with --cond-var 2 and --cfg 10000" in one_line(err)
