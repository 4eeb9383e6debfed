"""The chain recursion against hand-iterated operator calls and its known limits."""

import itertools

import numpy as np
import pytest

from qtm.equilibria import cfg_tilt_chain, iterations_to_collapse
from qtm.errors import ImproperDistributionError, QTMError
from qtm.gaussian import add_mutation, inherit, mix, refit_expectation
from qtm.recursion import ChainTrajectory, collapse_iteration, simulate_moments
from qtm.sampler_map import guided_moments

BASE = dict(cond_mean=1.0, cond_var=1.0, uncond_mean=0.0, uncond_var=4.0, data_mean=1.0, data_var=1.0)


def hand_iterated(point, *, iterations):
    """The conventions of CONTRIBUTING.md, one scalar point, one operator call at a time."""
    base_c = (point["cond_mean"], point["cond_var"])
    base_u = (point["uncond_mean"], point["uncond_var"])
    real = (point["data_mean"], point["data_var"])
    rho_u = point.get("uncond_fidelity", point.get("drop", 0.0) * point["fidelity"])
    cond, uncond, data = base_c, base_u, real
    means, variances = [], []
    workflow, f, n = point.get("data_workflow", "replace"), point["real_fraction"], point.get("population")
    pooled = [real]  # D_0 and every generation mixed with real data, for the pooled workflows
    generated_vars = []
    for _ in range(iterations):
        prior_c, prior_u = (cond, uncond) if point["finetune"] == "continue" else (base_c, base_u)
        cond = inherit(*prior_c, *data, fidelity=point["fidelity"])
        uncond = inherit(*prior_u, *data, fidelity=rho_u)
        generated = guided_moments(
            *cond, *uncond, cfg=point["cfg"], schedule=point["schedule"], sampler=point["sampler"],
            steps=point["steps"], eta=point["eta"],
        )
        generated = add_mutation(*generated, mutation_var=point["mutation"])
        means.append(float(generated.mean))
        variances.append(float(generated.var))
        if workflow != "replace":
            # The pool's moments written out from all its sets at once (the engine updates them set by set).
            pooled.append(mix(*generated, *real, rate=f))
            generated_vars.append(float(generated.var))
            k = len(pooled)
            pool_mean = sum(float(s[0]) for s in pooled) / k
            pool_var = sum(float(s[1]) + (float(s[0]) - pool_mean) ** 2 for s in pooled) / k
            if n is not None and workflow == "accumulate":
                pool_var -= (1 - f) * sum(generated_vars) / (k * k * n)
            elif n is not None:
                pool_var *= (n - 1) / n
            data = (pool_mean, pool_var)
            continue
        if point.get("population") is not None:
            generated = refit_expectation(*generated, population=point["population"])
        data = mix(*generated, *real, rate=point["real_fraction"])
    return np.array(means), np.array(variances)


POINTS = [
    dict(BASE, cfg=7.5, schedule="constant", sampler="ddim", steps=20, eta=0.0, fidelity=1.0, drop=0.0,
         finetune="base", real_fraction=0.0, mutation=0.0),
    dict(BASE, cfg=3.0, schedule="cosine", sampler="ddim", steps=15, eta=0.5, fidelity=0.6, drop=0.2,
         finetune="continue", real_fraction=0.1, mutation=0.01),
    dict(BASE, cfg=5.0, schedule="cutoff:0.4", sampler="ddpm", steps=10, eta=0.0, fidelity=0.8, drop=0.5,
         finetune="base", real_fraction=0.3, mutation=0.0, population=50),
    dict(cond_mean=0.5, cond_var=2.0, uncond_mean=-1.0, uncond_var=3.0, data_mean=0.0, data_var=0.5,
         cfg=2.0, schedule="linear:1.5", sampler="tilt", steps=10, eta=0.0, fidelity=0.7,
         uncond_fidelity=0.3, finetune="continue", real_fraction=0.2, mutation=0.05),
    dict(BASE, cfg=0.5, schedule="interval:0.5:20", sampler="ddim", steps=12, eta=1.0, fidelity=0.9,
         drop=0.0, finetune="continue", real_fraction=0.0, mutation=0.0, population=10),
    dict(BASE, cfg=3.0, schedule="cosine", sampler="dpm++2m", steps=12, eta=0.0, fidelity=0.6, drop=0.2,
         finetune="continue", real_fraction=0.1, mutation=0.01),
]
#: The pooled workflows through the fused kernel (ddim, ddpm) and the solver kernel (tilt, euler).
POINTS += [
    dict(point, data_workflow=workflow, **({"population": 40} if finite else {}))
    for point in (POINTS[1], POINTS[2], POINTS[3])
    for workflow in ("accumulate", "accumulate-subsample")
    for finite in (False, True)
] + [dict(POINTS[0], sampler="euler", data_workflow="accumulate", population=30, real_fraction=0.2)]
#: The ODE and SDE limits through the closed-form laws of the solver kernel, in every workflow.
POINTS += [
    dict(BASE, cfg=3.0, schedule="constant", sampler="ode", steps=10, eta=0.0, fidelity=0.6, drop=0.2,
         finetune="continue", real_fraction=0.1, mutation=0.01),
    dict(BASE, cfg=5.0, schedule="constant", sampler="sde", steps=10, eta=0.0, fidelity=0.8, drop=0.5,
         finetune="base", real_fraction=0.3, mutation=0.0, population=50),
    dict(BASE, cfg=7.5, schedule="constant", sampler="ode", steps=10, eta=0.0, fidelity=0.9, drop=0.1,
         finetune="continue", real_fraction=0.2, mutation=0.0, data_workflow="accumulate", population=40),
    dict(BASE, cfg=2.0, schedule="constant", sampler="sde", steps=10, eta=0.0, fidelity=0.7, drop=0.3,
         finetune="continue", real_fraction=0.0, mutation=0.02, data_workflow="accumulate-subsample"),
]


