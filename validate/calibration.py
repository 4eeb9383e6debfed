"""The shared fit (one model for every setting) as a calibration file for ``qtm simulate --calibration``."""

from __future__ import annotations

from collections import Counter

import numpy as np

from qtm.calibration import Calibration
from validate.optimiser import FitResult
from validate.transition import QUANTITIES, BaseMoments, Trajectory

#: The shared model's parameters, named as qtm's chain parameters (:mod:`qtm.params`).
SHARED_PARAMETERS = ("fidelity", "uncond_drift", "var_fidelity", "var_shift", "guidance_gain")
#: The fit's process variances (each caption's own, its run's common shock); the calibration holds their sum's SD.
PROCESS_NOISE = ("log_process_var", "log_common_var")


def calibration_of(fit: FitResult, trajectories: list[Trajectory], *, base: BaseMoments) -> Calibration:
    """The shared fit as a :class:`qtm.calibration.Calibration` for ``qtm simulate --calibration``.

    The model is one typical caption: the base conditional branch and the real data averaged over captions
    (means) and their within-caption variances averaged; every axis in SDs of the base model's unconditional
    branch, the units the fit's sampler map works in (the sampler's law is not scale-free). The moments
    engine's unconditional branch then moves toward that one caption's data, where the fit's moves toward the
    pool of all captions: between-caption spread is left out.
    """
    values = fit.values
    scale = np.sqrt(np.asarray(base.uncond[1], float))
    samplers = Counter((t.sampler, t.steps) for t in trajectories)
    (sampler, steps), _ = samplers.most_common(1)[0]

    def typical(moments):
        pairs = list(moments.values()) if isinstance(moments, dict) else [moments]
        mean = np.mean([np.asarray(m, float) for m, _ in pairs], axis=0) / scale
        var = np.mean([np.asarray(v, float) for _, v in pairs], axis=0) / scale**2
        return mean.tolist(), var.tolist()

    cond = typical(base.cond)
    data = typical(base.data) if base.data is not None else cond
    errors = fit.parameters.set_index("parameter")["stderr"]
    shared = {name: values[(name, "", -1)] for name in SHARED_PARAMETERS}
    return Calibration(
        parameters={**shared, "sampler": sampler, "steps": int(steps)},
        model={"cond_mean": cond[0], "cond_var": cond[1], "uncond_mean": (np.asarray(base.uncond[0], float)
               / scale).tolist(), "uncond_var": [1.0] * len(scale), "data_mean": data[0], "data_var": data[1]},
        noise={f"process_sd_{q}": float(np.sqrt(sum(np.exp(values[(name, q, -1)]) for name in PROCESS_NOISE
                                                    if (name, q, -1) in values))) for q in QUANTITIES},
        standard_errors={name: float(errors[name]) for name in SHARED_PARAMETERS},
        provenance={"fit": "chain validate, the shared model (--guidance shared or --predict)",
                    "units": "trait axes in SDs of the base model's unconditional branch",
                    "training_runs": sorted({t.run for t in trajectories}),
                    "sampler_settings": {f"{a} {b}": n for (a, b), n in samplers.items()}},
    )
