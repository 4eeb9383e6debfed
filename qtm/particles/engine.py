"""Public API of the particle simulator: run replicates of the classic loop or of the guided-sampler chain.

Both functions return a :class:`ParticleResult` with per replicate, iteration and axis the
trait mean and the population's (MLE) variance; the chain also returns the occupancy of
each mixture component. ``kernel="numba"`` runs the compiled kernels (parallel over
replicates), ``kernel="numpy"`` the vectorised reference; both draw the same random
numbers, and replicate ``r`` depends only on ``(seed, replicate_offset + r)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qtm.errors import QTMError
from qtm.params import DATA_WORKFLOWS
from qtm.particles import reference
from qtm.particles.model import FITNESS_KINDS, ChainSetup, QGSetup
from qtm.particles.qg_kernel import qg_kernel
from qtm.particles.sampler_kernel import chain_kernel
from qtm.random import replicate_seeds
from qtm.validation import check_choice, check_int

KERNELS = ("numba", "numpy")


@dataclass(frozen=True)
class ParticleResult:
    """Statistics of each replicate's population per iteration.

    Attributes
    ----------
    replicates : numpy.ndarray of shape (R,)
        Global replicate indices.
    mean, var : numpy.ndarray of shape (R, T, d)
        Trait mean and MLE variance per axis of the population each iteration produced.
    occupancy : numpy.ndarray of shape (R, T, M)
        Share of the population in each mixture component (all ones for the classic loop).
    """

    replicates: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    occupancy: np.ndarray


def _keys(seed, replicates, offset) -> tuple[np.ndarray, np.ndarray]:
    count = check_int(replicates, "replicates", minimum=1)
    offset = check_int(offset, "replicate_offset", minimum=0)
    seed = check_int(seed, "seed", minimum=0)
    return replicate_seeds(seed, count, offset=offset), np.arange(offset, offset + count)


def simulate_qg(setup: QGSetup, *, replicates: int, seed: int, replicate_offset: int = 0,
                kernel: str = "numba") -> ParticleResult:
    """Run ``replicates`` independent populations of the classic selection loop.

    Examples
    --------
    >>> from qtm.particles.model import Fitness, QGSetup
    >>> setup = QGSetup(population=500, generations=1, fitness=Fitness("stabilizing", omega2=1.0))
    >>> result = simulate_qg(setup, replicates=200, seed=1)
    >>> round(float(result.var[:, 0, 0].mean()), 1)  # v ω² / (v + ω²) = 0.5
    0.5
    """
    check_choice(kernel, "kernel", KERNELS)
    keys, index = _keys(seed, replicates, replicate_offset)
    fit = setup.fitness
    d = setup.dims
    shape = (len(keys), setup.generations, d)
    mean, var = np.empty(shape), np.empty(shape)
    run = qg_kernel if kernel == "numba" else reference.qg_reference
    run(keys, setup.population, setup.generations, setup.data_mean, setup.data_var,
        FITNESS_KINDS.index(fit.kind),  # the kernels' FIT_* codes
        np.broadcast_to(np.asarray(fit.theta, float), (d,)).copy(),
        np.broadcast_to(np.asarray(fit.omega2, float), (d,)).copy(),
        setup.kept, float(fit.cfg), setup.finetune.terms, setup.finetune.finetune == "continue",
        setup.cond_mean, setup.cond_var, setup.uncond_mean, setup.uncond_var, setup.environmental_var,
        setup.mutation, setup.resampling == "systematic", setup.n_real,
        DATA_WORKFLOWS.index(setup.data_workflow), mean, var)
    _check_finite(mean, var)
    return ParticleResult(index, mean, var, np.ones((*shape[:2], 1)))


def simulate_chain(setup: ChainSetup, *, replicates: int, seed: int, replicate_offset: int = 0,
                   kernel: str = "numba") -> ParticleResult:
    """Run ``replicates`` independent chains: refit, then the K-step guided sampler on every particle.

    Examples
    --------
    >>> from qtm.particles.model import ChainSetup
    >>> setup = ChainSetup.build(population=200, iterations=2, cfg=1.0, steps=10)
    >>> result = simulate_chain(setup, replicates=4, seed=0)
    >>> result.mean.shape, result.occupancy.shape
    ((4, 2, 1), (4, 2, 1))
    """
    check_choice(kernel, "kernel", KERNELS)
    keys, index = _keys(seed, replicates, replicate_offset)
    abar_t, abar_prev = setup.step_alphas
    m, d = setup.data.modes, setup.data.dims
    shape = (len(keys), setup.iterations)
    mean, var, occupancy = np.empty((*shape, d)), np.empty((*shape, d)), np.empty((*shape, m))
    run = chain_kernel if kernel == "numba" else reference.chain_reference
    run(keys, setup.population, setup.iterations, setup.data.weights, setup.data.means,
        setup.data.variances, setup.cond.weights, setup.cond.means, setup.cond.variances,
        setup.uncond.weights, setup.uncond.means, setup.uncond.variances, setup.finetune.terms,
        setup.finetune.finetune == "continue", np.ascontiguousarray(abar_t),
        np.ascontiguousarray(abar_prev), np.ascontiguousarray(setup.scales), setup.eta, setup.mutation,
        setup.n_real, DATA_WORKFLOWS.index(setup.data_workflow), mean, var, occupancy)
    _check_finite(mean, var)
    return ParticleResult(index, mean, var, occupancy)


def _check_finite(mean, var) -> None:
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(var))):
        raise QTMError(
            "the particles left the range of floating point numbers (the guided sampler diverged); "
            "lower cfg or use a decaying schedule"
        )
