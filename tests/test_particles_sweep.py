"""Particle sweeps: the tidy table, streaming, atomic output, provenance and the Dask scheduler."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from qtm.errors import QTMError
from qtm.io import read_provenance
from qtm.particles import ChainSetup, simulate_chain
from qtm.particles import sweep as sweep_module
from qtm.particles.sweep import simulate_particles

POINTS = pd.DataFrame({"cfg": [1.0, 4.0], "schedule": ["constant", "cosine"], "iterations": [2, 2],
                       "steps": [6, 6], "drop": [0.0, 0.2]})
OPTIONS = {"population": 40, "replicates": 3, "seed": 3, "dims": 2, "data_mean": 0.0, "data_var": 1.0,
           "cond_mean": 0.0, "cond_var": 1.0, "uncond_mean": 0.0, "uncond_var": 1.0}
QG = {**OPTIONS, "particle_model": "qg", "dims": 1}


def test_parquet_rows_match_the_engine_and_carry_provenance(tmp_path):
    calls = []
    out = simulate_particles(POINTS, options=OPTIONS, out=tmp_path / "sweep.parquet",
                             progress=lambda done, total: calls.append((done, total)))
    table = pd.read_parquet(out)
    assert calls == [(1, 2), (2, 2)]
    assert len(table) == 2 * 3 * 2 * 2  # points x replicates x iterations x axes
    expected_columns = {*POINTS.columns, "replicate", "iteration", "axis", "mean", "var", "total_var",
                        "occupancy_0", "w2_to_data"}
    assert set(table.columns) == expected_columns
    direct = simulate_chain(ChainSetup.build(population=40, iterations=2, dims=2, cfg=4.0, schedule="cosine",
                                             steps=6, drop=0.2), replicates=3, seed=3)
    second = table[table.cfg == 4.0].sort_values(["replicate", "iteration", "axis"])
    np.testing.assert_array_equal(second["mean"].to_numpy(), direct.mean.ravel())
    np.testing.assert_allclose(second["total_var"].to_numpy(), np.repeat(direct.var.sum(axis=2).ravel(), 2))
    w2 = np.sqrt((direct.mean**2 + (np.sqrt(direct.var) - 1.0) ** 2).sum(axis=2))  # data N(0, 1) per axis
    np.testing.assert_allclose(second["w2_to_data"].to_numpy(), np.repeat(w2.ravel(), 2))
    record = read_provenance(out)
    assert record["seed"] == 3 and record["parameters"]["options"]["population"] == 40


def test_csv_and_qg_model_and_small_task_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_module, "TASK_INDIVIDUALS", 2 * 40)  # two replicates per task: chunked writes
    out = simulate_particles(POINTS.assign(sampler="tilt"), options=QG, out=tmp_path / "qg.csv")
    table = pd.read_csv(out)
    assert len(table) == 2 * 3 * 2
    assert table.groupby("cfg")["replicate"].apply(lambda r: sorted(set(r))).tolist() == [[0, 1, 2], [0, 1, 2]]
    assert read_provenance(out)["parameters"]["options"]["particle_model"] == "qg"
    whole = pd.read_csv(simulate_particles(POINTS.assign(sampler="tilt"), options=QG,
                                           out=tmp_path / "qg_whole.csv"))
    pd.testing.assert_frame_equal(table, whole)  # chunking changes nothing


def test_mixture_occupancy_columns(tmp_path):
    out = simulate_particles(POINTS.iloc[:1], options={**OPTIONS, "modes": 3}, out=tmp_path / "m.parquet")
    table = pd.read_parquet(out)
    occupancy = table[["occupancy_0", "occupancy_1", "occupancy_2"]].to_numpy()
    np.testing.assert_allclose(occupancy.sum(axis=1), 1.0)
    assert table["w2_to_data"].isna().all()  # the closed form is for one Gaussian


def test_dask_cluster_on_loopback_gives_the_same_table(tmp_path):
    distributed = pytest.importorskip("distributed")
    local = simulate_particles(POINTS, options=OPTIONS, out=tmp_path / "local.parquet")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                                  host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        remote = simulate_particles(POINTS, options={**OPTIONS, "cluster": cluster.scheduler_address},
                                    out=tmp_path / "dask.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(local), pd.read_parquet(remote))


def test_unreachable_scheduler_is_a_quick_one_line_error(tmp_path):
    start = time.monotonic()
    with pytest.raises(QTMError, match="cannot reach the Dask scheduler") as caught:
        simulate_particles(POINTS, options={**OPTIONS, "cluster": "tcp://127.0.0.1:9"},
                           out=tmp_path / "never.parquet")
    assert time.monotonic() - start < 30
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("points", "options", "message"),
    [
        (POINTS, {**OPTIONS, "population": 1}, "population must be >= 2"),
        (POINTS, {**OPTIONS, "replicates": 0}, "replicates must be >= 1"),
        (POINTS, {**OPTIONS, "modes": 0}, "modes must be >= 1"),
        (POINTS, {**OPTIONS, "particle_model": "qg", "modes": 2}, "model 'qg'"),
        (POINTS, QG, "give --sampler tilt"),
        (POINTS, {**OPTIONS, "colour": 1}, "unknown particle option"),
        (POINTS.assign(fidelity=[1.0, 2.0]), OPTIONS, "fidelity must lie in [0, 1]"),
        (POINTS.assign(speed=1), OPTIONS, "unknown grid column"),
        (POINTS.iloc[:0], OPTIONS, "no points"),
    ],
)
def test_bad_input_writes_nothing(tmp_path, points, options, message):
    with pytest.raises(QTMError) as caught:
        simulate_particles(points, options=options, out=tmp_path / "bad.parquet")
    assert message in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_failure_during_the_sweep_leaves_no_file(tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise QTMError("simulated failure")

    original = sweep_module._task_rows
    calls = iter([original, explode])
    monkeypatch.setattr(sweep_module, "_task_rows", lambda *a, **k: next(calls)(*a, **k))
    with pytest.raises(QTMError, match="simulated failure"):
        simulate_particles(POINTS, options=OPTIONS, out=tmp_path / "half.parquet")
    assert list(tmp_path.iterdir()) == []


def test_missing_uncond_fidelity_and_axes_from_per_axis_options(tmp_path):
    points = pd.DataFrame({"uncond_fidelity": pd.Series([None, 0.1], dtype=object), "iterations": [1, 1],
                           "steps": [4, 4], "sampler": ["tilt", "tilt"]})
    options = {"population": 20, "replicates": 2, "data_mean": [0.0, 1.0], "data_var": 2.0, "particle_model": "qg"}
    table = pd.read_parquet(simulate_particles(points, options=options, out=tmp_path / "t.parquet"))
    assert sorted(table["axis"].unique()) == [0, 1]
    assert table["uncond_fidelity"].isna().sum() == len(table) // 2


def test_qg_model_honours_the_schedule_as_the_moments_tilt_does(tmp_path):
    """qg and the moments engine's tilt take a schedule as its mean scale: with N large and many
    replicates, their variances agree; a cutoff schedule (mean scale 4 of peak 7) differs from
    the constant one. Monte-Carlo z-test at 4 SE: false-failure rate < 1e-4 per comparison."""
    from qtm.recursion import simulate_moments

    points = pd.DataFrame({"cfg": [7.0, 7.0], "schedule": ["constant", "cutoff:0.5"], "iterations": [2, 2],
                           "steps": [10, 10], "sampler": ["tilt", "tilt"], "fidelity": [1.0, 1.0]})
    options = {**QG, "population": 2000, "replicates": 40, "data_mean": 1.0, "data_var": 1.0, "cond_mean": 1.0,
               "cond_var": 1.0, "uncond_mean": 0.0, "uncond_var": 2.0}
    table = pd.read_parquet(simulate_particles(points, options=options, out=tmp_path / "qg.parquet"))
    first = table[table.iteration == 0].groupby("schedule")["var"]
    expected = simulate_moments(cond_mean=1.0, cond_var=1.0, uncond_mean=0.0, uncond_var=2.0, data_mean=1.0,
                                data_var=1.0, cfg=7.0, schedule=np.array(["constant", "cutoff:0.5"]),
                                iterations=1, steps=10, sampler="tilt").var[:, 0]
    measured, spread = first.mean(), first.std() / np.sqrt(40)
    for schedule, value in zip(["constant", "cutoff:0.5"], expected, strict=True):
        assert abs(measured[schedule] - value) < 4 * spread[schedule] + 2 * value / 2000, (schedule, measured)
    assert expected[1] > 1.5 * expected[0]
