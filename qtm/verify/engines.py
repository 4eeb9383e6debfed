"""The particle engine's guided-sampler chain against the moments engine, iteration by iteration.

Examples
--------
>>> [label for label, _ in ENGINE_CASES][0]
'w=3 constant base'
"""

from __future__ import annotations

import numpy as np

from qtm.verify.base import Comparison, mean_se, register, scaled_count

#: Settings of ``particles_vs_moments``: (label, options shared by both engines).
ENGINE_CASES = (
    ("w=3 constant base", {"cfg": 3.0, "fidelity": 0.5}),
    ("w=7.5 cosine drop=0.2 continue", {"cfg": 7.5, "schedule": "cosine", "fidelity": 0.5, "drop": 0.2,
                                        "finetune": "continue"}),
    ("w=5 linear ddpm rho=1 drop=0.5", {"cfg": 5.0, "schedule": "linear", "sampler": "ddpm", "fidelity": 1.0,
                                        "drop": 0.5, "finetune": "continue"}),
    ("w=1 real=0.2 rho=0.8", {"cfg": 1.0, "fidelity": 0.8, "real_fraction": 0.2}),
)


@register("particles_vs_moments", "Particle engine (guided-sampler chain) against the moments engine")
def _particles_vs_moments(*, size: float, rng) -> Comparison:
    """Replicate means of the particle chain's trait mean and variance against the moments engine.

    Both engines get the same model (base ``p_c = N(1, 1)``, ``p_u = N(0, 1.5)``, data
    ``N(1, 1)``), schedule, sampler, fidelities and finetuning mode; the moments engine
    takes the finite-``N`` refit in expectation (``population=N``). What remains is an
    ``O(1/N)`` nonlinearity bias, well below the standard errors at these sizes.
    Standard errors from the replicates.
    """
    from qtm.particles import ChainSetup, simulate_chain
    from qtm.recursion import simulate_moments

    n = scaled_count(10_000, size, 500)
    replicates = scaled_count(16, size, 8)
    iterations, steps = 5, 25
    model = {"cond_mean": 1.0, "cond_var": 1.0, "uncond_mean": 0.0, "uncond_var": 1.5, "data_mean": 1.0,
             "data_var": 1.0}
    labels, observed, se, expected, x, series = [], [], [], [], [], []
    for name, options in ENGINE_CASES:
        setup = ChainSetup.build(population=n, iterations=iterations, steps=steps, **model, **options)
        result = simulate_chain(setup, replicates=replicates, seed=int(rng.integers(2**31)))
        theory = simulate_moments(**model, **options, population=n, iterations=iterations, steps=steps)
        for stat, values, predicted in (("mean", result.mean, theory.mean), ("var", result.var, theory.var)):
            average, error = mean_se(values[:, :, 0], axis=0)
            labels += [f"{name} {stat} t={t}" for t in range(iterations)]
            observed.append(average)
            se.append(error)
            expected.append(predicted)
            x.append(np.arange(iterations))
            series += [f"{name} {stat}"] * iterations
    return Comparison(
        tuple(labels), np.concatenate(observed), np.concatenate(se), np.concatenate(expected),
        x=np.concatenate(x), series=tuple(series), dof=replicates - 1,
        note=f"N={n}, {replicates} replicates, {iterations} iterations, {steps} steps; p_c=N(1,1), p_u=N(0,1.5)",
    )  # fmt: skip
