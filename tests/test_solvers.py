"""The exact law of every solver against diffusers' own scheduler stepping a particle cloud."""

import numpy as np
import pytest

from chain.verify_sampler import SD15, SD21V, diffusers_cloud, diffusers_scheduler
from chain.verify_sampler import SOLVER_CASES as CASES
from chain.verify_sampler import SOLVER_RUNS as RUNS
from qtm.errors import QTMError
from qtm.params import SAMPLERS as SAMPLER_NAMES
from qtm.sampler_map import guided_moments
from qtm.solvers import SOLVERS, SchedulerConfig, solver_moments, solver_plan

IDS = [f"{s}-{i}" for i, (s, _, _) in enumerate(RUNS)]
# |z| bound per comparison: two-sided p = 5.7e-7; 18 runs x 4 cases x 2 statistics = 144 comparisons,
# so a correct map fails the suite with probability below 1e-4.
Z_MAX = 5.0
PARTICLES = 200_000
STOCHASTIC = ("euler-a",)
RTOL_AFFINE = 1e-4


def _exact(sampler, config, steps):
    exact = [
        guided_moments(*c[:4], cfg=c[4], schedule=c[5], sampler=sampler, steps=steps, scheduler=config)
        for c in CASES
    ]
    return np.array([float(m.mean) for m in exact]), np.array([float(m.var) for m in exact])


def _z_scores(out, mean, var):
    n = out.shape[1]
    z_mean = (out.mean(axis=1) - mean) / np.sqrt(var / n)
    z_var = (out.var(axis=1, ddof=1) - var) / (var * np.sqrt(2 / (n - 1)))
    return z_mean, z_var


@pytest.mark.parametrize(("sampler", "config", "steps"), RUNS, ids=IDS)
def test_exact_law_matches_diffusers_particles(sampler, config, steps):
    """2e5 particles per case; the output is exactly Gaussian, so the mean's standard error is
    sqrt(var/n) and the variance's var sqrt(2/(n-1)). Each of the 144 comparisons of this test
    (over all parameter sets) passes at |z| < 5: false-failure rate below 1e-4 (fixed seeds).
    The affine check of the deterministic solvers has no sampling error and cannot fail by chance."""
    start, out = diffusers_cloud(sampler, config, steps, PARTICLES, seed=11)
    mean, var = _exact(sampler, config, steps)
    z_mean, z_var = _z_scores(out, mean, var)
    assert np.all(np.abs(z_mean) < Z_MAX), z_mean
    assert np.all(np.abs(z_var) < Z_MAX), z_var
    if sampler not in STOCHASTIC:
        # A deterministic solver maps each particle by x -> A x + B: the fitted A, B (no sampling error)
        # must give the law exactly, up to diffusers' float32 sigmas and arithmetic.
        centred = start - start.mean(axis=1, keepdims=True)
        slope = (centred * out).sum(axis=1) / (centred * centred).sum(axis=1)
        intercept = out.mean(axis=1) - slope * start.mean(axis=1)
        np.testing.assert_allclose(out, slope[:, None] * start + intercept[:, None], atol=1e-4)
        init_var = float(solver_plan(sampler, steps, scheduler=config).init_std) ** 2 if sampler != "ddim" else 1.0
        np.testing.assert_allclose(slope**2 * init_var, var, rtol=RTOL_AFFINE)
        np.testing.assert_allclose(intercept, mean, rtol=RTOL_AFFINE, atol=1e-5)


def test_sampler_names_cover_every_solver():
    assert set(SOLVERS) < set(SAMPLER_NAMES)
    assert {"ddim", "ddpm", "tilt", "ode", "sde"} < set(SAMPLER_NAMES)


