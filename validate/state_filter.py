"""The one-step fit with filtered states: each transition starts from the state the earlier ones estimate.

The one-step fit (:class:`validate.transition.TransitionModel`) regresses each iteration's measured state on the
previous iteration's *measured* state, the generated set the next model is finetuned on. That is exact if the next
model inherits what the sample shows; if it inherits what the model that drew the sample had, the sample is a noisy
view of the chain's state (per caption and axis the SE of ln var is about 0.28 with 50 images), and a slope fitted
on a noisy regressor is attenuated toward 0. The study's chains allow both readings (docs/study.md, "The fifth test
set"): ln var regressed on its previous value gives 0.72 per caption and axis but 0.91 on the run-level means,
where the sample noise averages out; a forecast with the fitted variance fidelity reverts too fast, and its
per-caption intervals level off while the errors grow.

With ``states="filtered"`` every source that is an earlier transition's target is replaced by its filtered value,
the extended Kalman filter's update of that transition's prediction with the measurement,

    x_hat = m + P / (P + s^2) (y - m),    var(x_hat) = P s^2 / (P + s^2),

``m`` the prediction, ``P`` its variance without the measurement's (the process noise, the run's shared shock and
the previous state's variance carried through the transition's gain), ``y`` the measurement and ``s`` its SE. The
likelihood is then the filter's, the product of the one-step predictive densities (each measurement against its
prediction from the filtered past, with the past's variance carried through the gain); sources that are no earlier
transition's target (real data, a first iteration, a run mixed with real data) keep their measured values. The
update treats each caption and axis alone: the run's shared shock enters ``P`` but does not couple the captions'
updates. A forecast or prediction then starts from the filtered state at its first iteration, with its variance.
The filter passes the sampler map once per iteration instead of once in all, which about doubles a fit's time on the
study's chains.
"""

from __future__ import annotations

import numpy as np

from validate.errors import ValidateError

#: How a transition's source state is estimated (:class:`validate.transition.TransitionModel`'s ``states``).
STATES = ("measured", "filtered")
#: ``chain validate``'s states where neither ``--states`` nor a calibration gives them: filtered since the seventh
#: test set's rule decided it (docs/study.md, "The seventh test set"); the model's building blocks keep measured.
DEFAULT_STATES = "filtered"


def check_states(states: str) -> None:
    """Refuse in one line a source-state estimate that is not one of :data:`STATES`."""
    if states not in STATES:
        raise ValidateError(f"--states {states!r} is not one of: {', '.join(STATES)}")


def filter_transitions(model, x, step: float):
    """The filter over ``model``'s transitions for parameter vector(s) ``x``.

    Returns
    -------
    residual, measurement, process, predicted : dict per quantity
        As :meth:`validate.transition.TransitionModel.terms`: the measurement variance holds the target's and the
        filtered source's variance carried through the gain.
    filtered : dict per quantity of (value, variance)
        Each transition row's filtered target state, arrays shaped like the rows' (with a leading batch axis for a
        batch ``x``).
    """
    d = model.data
    x = np.asarray(x, dtype=float)
    shape = (() if x.ndim == 1 else (len(x),)) + d.src_mean.shape
    measured = {"mean": (d.src_mean, d.src_se_mean, d.tgt_mean, d.tgt_se_mean),
                "log_var": (d.src_log, d.src_se_log, d.tgt_log, d.tgt_se_log)}
    source = {q: np.broadcast_to(v[0], shape).copy() for q, v in measured.items()}
    source_var = {q: np.broadcast_to(v[1] ** 2, shape).copy() for q, v in measured.items()}
    predicted, gain, state, state_var = ({q: np.empty(shape) for q in measured} for _ in range(4))
    process, common = model.noise(x)
    shock = {q: process[q] + (0.0 if common is None else common[q]) for q in measured}
    for depth in range(int(d.depth.max()) + 1):
        rows = np.flatnonzero(d.depth == depth)
        if depth:
            for q in measured:
                source[q][..., rows, :] = state[q][..., d.prev[rows], :]
                source_var[q][..., rows, :] = state_var[q][..., d.prev[rows], :]
        mean, log = source["mean"][..., rows, :], source["log_var"][..., rows, :]
        # The transition and its two finite-difference gains in one pass: a leading axis of 3.
        with np.errstate(all="ignore"):
            means, logs = model.transition(x, np.stack([mean, mean + step, mean]), np.stack([log, log, log + step]),
                                           d.pool_mean[rows], d.pool_log[rows], rows=rows)
        for q, out, k in (("mean", means, 1), ("log_var", logs, 2)):
            predicted[q][..., rows, :] = out[0]
            gain[q][..., rows, :] = (out[k] - out[0]) / step
            prior = shock[q] + gain[q][..., rows, :] ** 2 * source_var[q][..., rows, :]
            target, se = measured[q][2][rows], measured[q][3][rows]
            with np.errstate(all="ignore"):
                weight = prior / (prior + se**2)
                state[q][..., rows, :] = out[0] + weight * (target - out[0])
                state_var[q][..., rows, :] = weight * se**2
    residual = {q: measured[q][2] - predicted[q] for q in measured}
    measurement = {q: measured[q][3] ** 2 + gain[q] ** 2 * source_var[q] for q in measured}
    return residual, measurement, process, predicted, {q: (state[q], state_var[q]) for q in measured}
