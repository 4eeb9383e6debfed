"""The exact CFG sampler map against diffusers' own DDIMScheduler, its limits, and its input checks."""

import numpy as np
import pytest

from qtm.diffusion import DiffusionConfig
from qtm.errors import QTMError
from qtm.gaussian import cfg_tilt
from qtm.sampler_map import gaussian_eps_coefficients, guided_moments, prepare_sampler, step_coefficients
from qtm.schedules import CFGSchedule

# (cond_mean, cond_var, uncond_mean, uncond_var, cfg, schedule): one row of particles each.
CASES = [
    (1.0, 0.5, 0.0, 1.0, 1.0, "constant"),
    (1.0, 0.5, 0.0, 1.0, 7.5, "constant"),
    (-0.5, 2.0, 0.3, 1.5, 3.0, "cosine"),
    (0.4, 0.2, -0.2, 0.6, 5.0, "linear:2"),
    (1.0, 0.5, 0.0, 1.0, 7.5, "cutoff:0.4"),
    (2.0, 0.3, 1.0, 1.0, 4.0, "interval:0.3:3"),
]
SD15 = DiffusionConfig()
# Every other branch at once: another beta schedule, spacing, offset and final alpha.
COSINE = DiffusionConfig(
    beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing", steps_offset=0, set_alpha_to_one=True
)


def _diffusers_cloud(config, steps, eta, particles, seed):
    """Run diffusers' DDIMScheduler.step on a particle cloud per case with the analytic guided predictor.

    The noise predictor is written here from its definition, independently of qtm:
    ``eps_hat(x) = b (x - a m) / (a^2 v + b^2)`` per branch, guided as
    ``eps_u + w_k (eps_c - eps_u)``. Returns the output particles, shape (cases, particles).
    """
    diffusers = pytest.importorskip("diffusers")
    import torch

    scheduler = diffusers.DDIMScheduler(**config.scheduler_config(), clip_sample=False)
    scheduler.set_timesteps(steps)
    abar_steps = scheduler.alphas_cumprod[scheduler.timesteps].double().numpy()
    params = torch.tensor([case[:4] for case in CASES], dtype=torch.float64)
    cm, cv, um, uv = (params[:, j : j + 1] for j in range(4))
    scales = torch.tensor(
        np.stack([CFGSchedule.parse(c[5]).scales(c[4], steps, alphas_cumprod=abar_steps) for c in CASES]),
        dtype=torch.float64,
    )
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(len(CASES), particles, generator=generator, dtype=torch.float64)
    for k, t in enumerate(scheduler.timesteps):
        abar = float(scheduler.alphas_cumprod[t])
        a, b = abar**0.5, (1 - abar) ** 0.5
        eps_c = b * (x - a * cm) / (abar * cv + b * b)
        eps_u = b * (x - a * um) / (abar * uv + b * b)
        eps = eps_u + scales[:, k : k + 1] * (eps_c - eps_u)
        x = scheduler.step(eps, t, x, eta=eta, generator=generator).prev_sample
    return x.numpy()


def _map(config, steps, eta):
    moments = [
        guided_moments(*c[:4], cfg=c[4], schedule=c[5], steps=steps, eta=eta, config=config) for c in CASES
    ]
    return np.array([float(m.mean) for m in moments]), np.array([float(m.var) for m in moments])