@pytest.mark.parametrize("point", POINTS, ids=lambda p: f"{p['sampler']}-{p['schedule']}-{p['finetune']}-"
                         f"{p.get('data_workflow', 'replace')}-{p.get('population')}")
def test_matches_hand_iterated_operators(point):
    mean, var = hand_iterated(point, iterations=6)
    traj = simulate_moments(iterations=6, **point)
    np.testing.assert_allclose(traj.mean, mean, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(traj.var, var, rtol=1e-10, atol=1e-13)


def test_a_grid_is_broadcasting_and_groups_match_separate_runs():
    """Text options given as arrays are grouped; every point equals its own scalar run (odd sizes cross
    the kernel's block boundaries)."""
    cfg = np.array([1.0, 2.5, 4.0, 7.5, 9.0, 12.0, 15.0])[:, None, None]
    fidelity = np.array([0.3, 0.7, 1.0])[None, :, None]
    schedule = np.array(["constant", "cosine"], dtype=object)[None, None, :]
    sampler = np.array(["ddim", "ddpm"], dtype=object)[None, None, :]
    traj = simulate_moments(**BASE, cfg=cfg, fidelity=fidelity, schedule=schedule, sampler=sampler,
                            drop=0.2, iterations=4, steps=10, finetune="continue")
    assert traj.mean.shape == traj.var.shape == (7, 3, 2, 4)
    assert traj.data_var.shape == (7, 3, 2)
    for i, j, k in itertools.product(range(7), range(3), range(2)):
        single = simulate_moments(**BASE, cfg=cfg[i, 0, 0], fidelity=fidelity[0, j, 0],
                                  schedule=schedule[0, 0, k], sampler=sampler[0, 0, k], drop=0.2,
                                  iterations=4, steps=10, finetune="continue")
        np.testing.assert_allclose(traj.mean[i, j, k], single.mean, rtol=1e-12)
        np.testing.assert_allclose(traj.var[i, j, k], single.var, rtol=1e-12)


def test_trait_axes_are_one_more_broadcast_dimension():
    traj = simulate_moments(cond_mean=[1.0, -2.0], cond_var=[1.0, 0.5], uncond_mean=0.0, uncond_var=4.0,
                            data_mean=[1.0, -2.0], data_var=[1.0, 0.5], cfg=[[1.0], [7.5]],
                            iterations=3, steps=10)
    assert traj.var.shape == (2, 2, 3)
    axis1 = simulate_moments(cond_mean=-2.0, cond_var=0.5, uncond_mean=0.0, uncond_var=4.0,
                             data_mean=-2.0, data_var=0.5, cfg=7.5, iterations=3, steps=10)
    np.testing.assert_allclose(traj.var[1, 1], axis1.var, rtol=1e-12)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "tilt"])
def test_zero_fidelity_repeats_the_base_models_output(sampler):
    traj = simulate_moments(**BASE, cfg=[1.0, 4.0], fidelity=0.0, drop=0.5, finetune="continue",
                            iterations=5, sampler=sampler, steps=10, real_fraction=0.3)
    once = guided_moments(1.0, 1.0, 0.0, 4.0, cfg=[1.0, 4.0], sampler=sampler, steps=10)
    np.testing.assert_allclose(traj.mean, np.repeat(once.mean[:, None], 5, axis=1), rtol=1e-12)
    np.testing.assert_allclose(traj.var, np.repeat(once.var[:, None], 5, axis=1), rtol=1e-12)


def test_neutral_guidance_with_full_fidelity_keeps_the_data():
    """w = 1, rho = 1, continue: the tilt returns the data every iteration; a finite population only
    shrinks the variance by the refit's (N-1)/N per iteration."""
    traj = simulate_moments(**BASE, cfg=1.0, fidelity=1.0, finetune="continue", iterations=8, sampler="tilt")
    np.testing.assert_allclose(traj.mean, 1.0, rtol=1e-12)
    np.testing.assert_allclose(traj.var, 1.0, rtol=1e-12)
    finite = simulate_moments(**BASE, cfg=1.0, fidelity=1.0, finetune="continue", iterations=8,
                              sampler="tilt", population=20)
    np.testing.assert_allclose(finite.var, (19 / 20) ** np.arange(8), rtol=1e-12)


