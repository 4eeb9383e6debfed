"""Data workflows (replace, accumulate, accumulate-subsample): the closed forms, each engine, and chain run's data.

Statistical tests use fixed seeds, so each either always passes or always fails; the
false-failure rate in a docstring is the chance that a correct simulator would fail with a
random seed (normal approximation, union bound over the comparisons).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from commands.qtm_program import app
from qtm.recursion import simulate_moments
from qtm.verify.workflows import model_mean_error, training_spread

MODEL = dict(cond_mean=1.0, cond_var=1.0, uncond_mean=0.0, uncond_var=1.5, data_mean=1.0, data_var=1.0)


def test_the_closed_forms_tend_to_linear_growth_and_to_pi_squared_over_six():
    """Replace: N E[(mu_t - m)^2]/sigma^2 = 1 + q + ... + q^t; accumulate: 1 + sum_s c_s/(s+2)^2 -> pi^2/6."""
    replace = model_mean_error(50, population=10**9, workflow="replace")
    np.testing.assert_allclose(replace, np.arange(1, 51), rtol=1e-6)
    accumulate = model_mean_error(100_000, population=10**9, workflow="accumulate")
    np.testing.assert_allclose(accumulate[:3], [1.0, 1.25, 1.25 + 1 / 9], rtol=1e-8)
    assert abs(accumulate[-1] - math.pi**2 / 6) < 2e-5
    # Finite N: the training set's spread shrinks by the refit's (N-1)/N per step under replace only.
    np.testing.assert_allclose(training_spread(3, population=4, workflow="replace"), [0.75, 0.5625, 0.421875])
    spread = training_spread(200, population=50, workflow="accumulate")
    assert 0.96 < spread[-1] < spread[0] == 0.98


def test_qtm_simulate_particles_shows_linear_growth_under_replace_and_pi_squared_over_six_under_accumulate(
    tmp_path,
):
    """The issue's "Done when": `qtm simulate --calibration none --engine particles --particle-model qg --sampler
    tilt --cfg 1 --fidelity 1 --data-workflow replace,accumulate` (the reference setup, data N(1, 1)).

    Per workflow and iteration, the model's mean error E[(mu_t - m)^2] is estimated without bias by
    ``(mean_t - m)^2 - var_t / (N - 1)`` (the table's generation mean less its own sampling
    error) and set against the exact closed form (:func:`qtm.verify.workflows.model_mean_error`):
    2 x 15 comparisons at 4.5 standard errors, false-failure rate < 30 x 7e-6 = 2e-4. Then the
    shapes: replace's last value is 12 times its first (linear), accumulate's stays below pi^2/6.
    """
    n, iterations, replicates = 40, 15, 3000
    out = tmp_path / "workflows.parquet"
    done = CliRunner().invoke(app, [
        "simulate", "--calibration", "none", "--engine", "particles", "--particle-model", "qg", "--sampler", "tilt",
        "--cfg", "1", "--fidelity", "1", "--schedule", "constant", "--drop", "0", "--data-workflow",
        "replace,accumulate", "--population", str(n), "--iterations", str(iterations), "--replicates", str(replicates),
        "--out", str(out),
    ])  # fmt: skip
    assert done.exit_code == 0, done.output
    table = pd.read_parquet(out)
    scaled = {}
    for workflow, rows in table.groupby("data_workflow"):
        rows = rows.sort_values(["iteration", "replicate"])
        mean = rows["mean"].to_numpy().reshape(iterations, replicates)
        var = rows["var"].to_numpy().reshape(iterations, replicates)
        error = (mean - 1.0) ** 2 - var / (n - 1)  # data N(1, 1): sigma^2 = 1
        observed, se = error.mean(axis=1), error.std(axis=1, ddof=1) / math.sqrt(replicates)
        expected = model_mean_error(iterations, population=n, workflow=workflow) / n
        assert np.all(np.abs(observed - expected) < 4.5 * se), (workflow, (observed - expected) / se)
        scaled[workflow] = observed * n
    assert scaled["replace"][-1] > 10 * scaled["replace"][0]
    assert scaled["accumulate"][-1] < math.pi**2 / 6 and scaled["accumulate"][-1] < scaled["replace"][2]


def test_moments_engine_pools_exactly_at_infinite_population():
    """Without finite N, accumulate and accumulate-subsample are one pool; at w = 1, rho = 1 it stays the data."""
    both = simulate_moments(**MODEL, cfg=3.0, fidelity=0.5, finetune="continue", real_fraction=0.2, iterations=6,
                            data_workflow=["accumulate", "accumulate-subsample"])  # fmt: skip
    np.testing.assert_array_equal(both.var[0], both.var[1])
    neutral = simulate_moments(**MODEL, cfg=1.0, sampler="tilt", iterations=5, data_workflow="accumulate")
    np.testing.assert_allclose(neutral.var, 1.0, rtol=1e-12)
    # The pool moves slower than the newest generation: it keeps D_0 and every earlier set.
    plain = simulate_moments(**{**MODEL, "uncond_var": 4.0}, cfg=3.0, sampler="tilt", finetune="continue",
                             iterations=6, data_workflow=["replace", "accumulate"])  # fmt: skip
    assert np.all(plain.var[1, 1:] > plain.var[0, 1:])


def test_moments_engine_finite_population_follows_the_pooled_refit():
    """At w = 1, rho = 1 (the tilt is neutral) each generation is the model, so the recursion is by hand:
    accumulate subtracts sum_k (n_k/M) v_k / M over the generated sets; subsample shrinks by (N-1)/N."""
    n = 10
    traj = simulate_moments(**MODEL, cfg=1.0, sampler="tilt", iterations=4, population=n,
                            data_workflow=["accumulate", "accumulate-subsample"])  # fmt: skip
    for row, workflow in enumerate(("accumulate", "accumulate-subsample")):
        sets, expected = [1.0], []  # D_0 is the real data, exactly (as under replace); every mean is 1
        for _ in range(4):
            pooled = sum(sets) / len(sets)
            if not expected:
                v = 1.0
            elif workflow == "accumulate":
                v = pooled - sum(sets[1:]) / (len(sets) ** 2 * n)
            else:
                v = pooled * (n - 1) / n
            expected.append(v)
            sets.append(v)
        np.testing.assert_allclose(traj.var[row], expected, rtol=1e-12)


@pytest.fixture
def run_with_two_iterations(tmp_path):
    """A run directory holding two finished iterations of 4 images each (no backend needed) and its data set."""
    from chain.data import Dataset
    from chain.rundir import METADATA_FILE, RunDirectory

    run = RunDirectory(tmp_path / "run")
    for s in range(2):
        folder = run.iteration_dir(s)
        folder.mkdir(parents=True)
        rows = []
        for i in range(4):
            Image.new("L", (2, 2), 10 * s + i).save(folder / f"{i:06d}-0.png")
            rows.append({"file_name": f"{i:06d}-0.png", "caption": f"c{i}", "caption_index": i})
        (folder / METADATA_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    real = [Image.new("L", (2, 2), 200 + i) for i in range(4)]
    data = Dataset(real, [f"c{i}" for i in range(4)], [f"{i}.png" for i in range(4)], "test")
    return run, data


@pytest.mark.parametrize(("workflow", "size"), [("replace", 4), ("accumulate", 12), ("accumulate-subsample", 4)])
def test_chain_training_set_of_each_workflow(run_with_two_iterations, workflow, size):
    """D_2: the newest images, the real data and both generations, or a budget-size sample of those."""
    from chain.runner import _training_set

    run, data = run_with_two_iterations
    params = {"data_workflow": workflow, "real_fraction": 0.5, "seed": 3}
    images, captions, real_used, sources = _training_set(run, 2, params, data)
    assert len(images) == len(captions) == len(sources) == size
    assert real_used == sum(s.startswith("real:") for s in sources)
    for image, caption, source in zip(images, captions, sources, strict=True):
        if source.startswith("real:"):
            index = int(source.split(":")[1])
            assert caption == f"c{index}" and image.getpixel((0, 0)) == 200 + index
        else:
            assert (run.path / source).is_file() and source.startswith("iter-00")
            assert caption == f"c{image.getpixel((0, 0)) % 10}"
    if workflow == "replace":  # today's behaviour: iteration 1's images, half replaced by real ones
        assert real_used == 2 and all(s.startswith(("iter-001/", "real:")) for s in sources)
    if workflow == "accumulate":  # D_0, then each generation with its own real share (as D_1, D_2 took it)
        assert sources[:4] == [f"real:{i}" for i in range(4)] and real_used == 4 + 2 + 2
        assert _training_set(run, 1, {**params, "data_workflow": "replace"}, data)[3] == sources[4:8]
    if workflow == "accumulate-subsample":
        again = _training_set(run, 2, params, data)[3]
        other = _training_set(run, 2, {**params, "seed": 4}, data)[3]
        pool = _training_set(run, 2, {**params, "data_workflow": "accumulate"}, data)[3]
        assert again == sources and set(sources) <= set(pool)
        assert other != sources
