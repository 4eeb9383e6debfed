"""The particle simulator: finite populations, many replicates, compiled with Numba.

Two models: the classic quantitative-genetics loop (:func:`simulate_qg`) and the chain
of diffusion itself, each particle drawn by the actual K-step guided sampler with the
exact denoiser of the fitted Gaussian mixture (:func:`simulate_chain`). Parameter sweeps
over grids of such runs, streamed to a table, are in :mod:`qtm.particles.sweep`.
"""

from qtm.particles.engine import ParticleResult, simulate_chain, simulate_qg
from qtm.particles.model import ChainSetup, Finetune, Fitness, Mixture, QGSetup

__all__ = [
    "ChainSetup",
    "Finetune",
    "Fitness",
    "Mixture",
    "ParticleResult",
    "QGSetup",
    "simulate_chain",
    "simulate_qg",
]