@pytest.mark.parametrize("cfg", [0.6, 1.5, 3.0])
def test_tilt_chain_moves_the_precision_gap_geometrically(cfg):
    """rho = 1, no drop: the precision lambda_t = 1/var_t obeys
    lambda_t - lambda_u = w^(t+1) (lambda_D - lambda_u), and so does the precision-weighted mean
    lambda m (collapse for w > 1, relaxation to p_u for w < 1)."""
    data_var, uncond_var, data_mean, uncond_mean = 1.0, 4.0, 1.0, 0.0
    traj = simulate_moments(cond_mean=5.0, cond_var=9.0, uncond_mean=uncond_mean, uncond_var=uncond_var,
                            data_mean=data_mean, data_var=data_var, cfg=cfg, fidelity=1.0,
                            finetune="continue", iterations=10, sampler="tilt")
    t = np.arange(10)
    lam_u, lam_d = 1 / uncond_var, 1 / data_var
    precision = lam_u + cfg ** (t + 1) * (lam_d - lam_u)
    weighted = lam_u * uncond_mean + cfg ** (t + 1) * (lam_d * data_mean - lam_u * uncond_mean)
    np.testing.assert_allclose(1 / traj.var, precision, rtol=1e-10)
    np.testing.assert_allclose(traj.mean / traj.var, weighted, rtol=1e-10)
    chain = cfg_tilt_chain(data_mean, data_var, uncond_mean, uncond_var, cfg=cfg, iterations=10)
    np.testing.assert_allclose(traj.mean, chain.mean, rtol=1e-10)
    np.testing.assert_allclose(traj.var, chain.var, rtol=1e-10)


def test_collapse_iteration_agrees_with_the_closed_form():
    cfg = np.array([1.2, 2.0, 3.0, 7.5, 0.5])
    traj = simulate_moments(**BASE, cfg=cfg, fidelity=1.0, finetune="continue", iterations=30, sampler="tilt")
    for threshold in (0.5, 0.1, 0.01):
        expected = iterations_to_collapse(cfg=cfg, cond_var=1.0, uncond_var=4.0, threshold=threshold)
        expected = np.where(expected < 30, expected, -1)
        np.testing.assert_array_equal(collapse_iteration(traj, threshold=threshold), expected)


def test_condition_drop_flattens_selection():
    """ReDiFine's condition drop: with drop 1 and rho 1 the unconditional branch equals the data, so the tilt
    returns the data at any scale; without drop the variance collapses."""
    traj = simulate_moments(**BASE, cfg=7.5, drop=[0.0, 1.0], fidelity=1.0, iterations=5, sampler="tilt")
    np.testing.assert_allclose(traj.var[1], 1.0, rtol=1e-12)
    assert np.all(np.diff(traj.var[0]) < 0) and traj.var[0, -1] < 1e-3


def test_uncond_fidelity_nan_takes_the_default():
    traj = simulate_moments(**BASE, cfg=4.0, drop=0.3, fidelity=0.8, uncond_fidelity=[np.nan, 0.24, 0.5],
                            iterations=3, steps=10)
    np.testing.assert_array_equal(traj.var[0], traj.var[1])
    assert not np.allclose(traj.var[0], traj.var[2])


def test_collapse_iteration():
    var = np.array([[1.0, 0.5, 0.2, 0.05], [1.0, 1.0, 1.0, 1.0]])
    traj = ChainTrajectory(np.zeros_like(var), var, np.zeros(2), np.array([1.0, 2.0]))
    assert collapse_iteration(traj, threshold=0.1).tolist() == [3, -1]
    assert collapse_iteration(traj, threshold=0.3).tolist() == [2, -1]
    with pytest.raises(QTMError, match="threshold"):
        collapse_iteration(traj, threshold=0.0)


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ({"cond_var": -1.0}, "cond_var"),
        ({"data_var": 0.0}, "data_var"),
        ({"fidelity": 1.5}, "fidelity"),
        ({"drop": -0.1}, "drop"),
        ({"uncond_fidelity": 2.0}, "uncond_fidelity"),
        ({"schedule": "wobbly"}, "schedule"),
        ({"sampler": "euler-b"}, "sampler"),
        ({"finetune": "scratch"}, "finetune"),
        ({"iterations": 0}, "iterations"),
        ({"steps": 0}, "steps"),
        ({"eta": 1.5}, "eta"),
        ({"population": 1}, "population"),
        ({"mutation": -0.1}, "mutation"),
    ],
)
def test_bad_input_names_the_parameter(override, pattern):
    kwargs = dict(BASE, cfg=3.0, iterations=2, steps=5)
    kwargs.update(override)
    with pytest.raises(QTMError, match=pattern):
        simulate_moments(**kwargs)


def test_improper_tilt_is_an_error_not_nan():
    """w > 1 with a conditional much wider than the unconditional branch has no tilt."""
    with pytest.raises(ImproperDistributionError):
        simulate_moments(cond_mean=0.0, cond_var=10.0, uncond_mean=0.0, uncond_var=1.0, data_mean=0.0,
                         data_var=10.0, cfg=3.0, fidelity=0.0, iterations=2, sampler="tilt")
