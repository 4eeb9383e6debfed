"""The shared fit (one model for every setting) as a calibration file for ``qtm simulate --calibration``."""

from __future__ import annotations

from collections import Counter

import numpy as np

from qtm.calibration import Calibration
from validate.errors import ValidateError
from validate.optimiser import FitResult
from validate.transition import LOG_NOISE_FLOOR, QUANTITIES, BaseMoments, Trajectory, TransitionModel, for_group

#: The shared model's parameters, named as qtm's chain parameters (:mod:`qtm.params`).
SHARED_PARAMETERS = ("fidelity", "uncond_drift", "var_fidelity", "var_shift", "guidance_gain", "selection_slope")
#: The fit's process variances (each caption's own, its run's common shock); the calibration holds their sum's SD.
PROCESS_NOISE = ("log_process_var", "log_common_var")


def calibration_of(fit: FitResult, trajectories: list[Trajectory], *, base: BaseMoments) -> Calibration:
    """The shared fit as a :class:`qtm.calibration.Calibration` for ``qtm simulate --calibration``.

    The model is one typical caption, every axis in SDs of the base model's unconditional branch (the units the
    fit's sampler map works in: the sampler's law is not scale-free). Its base conditional branch lies as far
    from the unconditional branch as the captions' do in root mean square per axis (guidance selects on that
    distance, the Gaussian law's selection growing with its square), on the side of their mean offset; its real
    data lie where each caption's data lie from that caption's branch, averaged with each offset turned to the
    typical caption's side; its variances are the captions' mean within-caption variances. The captions' mean
    position would instead put the caption on the unconditional branch (the unconditional model is their
    mixture), where guidance has nothing to select. With one caption the model is that caption. The moments
    engine's unconditional branch then moves toward the typical caption's data, where the fit's moves toward
    the pool of all captions: between-caption spread is left out.
    """
    values = fit.values
    scale = np.sqrt(np.asarray(base.uncond[1], float))
    samplers = Counter((t.sampler, t.steps) for t in trajectories)
    (sampler, steps), _ = samplers.most_common(1)[0]

    uncond_mean = np.asarray(base.uncond[0], float) / scale
    cond, data = typical_caption(base, scale, uncond_mean)
    errors = fit.parameters.set_index("parameter")["stderr"]
    shared = {name: values[(name, "", -1)] for name in SHARED_PARAMETERS}
    return Calibration(
        parameters={**shared, "sampler": sampler, "steps": int(steps)},
        model={"cond_mean": cond[0], "cond_var": cond[1], "uncond_mean": uncond_mean.tolist(),
               "uncond_var": [1.0] * len(scale), "data_mean": data[0], "data_var": data[1]},
        noise={**{f"process_sd_{q}": float(np.sqrt(sum(np.exp(values[(name, q, -1)]) for name in PROCESS_NOISE
                                                       if (name, q, -1) in values))) for q in QUANTITIES},
               **{f"process_sd_common_{q}": float(np.sqrt(np.exp(values[("log_common_var", q, -1)])))
                  for q in QUANTITIES if ("log_common_var", q, -1) in values}},
        standard_errors={name: float(errors[name]) for name in SHARED_PARAMETERS},
        provenance={"fit": "chain validate, the shared model (--guidance shared or --predict)",
                    "units": "trait axes in SDs of the base model's unconditional branch",
                    # The fit's source states (validate.state_filter): a forecast with these parameters starts alike.
                    "states": fit.goodness["states"],
                    "training_runs": sorted({t.run for t in trajectories}),
                    "sampler_settings": {f"{a} {b}": n for (a, b), n in samplers.items()}},
    )


def typical_caption(base: BaseMoments, scale: np.ndarray, uncond_mean: np.ndarray) -> tuple[tuple, tuple]:
    """(mean, var) lists of the typical caption's base conditional branch and of its real data, in ``scale`` units
    (:func:`calibration_of`).

    Examples
    --------
    >>> base = BaseMoments(cond={"a": (np.array([1.0]), np.array([0.5])), "b": (np.array([-3.0]), np.array([0.7]))},
    ...                    uncond=(np.zeros(1), np.ones(1)),
    ...                    data={"a": (np.array([1.5]), np.array([0.2])), "b": (np.array([-3.5]), np.array([0.4]))})
    >>> typical_caption(base, np.ones(1), np.zeros(1))
    (([-2.23606797749979], [0.6]), ([-2.73606797749979], [0.30000000000000004]))
    """
    captions = list(base.cond) if isinstance(base.cond, dict) else [""]

    def per_caption(moments, names):
        pairs = [for_group(moments, name) for name in names]
        return (np.array([np.asarray(m, float) for m, _ in pairs]) / scale,
                np.array([np.asarray(v, float) for _, v in pairs]) / scale**2)

    cond_means, cond_vars = per_caption(base.cond, captions)
    offsets = cond_means - uncond_mean
    side = np.where(offsets.mean(axis=0) < 0, -1.0, 1.0)
    cond_mean = uncond_mean + side * np.sqrt(np.mean(offsets**2, axis=0))
    cond = (cond_mean.tolist(), cond_vars.mean(axis=0).tolist())
    # Real data of a caption the base model was not measured on (or none at all) cannot be placed beside it.
    measured = [i for i, name in enumerate(captions) if not isinstance(base.data, dict) or name in base.data]
    if base.data is None or not measured:
        return cond, cond
    data_means, data_vars = per_caption(base.data, [captions[i] for i in measured])
    turned = np.where(offsets[measured] < 0, -1.0, 1.0) * side
    data_mean = cond_mean + np.mean(turned * (data_means - cond_means[measured]), axis=0)
    return cond, (data_mean.tolist(), data_vars.mean(axis=0).tolist())