def test_broadcasts_over_grids_and_axes():
    """A (grid x axes) array of parameters gives the same numbers as one call per point."""
    cm = np.array([[1.0, -0.5], [0.2, 0.0]])
    cfg = np.array([[1.0], [4.0]])
    out = solver_moments(cm, 0.5, 0.1, 1.0, cfg=cfg, sampler="dpm++2m", steps=12, schedule="cosine")
    assert out.mean.shape == (2, 2)
    for i in range(2):
        for j in range(2):
            one = solver_moments(cm[i, j], 0.5, 0.1, 1.0, cfg=cfg[i, 0], sampler="dpm++2m", steps=12, schedule="cosine")
            assert float(one.mean) == pytest.approx(out.mean[i, j], rel=1e-12)
            assert float(one.var) == pytest.approx(out.var[i, j], rel=1e-12)


def test_prediction_type_does_not_change_the_law():
    for sampler in ("euler", "dpm++2m", "heun"):
        a = solver_moments(1.0, 0.5, 0.0, 1.0, cfg=5.0, sampler=sampler, steps=15, scheduler=SD15)
        b = solver_moments(1.0, 0.5, 0.0, 1.0, cfg=5.0, sampler=sampler, steps=15, scheduler=SD21V)
        assert (float(a.mean), float(a.var)) == (float(b.mean), float(b.var))


def test_plans_match_diffusers_noise_levels():
    """Sigmas and starting noise agree with diffusers' (float32) tables to float32 precision."""
    for sampler, config, steps in RUNS:
        if sampler == "ddim":
            continue
        scheduler = diffusers_scheduler(sampler, config)
        scheduler.set_timesteps(steps)
        plan = solver_plan(sampler, steps, scheduler=config)
        sigmas = scheduler.sigmas.double().numpy()
        if sampler == "heun":
            sigmas = np.concatenate([sigmas[:1], sigmas[1::2]])
        np.testing.assert_allclose(plan.sigmas, sigmas, rtol=2e-5, atol=1e-7)
        assert plan.init_std == pytest.approx(float(getattr(scheduler, "init_noise_sigma", 1.0)), rel=1e-5)


def test_bad_pairings_are_one_line_errors():
    with pytest.raises(QTMError, match="flow-euler"):
        solver_moments(1.0, 0.5, 0.0, 1.0, cfg=2.0, sampler="flow-euler")
    with pytest.raises(QTMError, match="flow-euler"):
        solver_moments(1.0, 0.5, 0.0, 1.0, cfg=2.0, sampler="euler", scheduler="sd3")
    with pytest.raises(QTMError, match="sampler"):
        solver_moments(1.0, 0.5, 0.0, 1.0, cfg=2.0, sampler="lms")
    with pytest.raises(QTMError, match="preset"):
        SchedulerConfig.parse("sdxl")
    with pytest.raises(QTMError, match="prediction_type"):
        SchedulerConfig(prediction_type="sample")


def test_first_order_solvers_coincide_on_one_grid():
    """With one set of noise levels (trailing spacing, ending on clean data, starting from the same law
    up to sigma_max^-2; K divides T, so DDIM's step to t - T//K is the grid's next point), deterministic
    DDIM, Euler and DPM-Solver++ 1S are one map, and so are DDPM and Euler-ancestral: each group is the
    same exponential-integrator or ancestral step written in other coordinates."""
    config = SchedulerConfig(
        beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing", steps_offset=0, set_alpha_to_one=True
    )
    case = (1.0, 0.5, 0.0, 1.0)
    for group in (("ddim", "euler", "dpm++1s"), ("ddpm", "euler-a")):
        outs = [guided_moments(*case, cfg=4.0, schedule="cosine", sampler=s, steps=25, scheduler=config) for s in group]
        for out in outs[1:]:
            assert float(out.mean) == pytest.approx(float(outs[0].mean), rel=1e-9)
            assert float(out.var) == pytest.approx(float(outs[0].var), rel=1e-7)


def test_solver_limits_figure_draws(tmp_path):
    from qtm.figures import make_figures

    written = make_figures(tmp_path, names=["solver_limits"], formats=("png",))
    assert [p.name for p in written if p.suffix == ".png"] == ["solver_limits.png"]
    assert (tmp_path / "solver_limits.png").stat().st_size > 10_000