@pytest.mark.parametrize(("config", "steps"), [(SD15, 50), (COSINE, 20)], ids=["sd15", "cosine-trailing"])
def test_deterministic_ddim_is_the_affine_map_of_diffusers(config, steps):
    """At eta = 0 each particle's output is exactly ``A x_K + B``; the map's (mean, var) is (B, A^2).

    No sampling error enters: the slope and intercept are fitted to the particles
    exactly, so this test cannot fail by chance. Tolerances cover diffusers' float32 betas.
    """
    pytest.importorskip("diffusers")
    mean, var = _map(config, steps, 0.0)
    out = _diffusers_cloud(config, steps, 0.0, particles=1000, seed=0)
    import torch

    x = torch.randn(len(CASES), 1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
    xc = x - x.mean(axis=1, keepdims=True)
    slope = (xc * out).sum(axis=1) / (xc * xc).sum(axis=1)
    intercept = out.mean(axis=1) - slope * x.mean(axis=1)
    np.testing.assert_allclose(out, slope[:, None] * x + intercept[:, None], atol=1e-9)
    np.testing.assert_allclose(slope**2, var, rtol=1e-4)
    np.testing.assert_allclose(intercept, mean, rtol=1e-4, atol=1e-6)


def test_stochastic_ddpm_matches_diffusers_particles():
    """At eta = 1, 50k particles per case: sample mean and variance within 4.5 standard errors of the map.

    The output is exactly Gaussian, so the mean's standard error is sqrt(var/n) and the
    variance's is var sqrt(2/(n-1)). 12 two-sided comparisons at |z| < 4.5
    (p = 6.8e-6 each): false-failure rate below 1e-4 (the seed is fixed, so the run is reproducible).
    The other scheduler branches' noise is checked exactly, step by step, by
    test_step_coefficients_are_one_diffusers_step.
    """
    n, steps = 50_000, 30
    mean, var = _map(SD15, steps, 1.0)
    out = _diffusers_cloud(SD15, steps, 1.0, particles=n, seed=1)
    z_mean = (out.mean(axis=1) - mean) / np.sqrt(var / n)
    z_var = (out.var(axis=1, ddof=1) - var) / (var * np.sqrt(2 / (n - 1)))
    assert np.all(np.abs(z_mean) < 4.5), z_mean
    assert np.all(np.abs(z_var) < 4.5), z_var


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("config", [SD15, COSINE], ids=["sd15", "cosine-trailing"])
def test_step_coefficients_are_one_diffusers_step(config, eta):
    diffusers = pytest.importorskip("diffusers")
    import torch

    scheduler = diffusers.DDIMScheduler(**config.scheduler_config(), clip_sample=False)
    scheduler.set_timesteps(7)
    coef = step_coefficients(7, eta=eta, config=config)
    generator = torch.Generator().manual_seed(2)
    x, eps, noise = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    for k, t in enumerate(scheduler.timesteps):
        expected = scheduler.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample.numpy()
        ours = coef.x_coef[k] * x.numpy() + coef.eps_coef[k] * eps.numpy() + coef.noise_std[k] * noise.numpy()
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


def test_ddpm_is_diffusers_ddpm_scheduler_with_final_alpha_one():
    """The documented equivalence: DDPMScheduler's step is DDIM's at eta = 1 (leading, final alpha 1)."""
    diffusers = pytest.importorskip("diffusers")
    import torch

    scheduler = diffusers.DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, clip_sample=False
    )
    scheduler.set_timesteps(7)
    coef = step_coefficients(7, eta=1.0, config=DiffusionConfig(set_alpha_to_one=True))
    x, eps = torch.randn(2, 1, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for k, t in enumerate(scheduler.timesteps):
        # DDPMScheduler draws its noise itself: draw the same numbers from the same seed.
        noise = torch.randn(1, 5, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
        expected = scheduler.step(eps, t, x, generator=torch.Generator().manual_seed(k)).prev_sample
        ours = coef.x_coef[k] * x + coef.eps_coef[k] * eps + coef.noise_std[k] * noise
        np.testing.assert_allclose(ours.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_gaussian_eps_is_the_conditional_mean_of_the_noise():
    """E[eps | x_t] for x_t = a x0 + b eps, x0 ~ N(m, v): Monte Carlo regression slope and intercept.

    1e6 draws; tolerances are > 6 standard errors: false-failure rate below 1e-8.
    """
    rng = np.random.default_rng(3)
    abar, m, v = 0.3, 1.5, 0.4
    x0 = rng.normal(m, np.sqrt(v), 1_000_000)
    eps = rng.standard_normal(x0.size)
    xt = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * eps
    fit_slope, fit_intercept = np.polyfit(xt, eps, 1)
    slope, intercept = gaussian_eps_coefficients(abar, m, v)
    assert fit_slope == pytest.approx(slope, abs=0.005)
    assert fit_intercept == pytest.approx(intercept, abs=0.01)


def test_without_guidance_many_steps_reproduce_the_conditional():
    """w = 1 and a zero-terminal-SNR-like schedule (cosine, final alpha 1): both samplers tend to p_c."""
    for sampler in ("ddim", "ddpm"):
        out = guided_moments(1.0, 0.5, 0.0, 1.0, cfg=1.0, sampler=sampler, steps=1000, config=COSINE)
        assert float(out.mean) == pytest.approx(1.0, abs=1e-4)
        assert float(out.var) == pytest.approx(0.5, rel=0.01)


def test_fifty_steps_without_guidance_narrow_the_conditional():
    """The numbers the module docstring quotes: SD v1.5, 50 steps, w = 1, p_c = N(1, 0.5)."""
    ddim = guided_moments(1.0, 0.5, 0.0, 1.0, cfg=1.0, steps=50)
    ddpm = guided_moments(1.0, 0.5, 0.0, 1.0, cfg=1.0, sampler="ddpm", steps=50)
    assert float(ddim.var) == pytest.approx(0.469, abs=1e-3)
    assert float(ddpm.var) == pytest.approx(0.433, abs=1e-3)


def test_sd15_ddim_without_guidance_shrinks_the_mean():
    """SD v1.5's schedule ends at alpha-bar 0.0047, not 0, yet sampling starts from N(0, 1):
    deterministic DDIM carries that mismatch to the output (mean 0.95 instead of 1, even with
    999 steps), while DDPM's fresh noise forgets most of it."""
    ddim = guided_moments(1.0, 0.5, 0.0, 1.0, cfg=1.0, steps=999)
    ddpm = guided_moments(1.0, 0.5, 0.0, 1.0, cfg=1.0, sampler="ddpm", steps=999)
    assert float(ddim.mean) == pytest.approx(0.951, abs=0.001)
    assert float(ddpm.mean) == pytest.approx(0.997, abs=0.001)


def test_guided_sampling_is_not_the_tilt():
    """The numbers the module docstring quotes: CFG 7.5, p_c = N(1, 0.5), p_u = N(0, 1), SD v1.5."""
    tilt = guided_moments(1.0, 0.5, 0.0, 1.0, cfg=7.5, sampler="tilt")
    ddim = guided_moments(1.0, 0.5, 0.0, 1.0, cfg=7.5, steps=50)
    ddpm = guided_moments(1.0, 0.5, 0.0, 1.0, cfg=7.5, sampler="ddpm", steps=50)
    ddpm_long = guided_moments(1.0, 0.5, 0.0, 1.0, cfg=7.5, sampler="ddpm", steps=1000, config=COSINE)
    assert (float(tilt.mean), float(tilt.var)) == pytest.approx((1.7647, 0.1176), abs=1e-4)
    assert (float(ddim.mean), float(ddim.var)) == pytest.approx((2.317, 0.0040), abs=1e-3)
    assert (float(ddpm.mean), float(ddpm.var)) == pytest.approx((1.993, 0.0432), abs=1e-3)
    ddim_long = guided_moments(1.0, 0.5, 0.0, 1.0, cfg=7.5, steps=1000, config=COSINE)
    # Even the many-step limits stay well away from the tilt, and from each other.
    assert (float(ddpm_long.mean), float(ddpm_long.var)) == pytest.approx((1.989, 0.0702), abs=1e-3)
    assert (float(ddim_long.mean), float(ddim_long.var)) == pytest.approx((2.397, 0.0055), abs=1e-3)


def test_zero_guidance_is_the_unconditional():
    a = guided_moments(1.0, 0.5, -0.3, 2.0, cfg=0.0, schedule="constant", eta=0.5)
    b = guided_moments(-0.3, 2.0, 1.0, 0.5, cfg=1.0, schedule="constant", eta=0.5)
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_ddpm_is_ddim_with_eta_one():
    a = guided_moments(1.0, 0.5, 0.0, 1.0, cfg=3.0, sampler="ddpm", eta=0.2)
    b = guided_moments(1.0, 0.5, 0.0, 1.0, cfg=3.0, sampler="ddim", eta=1.0)
    np.testing.assert_array_equal(a, b)


def test_tilt_uses_the_mean_scale_of_the_schedule():
    spec = "interval:0.5:4"
    abar_t, _ = SD15.step_alphas(30)
    w = CFGSchedule.parse(spec).scales(6.0, 30, alphas_cumprod=abar_t).mean()
    assert 1.0 < w < 6.0
    out = guided_moments(1.0, 0.5, 0.0, 1.0, cfg=6.0, schedule=spec, sampler="tilt", steps=30)
    np.testing.assert_allclose(out, cfg_tilt(1.0, 0.5, 0.0, 1.0, cfg=w), rtol=1e-12)


@pytest.mark.parametrize("sampler", ["ddim", "tilt"])
def test_broadcasts_over_grids(sampler):
    cfg = np.array([[1.0], [3.0], [7.5]])
    cond_mean = np.array([0.0, 1.0])
    out = guided_moments(cond_mean, 0.5, 0.2, 1.0, cfg=cfg, schedule="cosine", sampler=sampler, steps=20)
    assert out.mean.shape == out.var.shape == (3, 2)
    for i, j in np.ndindex(3, 2):
        one = guided_moments(
            cond_mean[j], 0.5, 0.2, 1.0, cfg=cfg[i, 0], schedule="cosine", sampler=sampler, steps=20
        )
        assert (out.mean[i, j], out.var[i, j]) == pytest.approx((float(one.mean), float(one.var)), rel=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (dict(sampler="lms"), "sampler"),
        (dict(scheduler="sd3"), "flow-euler"),
        (dict(config=DiffusionConfig(), scheduler="sd15"), "not both"),
        (dict(sampler="ode", schedule="cosine"), "constant guidance"),
        (dict(cond_var=-1.0), "cond_var"),
        (dict(uncond_var=-0.1), "uncond_var"),
        (dict(eta=1.5), "eta"),
        (dict(eta=[0.0, 1.0]), "eta must be a single number"),
        (dict(steps=0), "steps"),
        (dict(schedule="exponential"), "schedule"),
        (dict(cfg=np.nan), "cfg"),
        (dict(cond_mean="a"), "cond_mean"),
    ],
)
def test_bad_input(kwargs, fragment):
    args = dict(cond_mean=1.0, cond_var=0.5, uncond_mean=0.0, uncond_var=1.0)
    options = dict(cfg=3.0)
    for key, value in kwargs.items():
        (args if key in args else options)[key] = value
    with pytest.raises(QTMError, match=fragment):
        guided_moments(*args.values(), **options)


def _numpy_ddim_law(prepared, cond_mean, cond_var, uncond_mean, uncond_var):
    """The DDIM/DDPM law as a plain NumPy loop over the steps (the form the compiled kernel replaced)."""
    table, rows = prepared.scale_table
    coef = prepared.coefficients
    mean = np.zeros(np.broadcast_shapes(np.shape(cond_mean), np.shape(cond_var), rows.shape))
    var = np.ones(mean.shape)
    for k in range(len(coef.abar_t)):
        w = table[0, k] if len(table) == 1 else table[rows, k]
        slope_c, icpt_c = gaussian_eps_coefficients(coef.abar_t[k], cond_mean, cond_var)
        slope_u, icpt_u = gaussian_eps_coefficients(coef.abar_t[k], uncond_mean, uncond_var)
        gain = coef.x_coef[k] + coef.eps_coef[k] * (slope_u + w * (slope_c - slope_u))
        shift = coef.eps_coef[k] * (icpt_u + w * (icpt_c - icpt_u))
        mean = gain * mean + shift
        var = gain * gain * var + coef.noise_std[k] ** 2
    return mean, var


@pytest.mark.parametrize(("sampler", "schedule", "eta"), [("ddim", "constant", 0.0), ("ddpm", "cosine", 0.0),
                                                          ("ddim", "linear", 0.5), ("ddim", "interval:0.5:20", 1.0)])
def test_the_compiled_law_is_the_numpy_loop_to_the_last_bit(sampler, schedule, eta):
    """qtm.moments_kernels.ddim_law_kernel against the NumPy loop, on a grid of points and on broadcast axes."""
    from qtm.sampler_map import prepare_sampler

    rng = np.random.default_rng(3)
    n = 500
    points = (rng.normal(size=n), 10 ** rng.uniform(-3, 2, n), rng.normal(size=n), 10 ** rng.uniform(-3, 2, n))
    axes = (points[0][:, None], points[1][:, None], 0.0, 1.0)
    for cfg, model in ((rng.choice([1.0, 1.5, 3.0, 7.5], size=n), points), ([[1.0, 3.0, 7.5]], axes)):
        prepared = prepare_sampler(sampler, cfg=cfg, schedule=schedule, steps=25, eta=eta)
        out = prepared.moments(*model)
        mean, var = _numpy_ddim_law(prepared, *model)
        assert np.array_equal(out.mean, mean) and np.array_equal(out.var, var)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "tilt", "dpm++2m", "ode"])
def test_a_prepared_sampler_at_other_scales_is_the_sampler_prepared_at_them(sampler):
    """``at`` keeps the step coefficients or plan and changes only the peak scales: bit for bit the same law."""
    cfg = np.array([[1.0, 2.5], [7.5, 4.0]])
    schedule = "constant" if sampler == "ode" else "cosine"
    moved = prepare_sampler(sampler, cfg=1.0, schedule=schedule, steps=12).at(cfg)
    direct = guided_moments(1.0, 0.5, [0.0, 0.3], 1.0, cfg=cfg, schedule=schedule, sampler=sampler, steps=12)
    out = moved.moments(1.0, 0.5, [0.0, 0.3], 1.0)
    np.testing.assert_array_equal(out.mean, direct.mean)
    np.testing.assert_array_equal(out.var, direct.var)
    with pytest.raises(QTMError, match="cfg"):
        moved.at([1.0, np.nan])
