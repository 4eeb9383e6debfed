"""Check of the verification suite that needs torch: the exact sampler map against diffusers' scheduler.

``qtm`` never imports torch, so ``qtm verify`` runs this module in a separate
process (``python -m validate.verify_sampler --size S --seed N``) when diffusers is
installed, and reads the comparison it prints as one JSON object on stdout.

A cloud of particles ``x_K ~ N(0, 1)`` goes through diffusers' own
``DDIMScheduler.step`` with the analytic guided noise prediction of Gaussian
``p_c`` and ``p_u``, written here from its definition (``eps_hat(x) = b (x - a m) /
(a^2 v + b^2)`` per branch, ``eps_u + w_k (eps_c - eps_u)``), independently of
:mod:`qtm.sampler_map`; the guidance scale of each step comes from
:mod:`qtm.schedules`, the one definition that the real chain uses too. The output's
mean and variance are compared with :func:`qtm.sampler_map.guided_moments` (z-scores),
and its shape with the Gaussian the map predicts (Kolmogorov-Smirnov p-values).

Examples
--------
>>> result = sampler_comparison(size=0.01, seed=0)  # doctest: +SKIP
>>> sorted(result)[:3]  # doctest: +SKIP
['expected', 'labels', 'note']
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
from scipy import stats

from qtm.diffusion import DiffusionConfig
from qtm.sampler_map import guided_moments
from qtm.schedules import CFGSchedule

#: (cond_mean, cond_var, uncond_mean, uncond_var, cfg, schedule, eta, steps); eta 1 is DDPM.
CASES = (
    (1.0, 0.5, 0.0, 1.0, 7.5, "constant", 0.0, 50),
    (1.0, 0.5, 0.0, 1.0, 7.5, "cosine", 0.0, 50),
    (-0.5, 2.0, 0.3, 1.5, 3.0, "linear:2", 0.5, 30),
    (1.0, 0.5, 0.0, 1.0, 7.5, "constant", 1.0, 50),
    (0.4, 0.2, -0.2, 0.6, 5.0, "cutoff:0.4", 1.0, 25),
)


def sampler_comparison(*, size: float, seed: int) -> dict:
    """Run every case through diffusers and return the comparison as a JSON-ready dict.

    Parameters
    ----------
    size : float
        Factor on the number of particles (200,000 per case at 1).
    seed : int
        Seed of torch's generator.

    Returns
    -------
    dict
        ``labels``, ``observed``, ``standard_error``, ``expected``, ``pvalues``, ``note``
        (the fields of :class:`qtm.verify.Comparison`).
    """
    import diffusers
    import torch

    config = DiffusionConfig()
    particles = max(round(200_000 * size), 2_000)
    generator = torch.Generator().manual_seed(seed)
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
        centred = sample - sample.mean()
        var = float(centred.var(ddof=1))
        var_se = math.sqrt(max(np.mean(centred**4) - var**2 * (particles - 3) / (particles - 1), 0.0) / particles)
        rows += [
            (f"{name} mean", float(sample.mean()), float(sample.std(ddof=1)) / math.sqrt(particles), e_mean),
            (f"{name} var", var, var_se, e_var),
        ]
        pvalues[f"{name} KS normal"] = float(stats.kstest(sample, "norm", args=(e_mean, math.sqrt(e_var))).pvalue)
    labels, observed, se, expected = (list(column) for column in zip(*rows, strict=True))
    note = f"{particles} particles per case through diffusers {diffusers.__version__} DDIMScheduler (SD v1.5 config)"
    return {
        "labels": labels,
        "observed": observed,
        "standard_error": se,
        "expected": expected,
        "pvalues": pvalues,
        "note": note,
    }


def main(argv=None) -> None:
    """Print :func:`sampler_comparison` as one JSON object (the protocol ``qtm verify`` reads)."""
    parser = argparse.ArgumentParser(prog="python -m validate.verify_sampler", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(json.dumps(sampler_comparison(size=args.size, seed=args.seed)))


if __name__ == "__main__":
    main()
