"""Verification check of the exact sampler map against diffusers' own scheduler.

``qtm`` never imports torch nor diffusers, so this check of :mod:`qtm.sampler_map`
lives with the real chain; it is a :class:`qtm.verify.Check` like those of
``qtm verify`` and runs through the same :func:`qtm.verify.run_checks` (same
z-scores, Bonferroni verdict, plot and ``verify.json``).

A cloud of particles ``x_K ~ N(0, 1)`` goes through diffusers' own
``DDIMScheduler.step`` with the analytic guided noise prediction of Gaussian
``p_c`` and ``p_u``, written here from its definition (``eps_hat(x) = b (x - a m) /
(a^2 v + b^2)`` per branch, ``eps_u + w_k (eps_c - eps_u)``), independently of
:mod:`qtm.sampler_map`; the guidance scale of each step comes from
:mod:`qtm.schedules`, the one definition that the real chain uses too. The output's
mean and variance are compared with :func:`qtm.sampler_map.guided_moments` (z-scores),
and its shape with the Gaussian the map predicts (Kolmogorov-Smirnov p-values). A
correct map fails the check with probability at most ``false_failure_rate`` (0.001
by default) over seeds.

Examples
--------
>>> result = run_check(size=0.01, seed=0)  # doctest: +SKIP
>>> result.status  # doctest: +SKIP
'pass'
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import stats

from qtm.diffusion import DiffusionConfig
from qtm.sampler_map import guided_moments
from qtm.schedules import CFGSchedule
from qtm.solvers import SchedulerConfig
from qtm.verify import FALSE_FAILURE_RATE, Check, CheckResult, Comparison, run_checks
from qtm.verify.base import from_rows, mean_se, scaled_count, var_se

#: (cond_mean, cond_var, uncond_mean, uncond_var, cfg, schedule, eta, steps); eta 1 is DDPM.
CASES = (
    (1.0, 0.5, 0.0, 1.0, 7.5, "constant", 0.0, 50),
    (1.0, 0.5, 0.0, 1.0, 7.5, "cosine", 0.0, 50),
    (-0.5, 2.0, 0.3, 1.5, 3.0, "linear:2", 0.5, 30),
    (1.0, 0.5, 0.0, 1.0, 7.5, "constant", 1.0, 50),
    (0.4, 0.2, -0.2, 0.6, 5.0, "cutoff:0.4", 1.0, 25),
)


def sampler_comparison(*, size: float, rng: np.random.Generator) -> Comparison:
    """Run every case through diffusers and compare the output with the exact sampler map.

    Parameters
    ----------
    size : float
        Factor on the number of particles (200,000 per case at 1, never below 2,000).
    rng : numpy.random.Generator
        Source of the seed of torch's generator.

    Returns
    -------
    qtm.verify.Comparison
        Mean and variance of every case (z-scores) and a KS p-value of its shape.

    Examples
    --------
    >>> c = sampler_comparison(size=0.01, rng=np.random.default_rng(0))  # doctest: +SKIP
    >>> len(c.labels), len(c.pvalues)  # doctest: +SKIP
    (10, 5)
    """
    import diffusers
    import torch

    config = DiffusionConfig()
    particles = scaled_count(200_000, size, 2_000)
    generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
    rows, pvalues = [], {}
    for cm, cv, um, uv, cfg, schedule, eta, steps in CASES:
        scheduler = diffusers.DDIMScheduler(**config.scheduler_config(), clip_sample=False)
        scheduler.set_timesteps(steps)
        abar_steps = scheduler.alphas_cumprod[scheduler.timesteps].double().numpy()
        scales = CFGSchedule.parse(schedule).scales(cfg, steps, alphas_cumprod=abar_steps)
        x = torch.randn(particles, generator=generator, dtype=torch.float64)
        for k, t in enumerate(scheduler.timesteps):
            abar = float(scheduler.alphas_cumprod[t])
            a, b = math.sqrt(abar), math.sqrt(1.0 - abar)
            eps_c = b * (x - a * cm) / (abar * cv + b * b)
            eps_u = b * (x - a * um) / (abar * uv + b * b)
            eps = eps_u + float(scales[k]) * (eps_c - eps_u)
            x = scheduler.step(eps, t, x, eta=eta, generator=generator).prev_sample
        sample = x.numpy()
        expected = guided_moments(cm, cv, um, uv, cfg=cfg, schedule=schedule, steps=steps, eta=eta, config=config)
        e_mean, e_var = float(expected.mean), float(expected.var)
        name = f"{schedule} w={cfg:g} eta={eta:g} K={steps}"
        rows += [(f"{name} mean", *mean_se(sample), e_mean), (f"{name} var", *var_se(sample), e_var)]
        pvalues[f"{name} KS normal"] = float(stats.kstest(sample, "norm", args=(e_mean, math.sqrt(e_var))).pvalue)
    note = f"{particles} particles per case through diffusers {diffusers.__version__} DDIMScheduler (SD v1.5 config)"
    return from_rows(rows, pvalues=pvalues, note=note)


#: (cond_mean, cond_var, uncond_mean, uncond_var, cfg, schedule) of the every-solver check: one row of particles each.
SOLVER_CASES = [
    (1.0, 0.5, 0.0, 1.0, 1.0, "constant"),
    (1.0, 0.5, 0.0, 1.0, 7.5, "cosine"),
    (-0.5, 2.0, 0.3, 1.5, 3.0, "linear:2"),
    (2.0, 0.3, 1.0, 1.0, 4.0, "interval:0.3:3"),
]
SD15 = SchedulerConfig.preset("sd15")
SD21V = SchedulerConfig.preset("sd21v")
KARRAS = SchedulerConfig(use_karras_sigmas=True)
#: (sampler, scheduler configuration, steps): every solver, both prediction types, Karras sigmas,
#: another spacing, and the first-order last step of DPM-Solver++ below 15 steps with sigma_min.
SOLVER_RUNS = [
    ("euler", SD15, 20), ("euler", SD21V, 20), ("euler", KARRAS, 20),
    ("euler", SchedulerConfig(timestep_spacing="leading"), 20),
    ("euler-a", SD15, 20), ("euler-a", SD21V, 20),
    ("dpm++2m", SD15, 20), ("dpm++2m", SD21V, 20), ("dpm++2m", KARRAS, 20),
    ("dpm++2m", SchedulerConfig(final_sigmas_type="sigma_min", timestep_spacing="trailing"), 10),
    ("dpm++2m", SchedulerConfig(final_sigmas_type="sigma_min"), 20),
    ("dpm++1s", SD15, 20), ("heun", SD15, 10), ("heun", SD21V, 10),
    ("heun", SchedulerConfig(use_karras_sigmas=True, final_sigmas_type="sigma_min"), 10),
    ("flow-euler", SchedulerConfig.preset("sd3"), 20), ("ddim", SD21V, 20),
]
def diffusers_scheduler(sampler, config):
    import diffusers

    cls = {
        "euler": diffusers.EulerDiscreteScheduler,
        "euler-a": diffusers.EulerAncestralDiscreteScheduler,
        "dpm++2m": diffusers.DPMSolverMultistepScheduler,
        "dpm++1s": diffusers.DPMSolverMultistepScheduler,
        "heun": diffusers.HeunDiscreteScheduler,
        "flow-euler": diffusers.FlowMatchEulerDiscreteScheduler,
        "ddim": diffusers.DDIMScheduler,
    }[sampler]
    return cls(**config.scheduler_kwargs(sampler))


def _noise_level(scheduler, sampler, i, t):
    """(alpha, s) of the model's input ``alpha x0 + s eps`` at loop step i, from the scheduler's own tables."""
    if sampler == "ddim":
        abar = float(scheduler.alphas_cumprod[t])
        return abar**0.5, (1 - abar) ** 0.5
    sigma = float(scheduler.sigmas[i])
    if sampler == "flow-euler":
        return 1 - sigma, sigma
    return 1 / (1 + sigma**2) ** 0.5, sigma / (1 + sigma**2) ** 0.5


def diffusers_cloud(sampler, config, steps, particles, seed, cases=SOLVER_CASES):
    """Run a diffusers scheduler as a pipeline does, with the exact guided predictor written from its definition.

    Per branch ``D(x) = m + alpha v (x - alpha m) / (alpha^2 v + s^2)`` on the model's input
    ``x = alpha x0 + s eps``; the model returns ``eps = (x - alpha D)/s``, ``v = alpha eps - s D``
    or the velocity ``eps - D`` and guidance combines the returned outputs,
    ``out_u + w_i (out_c - out_u)``, with ``w_i`` the schedule over the loop's steps.
    Returns the starting and the output particles, each of shape (cases, particles).
    """
    import torch

    scheduler = diffusers_scheduler(sampler, config)
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps
    levels = [_noise_level(scheduler, sampler, i, t) for i, t in enumerate(timesteps)]
    # Flow matching starts at pure noise, alpha-bar 0: floored as qtm.solvers does (sigma huge, not inf).
    abar = np.maximum([a * a / (a * a + s * s) for a, s in levels], np.finfo(float).tiny)
    scales = np.stack([CFGSchedule.parse(c[5]).scales(c[4], len(timesteps), alphas_cumprod=abar) for c in cases])
    params = torch.tensor([c[:4] for c in cases], dtype=torch.float64)
    cm, cv, um, uv = (params[:, j : j + 1] for j in range(4))
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(len(cases), particles, generator=generator, dtype=torch.float64)
    # Flow-matching pipelines (SD3) start from N(0, 1); the scheduler has no init_noise_sigma.
    x = x * getattr(scheduler, "init_noise_sigma", 1.0)
    start = x.numpy().copy()
    kind = "flow" if sampler == "flow-euler" else config.prediction_type
    # Heun's step draws no noise and takes no generator.
    extra = {} if sampler == "heun" else {"generator": generator}
    for i, t in enumerate(timesteps):
        x_in = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        alpha, s = levels[i]
        outputs = []
        for m, v in ((cm, cv), (um, uv)):
            d = m + alpha * v * (x_in - alpha * m) / (alpha * alpha * v + s * s)
            eps = (x_in - alpha * d) / s
            outputs.append({"epsilon": eps, "v_prediction": alpha * eps - s * d, "flow": eps - d}[kind])
        w = torch.tensor(scales[:, i : i + 1])
        out = outputs[1] + w * (outputs[0] - outputs[1])
        x = scheduler.step(out, t, x, **extra).prev_sample
    return start, x.numpy()


def solver_comparison(*, size: float, rng: np.random.Generator) -> Comparison:
    """Every solver of :data:`SOLVER_RUNS` through its diffusers scheduler, against :func:`guided_moments`.

    Parameters
    ----------
    size : float
        Factor on the number of particles (10^6 per case at 1, never below 2,000).
    rng : numpy.random.Generator
        Source of each run's torch seed.

    Returns
    -------
    qtm.verify.Comparison
        Mean and variance of every run and case (z-scores; the output of a Gaussian start is exactly
        Gaussian, so their standard errors are sqrt(v/n) and v sqrt(2/(n-1))).
    """
    import diffusers

    particles = scaled_count(1_000_000, size, 2_000)
    rows = []
    for sampler, config, steps in SOLVER_RUNS:
        _, out = diffusers_cloud(sampler, config, steps, particles, seed=int(rng.integers(2**31)))
        for case, sample in zip(SOLVER_CASES, out, strict=True):
            expected = guided_moments(*case[:4], cfg=case[4], schedule=case[5], sampler=sampler, steps=steps,
                                      scheduler=config)
            name = f"{sampler} ({config.prediction_type}{', karras' if config.use_karras_sigmas else ''}) " \
                   f"K={steps} w={case[4]:g} {case[5]}"
            rows += [(f"{name} mean", *mean_se(sample), float(expected.mean)),
                     (f"{name} var", *var_se(sample), float(expected.var))]
    note = f"{particles} particles per case through diffusers {diffusers.__version__}'s own schedulers"
    return from_rows(rows, note=note)


#: The check, under the name it had in ``qtm verify`` (it names its seed stream and its plot).
CHECK = Check(
    "sampler_map_diffusers",
    "Exact sampler map against diffusers' DDIMScheduler (DDIM, eta 0.5, DDPM)",
    sampler_comparison,
)
#: Every other solver and prediction type against its diffusers scheduler.
SOLVER_CHECK = Check(
    "solver_maps_diffusers",
    "Exact law of every solver against diffusers' schedulers (Euler, Euler-a, DPM-Solver++, Heun, flow Euler)",
    solver_comparison,
)
#: The checks of ``chain verify-sampler``, by name.
CHECKS = {CHECK.name: CHECK, SOLVER_CHECK.name: SOLVER_CHECK}


def run_check(
    *,
    names=(CHECK.name,),
    size: float = 1.0,
    seed: int = 0,
    out=None,
    false_failure_rate: float = FALSE_FAILURE_RATE,
    echo: Callable[[str], None] | None = None,
) -> list[CheckResult]:
    """Run the named checks of :data:`CHECKS`; with ``out``, write their plots and ``verify.json`` there.

    The options mean what they mean for :func:`qtm.verify.run_checks`.

    Examples
    --------
    >>> [r.status for r in run_check(size=0.01, seed=0)]  # doctest: +SKIP
    ['pass']
    """
    return run_checks(
        list(names), size=size, seed=seed, out=out, false_failure_rate=false_failure_rate, echo=echo,
        registry=CHECKS,
    )  # fmt: skip
