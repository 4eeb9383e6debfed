"""Forecast later iterations from a fit on the earlier ones, with prediction intervals and their coverage.

:func:`forecast` fits on iterations ``< K`` and simulates the later ones from the measured
state at ``K - 1``, drawing the parameters from their approximate posterior (normal, the
inverse Hessian), process noise at every step and the measurement noise of the start and of
the target, which gives 90 % prediction intervals for each caption and for the run-level
within-caption variance, and their coverage of the held-out measurements. The draws travel
through the transition together, as one batch. Every held-out value is also scored against
persistence and the trend (:mod:`validate.skill`), its CRPS taken from the draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import OptimizeResult

from qtm.calibration import Calibration
from qtm.errors import QTMError
from qtm.random import check_random_state
from validate.calibration import calibrated_parameters, fitted_states
from validate.errors import ValidateError
from validate.optimiser import FitResult, fit_tables, optimise, prediction_errors, transition_model
from validate.skill import RUN_LEVEL, crps, forecast_baselines, skill_table, skill_verdict
from validate.state_filter import filter_transitions
from validate.transition import GAIN_STEP, BaseMoments, Trajectory, for_group, mixture

#: Prediction intervals of the forecast.
FORECAST_LEVEL = 0.90
FORECAST_DRAWS = 1000


@dataclass
class Forecast(FitResult):
    """A fit on the first iterations with its forecast of the later ones; ``skill`` is
    :func:`validate.skill.skill_table`: the theory against persistence and the trend on every held-out value."""

    skill: pd.DataFrame | None = None


def forecast(
    trajectories: list[Trajectory],
    *,
    base: BaseMoments,
    forecast_from: int,
    draws: int = FORECAST_DRAWS,
    level: float = FORECAST_LEVEL,
    random_state=0,
    guidance: str = "per-setting",
    calibration: Calibration | None = None,
    states: str = "measured",
) -> Forecast:
    """Fit on the iterations ``< forecast_from``, then forecast the later ones with prediction intervals.

    With ``calibration`` nothing is fitted: the shared model's parameters, their standard errors and the
    process noise are the calibration's (:func:`validate.calibration.calibrated_parameters`; a fit on other
    chains), and the iterations ``< forecast_from`` give only the starting state and the in-sample rows; its
    fit's ``states`` (recorded in its provenance, else "measured") replace ``states``. With ``states="filtered"``
    the forecast starts from the filtered state (:mod:`validate.state_filter`).

    From the measured state at ``forecast_from - 1`` (with its measurement noise) the
    transition is iterated ``draws`` times with parameters drawn from N(estimate, inverse
    Hessian) (clipped to their bounds) and process noise at every step; the measurement
    noise of the target is added, so the intervals are for what a measurement will show.

    Returns
    -------
    Forecast
        ``predictions`` holds the in-sample one-step rows (``split`` "fit") and the forecast
        rows (``split`` "forecast", with ``lo``/``hi``, ``covered``); ``forecast`` per held-out
        run and iteration: ``run``, ``iteration``, ``predicted_var``, ``lo``, ``hi`` and
        ``measured_var`` (run-level within-caption variance, summed over axes),
        ``relative_error``, ``covered`` and ``caption_coverage`` (share of the per-caption
        means and log variances inside their intervals); ``goodness`` the forecast errors and
        coverages and the skill verdict (:func:`validate.skill.skill_verdict`); ``skill`` the scored rows.

    Examples
    --------
    >>> base = BaseMoments(cond=(np.zeros(1), np.ones(1)), uncond=(np.zeros(1), np.full(1, 2.0)))
    >>> var = [1.0]
    >>> for _ in range(5):
    ...     var.append(np.exp(0.5 * np.log(var[-1]) + 0.2))
    >>> run = Trajectory(run="a", setting="c", cfg=1.0, iterations=np.arange(6), mean=np.zeros((6, 1)),
    ...                  var=np.array(var)[:, None], population=10**5, sampler="tilt")
    >>> result = forecast([run, Trajectory(**{**run.__dict__, "group": "b"})], base=base, forecast_from=4, draws=200)
    >>> [row["iteration"] for row in result.forecast]
    [4, 5]
    >>> all(row["covered"] for row in result.forecast)
    True
    """
    if calibration is None:
        model, best = optimise(trajectories, base, forecast_from, guidance=guidance, states=states)
        fit, covariance = fit_tables(model, best, trajectories)
    else:
        model = transition_model(trajectories, base, forecast_from, guidance="shared",
                                 states=fitted_states(calibration))
        x, covariance = calibrated_parameters(calibration, model, where=_named(calibration))
        best = OptimizeResult(x=x, success=True, message=f"parameters from {_named(calibration)}, not fitted")
        fit, covariance = fit_tables(model, best, trajectories, covariance=covariance)
    if all(t.iterations.max() < forecast_from for t in trajectories):
        raise ValidateError(f"--forecast-from {forecast_from}: no finished iteration at or after it")
    rng = check_random_state(random_state)
    thetas = parameter_draws(model, best.x, covariance, draws=draws, random_state=rng)
    rows, summary, run_level = simulate_runs(model, thetas, base=base, start=forecast_from - 1, level=level,
                                             random_state=rng, point=best.x)
    if not summary:
        raise ValidateError(f"--forecast-from {forecast_from}: no run has its iteration {forecast_from - 1} measured")
    held_out = pd.DataFrame(rows)
    theory = pd.concat(
        [pd.DataFrame(run_level), held_out.rename(columns={"group": "caption"})], ignore_index=True
    )
    skill = skill_table(theory[list(run_level[0])], trajectories, base=base,
                        baselines=forecast_baselines(forecast_from))
    held_out = held_out.drop(columns="crps")
    fit = Forecast(**fit.__dict__, skill=skill)
    fit.predictions = pd.concat([fit.predictions, held_out], ignore_index=True)
    fit.forecast = summary
    fit.goodness.update(prediction_errors(fit.predictions, "forecast"))
    fit.goodness.update(
        {
            "forecast_from": forecast_from,
            **({} if calibration is None else {"forecast_calibration": {
                **calibration.source, "training_runs": len(calibration.provenance.get("training_runs", []))}}),
            "forecast_level": level,
            "forecast_caption_coverage": float(held_out["covered"].mean()),
            "forecast_run_coverage": float(np.mean([s["covered"] for s in summary])),
            "forecast_max_abs_relative_error_var": float(max(abs(s["relative_error"]) for s in summary)),
            **skill_verdict(skill),
        }
    )
    return fit


def _named(calibration: Calibration) -> str:
    """How error lines and the fit's message name a calibration: its file where it was read from one."""
    path = calibration.source.get("path")
    return "the calibration" if path is None else f"--calibration {path!r}"


