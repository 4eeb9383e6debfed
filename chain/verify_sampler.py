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


#: The check, under the name it had in ``qtm verify`` (it names its seed stream and its plot).
CHECK = Check(
    "sampler_map_diffusers",
    "Exact sampler map against diffusers' DDIMScheduler (DDIM, eta 0.5, DDPM)",
    sampler_comparison,
)


def run_check(
    *,
    size: float = 1.0,
    seed: int = 0,
    out=None,
    false_failure_rate: float = FALSE_FAILURE_RATE,
    echo: Callable[[str], None] | None = None,
) -> CheckResult:
    """Run the sampler-map check; with ``out``, write its plot and ``verify.json`` there.

    The options mean what they mean for :func:`qtm.verify.run_checks`.

    Examples
    --------
    >>> run_check(size=0.01, seed=0).status  # doctest: +SKIP
    'pass'
    """
    (result,) = run_checks(
        size=size, seed=seed, out=out, false_failure_rate=false_failure_rate, echo=echo,
        registry={CHECK.name: CHECK},
    )  # fmt: skip
    return result