def fitted_states(calibration: Calibration) -> str:
    """The source states the calibration's fit used (:mod:`validate.state_filter`; "measured" where it does not say,
    as every calibration written before the filter): a forecast with its parameters starts alike."""
    return calibration.provenance.get("states", "measured")


def check_shared_model(calibration: Calibration, *, where: str) -> None:
    """Refuse in one line a calibration the shared model cannot run: without a selection slope (version 1, the
    sampler's law) or a variance fidelity (a linear variance). ``where`` names the file."""
    for name, meaning in (("selection_slope", "selection slope"), ("var_fidelity", "variance fidelity")):
        if calibration.parameters.get(name) is None:
            raise ValidateError(f"{where} has no {meaning}; the forecast's shared model needs one: write it again "
                                "with chain validate --guidance shared")


def calibrated_parameters(calibration: Calibration, model: TransitionModel, *, where: str) -> tuple:
    """The shared ``model``'s parameter vector and its covariance taken from ``calibration``, not fitted.

    The shared parameters are the calibration's, with its standard errors as independent SDs (the file keeps no
    correlations; a null or missing SE holds the estimate); the process noise is its per-iteration SD, split into the
    run-level shock a run's captions share and each caption's own as the calibration's fit split it (with one
    caption per run the whole noise is that caption's), held fixed. ``where`` names the file in error lines.

    Raises
    ------
    ValidateError
        One line: a calibration without a selection slope or a variance fidelity (the sampler's law of
        version 1, or a linear variance), or without the run-level part of its noise where the runs have
        several captions (written before format version 4).

    Examples
    --------
    >>> from validate.transition import Transitions
    >>> base = BaseMoments(cond=(np.zeros(1), np.ones(1)), uncond=(np.zeros(1), np.full(1, 2.0)))
    >>> run = Trajectory(run="a", setting="cfg=3", cfg=3.0, iterations=np.arange(3), mean=np.zeros((3, 1)),
    ...                  var=np.ones((3, 1)), population=50)
    >>> model = TransitionModel(Transitions([run], base, None), guidance="shared")
    >>> calibration = Calibration(
    ...     parameters={"fidelity": 0.8, "uncond_drift": 0.1, "var_fidelity": 0.8, "var_shift": 0.3,
    ...                 "guidance_gain": 0.5, "selection_slope": -0.1, "sampler": "ddim", "steps": 25},
    ...     model={}, noise={"process_sd_mean": 0.1, "process_sd_log_var": 0.2}, standard_errors={"fidelity": 0.05})
    >>> x, covariance = calibrated_parameters(calibration, model, where="c.json")
    >>> [round(float(v), 3) for v in x], round(float(covariance[0, 0]), 6)
    ([0.8, 0.1, 0.8, 0.3, 0.5, -0.1, -4.605, -3.219], 0.0025)
    """
    check_shared_model(calibration, where=where)
    parameters, noise = calibration.parameters, calibration.noise
    values = {(name, "", -1): float(parameters[name]) for name in SHARED_PARAMETERS}
    floor = float(np.exp(LOG_NOISE_FLOOR))
    for q in QUANTITIES:
        total, common = noise[f"process_sd_{q}"] ** 2, noise.get(f"process_sd_common_{q}")
        if model.common:
            if common is None:
                raise ValidateError(f"{where} does not split its process noise into the run-level shock and each "
                                    "caption's own (written before format version 4); write it again with chain "
                                    "validate --guidance shared")
            values[("log_common_var", q, -1)] = float(np.log(max(common**2, floor)))
            total -= common**2
        values[("log_process_var", q, -1)] = float(np.log(max(total, floor)))
    x = np.array([values[name] for name in model.names])
    errors = calibration.standard_errors
    variances = [(errors.get(name) or 0.0) ** 2 if name in SHARED_PARAMETERS else 0.0 for name, _, _ in model.names]
    return x, np.diag(variances)