def parameter_draws(model, x, covariance, *, draws: int, random_state) -> np.ndarray:
    """``draws`` parameter vectors from N(x, covariance), clipped to the model's bounds (an unidentified direction:
    its infinite variance taken as none, the estimate held)."""
    rng = check_random_state(random_state)
    low_b, high_b = np.array(model.bounds).T
    safe = np.where(np.isfinite(covariance), covariance, 0.0)
    safe = (safe + safe.T) / 2
    values, vectors = np.linalg.eigh(safe)
    thetas = x + (rng.standard_normal((draws, len(x))) * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    return np.clip(thetas, low_b, high_b)


def simulate_runs(model, thetas, *, base: BaseMoments, start: int, level: float, random_state, point=None):
    """Iterate every run of ``model.data`` from its measured state at iteration ``start`` with the parameter draws.

    Each draw starts from the measured moments plus their measurement noise (for a model with filtered states,
    from the state filtered with parameters ``point`` plus its variance, where iteration ``start`` is a transition's
    target), gains process noise at every step, and is compared with each later measured iteration through that
    measurement's noise.

    Returns
    -------
    rows : list of dict
        Per run, caption, later iteration, axis and quantity: the draws' median, 90 % interval, whether it
        covered the measurement, and the CRPS (trait units; ln var for log variances).
    summary : list of dict
        Per run and later iteration: the run-level within-caption variance predicted and measured.
    run_level : list of dict
        The same in ln var as skill rows (:data:`validate.skill.RUN_LEVEL`).
    """
    rng = check_random_state(random_state)
    d = model.data
    draws = len(thetas)
    tail = 100 * (1 - level) / 2
    rows, summary, run_level = [], [], []
    filtered = filter_transitions(model, point, GAIN_STEP)[4] if model.states == "filtered" else None
    for run, members in d.by_run.items():
        runs = [d.trajectories[r] for r in members]
        if any(start not in t.iterations for t in runs):
            continue
        later = sorted({int(t) for tr in runs for t in tr.iterations if t > start})
        if not later:
            continue
        idx = [int(np.flatnonzero(tr.iterations == start)[0]) for tr in runs]
        m0, l0, sm0, sl0 = d.measured(np.array(members), np.array(idx))
        if filtered is not None:
            m0, l0, sm0, sl0 = _filtered_start(model, filtered, members, idx, (m0, l0, sm0, sl0))
        mean = m0 + sm0 * rng.standard_normal((draws, *m0.shape))
        log = l0 + sl0 * rng.standard_normal((draws, *l0.shape))
        # Transition rows of this run's captions: the base moments and the setting of each member.
        proxy = np.array([np.flatnonzero(d.traj == r)[0] if (d.traj == r).any() else -1 for r in members])
        if (proxy < 0).any():
            continue
        f = runs[0].real_fraction
        if f > 0 and base.data is not None:
            data = np.array([np.asarray(for_group(base.data, tr.group)[0], float) for tr in runs]) / d.scale
            data_var = np.array([np.asarray(for_group(base.data, tr.group)[1], float) for tr in runs]) / d.scale**2
        for t in range(start + 1, max(later) + 1):
            if f > 0 and base.data is not None:
                mean, var = mixture((mean, np.exp(log)), (data, data_var), f)
                log = np.log(var)
            pool_mean = mean.mean(axis=1, keepdims=True)
            pool_log = np.log(np.exp(log).mean(axis=1, keepdims=True) + mean.var(axis=1, keepdims=True))
            new_mean, new_log = _step(model, thetas, mean, log, pool_mean, pool_log, proxy)
            own, common = model.noise(thetas)
            mean = new_mean + np.sqrt(own["mean"]) * rng.standard_normal(mean.shape)
            log = new_log + np.sqrt(own["log_var"]) * rng.standard_normal(log.shape)
            if common is not None:  # the run's shock, one per draw and axis, shared by its captions
                mean = mean + np.sqrt(common["mean"]) * rng.standard_normal((draws, 1, d.k))
                log = log + np.sqrt(common["log_var"]) * rng.standard_normal((draws, 1, d.k))
            present = [i for i, tr in enumerate(runs) if t in tr.iterations]
            if not present:
                continue
            pick = [int(np.flatnonzero(runs[i].iterations == t)[0]) for i in present]
            tm, tl, tsm, tsl = d.measured(np.array(members)[present], np.array(pick))
            seen_mean = mean[:, present] + tsm * rng.standard_normal(mean[:, present].shape)
            seen_log = log[:, present] + tsl * rng.standard_normal(log[:, present].shape)
            inside = []
            for c, i in enumerate(present):
                tr = runs[i]
                for axis in range(d.k):
                    for q, sims, measured in (("mean", seen_mean, tm), ("log_var", seen_log, tl)):
                        unit, shift = (d.scale[axis], 0.0) if q == "mean" else (1.0, 2 * np.log(d.scale[axis]))
                        sim = sims[:, c, axis]
                        lo, hi = np.nanpercentile(sim, [tail, 100 - tail])
                        value = measured[c, axis]
                        covered = bool(lo <= value <= hi)
                        inside.append(covered)
                        rows.append(
                            {
                                "run": run,
                                "group": tr.group,
                                "setting": tr.setting,
                                "iteration": t,
                                "axis": axis,
                                "quantity": q,
                                "measured": float(value * unit + shift),
                                "se": float(np.nanstd(sim) * unit),
                                "predicted": float(np.nanmedian(sim) * unit + shift),
                                "residual": float((value - np.nanmedian(sim)) * unit),
                                "z": float((value - np.nanmedian(sim)) / np.nanstd(sim)),
                                "split": "forecast",
                                "lo": float(lo * unit + shift),
                                "hi": float(hi * unit + shift),
                                "covered": covered,
                                "crps": crps(sim * unit + shift, value * unit + shift),
                            }
                        )
            if len(present) < len(runs):  # the run-level quantity needs every caption (as the baselines' series)
                continue
            # Run level: the within-caption variance (mean over captions), summed over the axes, in trait units.
            level_sims = (np.exp(seen_log) * d.scale**2).mean(axis=1).sum(axis=-1)
            measured_level = float((np.exp(tl) * d.scale**2).mean(axis=0).sum())
            lo, hi = np.nanpercentile(level_sims, [tail, 100 - tail])
            predicted_level = float(np.nanmedian(level_sims))
            # The same interval and median in ln var (a monotone map keeps the order statistics).
            run_level.append(
                {"run": run, "caption": RUN_LEVEL, "iteration": t, "axis": -1, "quantity": "log_var",
                 "measured": np.log(measured_level), "predicted": np.log(predicted_level), "lo": np.log(lo),
                 "hi": np.log(hi), "covered": bool(lo <= measured_level <= hi),
                 "crps": crps(np.log(level_sims), np.log(measured_level))}
            )
            summary.append(
                {
                    "run": run,
                    "iteration": t,
                    "predicted_var": predicted_level,
                    "lo": float(lo),
                    "hi": float(hi),
                    "measured_var": measured_level,
                    "relative_error": predicted_level / measured_level - 1.0,
                    "covered": bool(lo <= measured_level <= hi),
                    "caption_coverage": float(np.mean(inside)),
                }
            )
    return rows, summary, run_level


def _filtered_start(model, filtered, members, index, measured):
    """The filtered (mean, log var, their SDs) of trajectories ``members`` at rows ``index`` from the filter's
    states ``filtered`` (:func:`validate.state_filter.filter_transitions`): the measured ones where no transition
    targets that iteration."""
    d = model.data
    rows = [np.flatnonzero((d.traj == r) & (d.index == i)) for r, i in zip(members, index, strict=True)]
    if not all(len(row) for row in rows):
        return measured
    at = np.array([row[0] for row in rows])
    (mean, mean_var), (log, log_var) = filtered["mean"], filtered["log_var"]
    return mean[at], log[at], np.sqrt(mean_var[at]), np.sqrt(log_var[at])


def _step(model, thetas, mean, log, pool_mean, pool_log, rows):
    """One transition of every draw (leading axis), all draws in one pass of the sampler map."""
    try:
        with np.errstate(all="ignore"):
            return model.transition(thetas, mean, log, pool_mean, pool_log, rows=rows)
    except QTMError:  # some drawn parameter set has an improper tilt: no prediction from that one
        new_mean, new_log = np.empty_like(mean), np.empty_like(log)
        for b in range(len(thetas)):
            try:
                with np.errstate(all="ignore"):
                    new_mean[b], new_log[b] = model.transition(
                        thetas[b], mean[b], log[b], pool_mean[b], pool_log[b], rows=rows
                    )
            except QTMError:
                new_mean[b] = new_log[b] = np.nan
        return new_mean, new_log
