"""Fit the transition by maximum likelihood, with the parameters' covariance from the Hessian.

The parameters of :class:`validate.transition.TransitionModel` maximise the Gaussian one-step-ahead
likelihood (L-BFGS-B from a few starting points of ``w_eff``, the best local optimum kept; its
finite differences are evaluated as one batch); their intervals come from the central-difference
Hessian of the negative log likelihood (its stencil again one batch). The goodness reports reduced
χ² with and without the process noise and the lag-1 autocorrelation of the standardised residuals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from validate.errors import ValidateError
from validate.transition import (
    PENALTY,
    QUANTITIES,
    BaseMoments,
    Trajectory,
    TransitionModel,
    Transitions,
    setting_cfg,
)

#: Starting points of w_eff: 1 + scale * (cfg - 1); the best local optimum is kept.
START_W_SCALES = (0.3, 1.0, 0.1)


@dataclass
class FitResult:
    """Fitted parameters (table with standard errors and 95 % intervals), predictions and goodness of fit.

    ``forecast`` (only from :func:`forecast`): per held-out run and iteration, the run-level
    within-caption variance predicted (with its interval) and measured, and the coverage.
    ``calibration``: the shared model's fit as a :class:`qtm.calibration.Calibration`
    (:func:`validate.calibration.calibration_of`); None for the per-setting model. ``posterior``: the fitted
    :class:`validate.transition.TransitionModel`, the estimate and its covariance, from which predictions draw.
    """

    parameters: pd.DataFrame
    predictions: pd.DataFrame
    goodness: dict
    values: dict = field(default_factory=dict)
    forecast: list = field(default_factory=list)
    calibration: object = None
    posterior: tuple | None = None


def fit_theory(
    trajectories: list[Trajectory],
    *,
    base: BaseMoments | None = None,
    fit_until: int | None = None,
    guidance: str = "per-setting",
    states: str = "measured",
) -> FitResult:
    """One-step-ahead maximum-likelihood fit of the theory's transition to measured trajectories.

    Parameters
    ----------
    trajectories : list of Trajectory
        One per run and caption; all with the same number of trait axes.
    base : BaseMoments
        The base model's measured branches (required) and the real data (optional: the
        transition into iteration 0 and ``--real-fraction`` need it).
    fit_until : int, optional
        Use only the transitions into iterations ``< fit_until``.
    guidance : {"per-setting", "shared"}
        A free ``w_eff`` per CFG setting, or one model for every setting
        (:class:`validate.transition.TransitionModel`).
    states : {"measured", "filtered"}
        Each transition's source state as measured, or filtered by the earlier transitions
        (:mod:`validate.state_filter`).

    Returns
    -------
    FitResult

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> base = BaseMoments(cond=(np.zeros(1), np.ones(1)), uncond=(np.zeros(1), np.full(1, 2.0)))
    >>> mean, var = [2.0], [1.0]
    >>> for _ in range(5):  # a CFG-1 chain with rho = 0.6, rho_v = 0.5, mu = 0.2, no sampler narrowing
    ...     mean.append(0.6 * mean[-1]); var.append(np.exp(0.5 * np.log(var[-1]) + 0.2))
    >>> run = Trajectory(run="a", setting="cfg=1", cfg=1.0, iterations=np.arange(6), mean=np.array(mean)[:, None],
    ...                  var=np.array(var)[:, None], population=10**6, sampler="tilt")
    >>> fit = fit_theory([run], base=base)
    >>> round(fit.values[("fidelity", "", -1)], 2), round(fit.values[("var_fidelity", "", -1)], 2)
    (0.6, 0.5)
    """
    model, best = optimise(trajectories, base, fit_until, guidance=guidance, states=states)
    return fit_tables(model, best, trajectories)[0]


def transition_model(trajectories, base, fit_until, *, guidance: str = "per-setting",
                     states: str = "measured") -> TransitionModel:
    """The transition model of ``trajectories`` (their transitions into iterations ``< fit_until``), after the
    checks that it can be evaluated: finite, positive variances and the base moments of every caption."""
    if not trajectories:
        raise ValidateError("nothing to fit: no run has a finished iteration")
    for trajectory in trajectories:
        bad = ~(np.isfinite(trajectory.mean) & np.isfinite(trajectory.var) & (trajectory.var > 0))
        if bad.any():
            row, axis = np.argwhere(bad)[0]
            raise ValidateError(
                f"{trajectory.run}: iteration {trajectory.iterations[row]} has no positive trait variance on "
                f"axis {axis} (identical images, or fewer than 2); the log-variance fit needs more images"
            )
    base = base if base is not None else BaseMoments()
    for name in ("cond", "data"):
        moments = getattr(base, name)
        missing = sorted({t.group for t in trajectories} - set(moments)) if isinstance(moments, dict) else []
        if missing:
            raise ValidateError(
                f"no {name} moments for caption {missing[0]!r}; measure every caption's reference points "
                "(--make-reference) or fit with --group none"
            )
    return TransitionModel(Transitions(trajectories, base, fit_until), guidance=guidance, states=states)


def optimise(trajectories, base, fit_until, *, guidance: str = "per-setting", states: str = "measured"):
    model = transition_model(trajectories, base, fit_until, guidance=guidance, states=states)
    if model.n_values() <= len(model.names):
        raise ValidateError(
            f"the fit has {len(model.names)} parameters but only {model.n_values()} measured values"
            + (f" before --forecast-from {fit_until}" if fit_until is not None else "")
            + "; use more iterations, more captions or more axes"
        )
    best = None
    several = model.data.settings or (guidance == "shared" and (model.data.cfg != 1.0).any())
    for w_scale in START_W_SCALES if several else START_W_SCALES[:1]:
        start = model.start(w_scale)
        if model.nll(start) >= PENALTY:
            continue
        result = minimize(
            model.nll, start, method="L-BFGS-B", bounds=model.bounds, options={"workers": model.map_nll}
        )
        if best is None or result.fun < best.fun:
            best = result
    if best is None:
        raise ValidateError("the transition overflows at every starting point; the traits are far off unit scale")
    return model, best


def fit_tables(model, best, trajectories, *, covariance=None) -> tuple[FitResult, np.ndarray]:
    """The fit's tables and goodness, and the parameters' covariance: ``covariance`` where given (parameters taken
    from elsewhere, :func:`validate.calibration.calibrated_parameters`), else the inverse Hessian of the NLL."""
    x = best.x
    if covariance is None:
        with np.errstate(all="ignore"):
            curvature = hessian(model.nll_many, x, model.bounds)
        covariance = _covariance(curvature)
    stderr = np.sqrt(np.diag(covariance))
    residual, measurement, own, predicted = model.terms(x)
    common = model.noise(x)[1]
    # Each value's whole process variance: its caption's own and its run's common shock (correlated in a block).
    process = {q: own[q] + (common[q] if common is not None else 0.0) for q in QUANTITIES}
    z = {q: residual[q] / np.sqrt(measurement[q] + process[q]) for q in QUANTITIES}
    chi2 = float(sum(np.sum(z[q] ** 2) for q in QUANTITIES))
    chi2_measurement = float(sum(np.sum(residual[q] ** 2 / measurement[q]) for q in QUANTITIES))
    n_values = model.n_values()
    dof = n_values - len(model.names)
    parameters = pd.DataFrame(
        [
            {
                "parameter": name,
                "setting": setting,
                "axis": axis,
                "cfg": setting_cfg(trajectories, setting) if name == "w_eff" else np.nan,
                "estimate": float(value),
                "stderr": float(err),
                "lo": float(value - 1.96 * err),
                "hi": float(value + 1.96 * err),
                "bound": at_bound(value, limits),
            }
            for (name, setting, axis), value, err, limits in zip(model.names, x, stderr, model.bounds, strict=True)
        ]
    )
    predictions = _prediction_table(model, residual, predicted, measurement, process, z)
    goodness = {
        "chi2": chi2,
        "dof": dof,
        "reduced_chi2": chi2 / dof if dof > 0 else float("nan"),
        # Without the fitted process noise: how far measurement noise alone is from explaining the residuals.
        "reduced_chi2_measurement": chi2_measurement / (dof + 2) if dof + 2 > 0 else float("nan"),
        "n_values": n_values,
        "n_parameters": len(model.names),
        "states": model.states,
        "success": bool(best.success),
        "message": str(best.message),
        "process_sd_mean": float(np.sqrt(process["mean"])),
        "process_sd_log_var": float(np.sqrt(process["log_var"])),
        **{f"common_share_{q}": float(common[q] / process[q]) if common is not None else 0.0 for q in QUANTITIES},
        "measurement_sd_mean": float(np.sqrt(np.mean(measurement["mean"]))),
        "measurement_sd_log_var": float(np.sqrt(np.mean(measurement["log_var"]))),
        "residual_lag1_autocorrelation": _lag1(predictions),
        **prediction_errors(predictions, "fit"),
    }
    values = model.unpack(x)
    return FitResult(
        parameters=parameters,
        predictions=predictions,
        goodness=goodness,
        values=values,
        forecast=[],
        posterior=(model, x, covariance),
    ), covariance


def _prediction_table(model, residual, predicted, measurement, process, z) -> pd.DataFrame:
    d = model.data
    rows = []
    for j, (r, t) in enumerate(zip(d.traj, d.iteration, strict=True)):
        tr = d.trajectories[r]
        for axis in range(d.k):
            for q in QUANTITIES:
                # Back to trait units: a mean is scaled by the axis' SD, a log variance shifted by its log.
                unit, shift = (d.scale[axis], 0.0) if q == "mean" else (1.0, 2 * np.log(d.scale[axis]))
                rows.append(
                    {
                        "run": tr.run,
                        "group": tr.group,
                        "setting": tr.setting,
                        "iteration": int(t),
                        "axis": axis,
                        "quantity": q,
                        "measured": float((predicted[q][j, axis] + residual[q][j, axis]) * unit + shift),
                        "se": float(np.sqrt(measurement[q][j, axis] + process[q]) * unit),
                        "predicted": float(predicted[q][j, axis] * unit + shift),
                        "residual": float(residual[q][j, axis] * unit),
                        "z": float(z[q][j, axis]),
                        "split": "fit",
                    }
                )
    return pd.DataFrame(rows)


def _lag1(predictions: pd.DataFrame) -> float:
    """Lag-1 autocorrelation of the standardised residuals within each (run, caption, axis, quantity) series."""
    pairs = []
    for _, rows in predictions.groupby(["run", "group", "axis", "quantity"]):
        rows = rows.sort_values("iteration")
        t, z = rows["iteration"].to_numpy(), rows["z"].to_numpy()
        follow = np.flatnonzero(np.diff(t) == 1)
        pairs += [(z[i], z[i + 1]) for i in follow]
    if len(pairs) < 3:
        return float("nan")
    a, b = np.array(pairs).T
    return float(np.corrcoef(a, b)[0, 1])


def prediction_errors(predictions: pd.DataFrame, split: str) -> dict:
    part = predictions[predictions["split"] == split]
    out = {}
    for quantity in QUANTITIES:
        chosen = part[part["quantity"] == quantity]
        out[f"{split}_rmse_{quantity}"] = float(np.sqrt(np.mean(chosen["residual"] ** 2))) if len(chosen) else np.nan
    out[f"{split}_rms_z"] = float(np.sqrt(np.mean(part["z"] ** 2))) if len(part) else np.nan
    return out




def at_bound(value: float, limits: tuple[float, float], *, share: float = 1e-6) -> str:
    """``"lower"`` or ``"upper"`` where a fitted value sits on that end of its range (within ``share`` of the
    range), else ``""``: there the likelihood's optimum is the bound, and a Hessian interval is no confidence
    interval.

    Examples
    --------
    >>> at_bound(0.0, (0.0, 10.0)), at_bound(1.0, (0.0, 1.0)), at_bound(0.5, (0.0, 1.0))
    ('lower', 'upper', '')
    """
    low, high = limits
    tolerance = share * (high - low)
    return "lower" if value <= low + tolerance else "upper" if value >= high - tolerance else ""


def hessian(many, x, bounds, step=1e-3) -> np.ndarray:
    """Central-difference Hessian of the function whose batch form is ``many``, the steps kept inside the bounds."""
    x = np.asarray(x, float)
    n = len(x)
    h = np.array(
        [min(step * max(1.0, abs(v)), max((hi - lo) / 4, 1e-8)) for v, (lo, hi) in zip(x, bounds, strict=True)]
    )
    centre = np.clip(
        x,
        [lo + hh for (lo, _), hh in zip(bounds, h, strict=True)],
        [hi - hh for (_, hi), hh in zip(bounds, h, strict=True)],
    )
    # The stencil's points, all evaluated at once: the centre, then per (i, j) the points of its difference.
    points, where = [centre], {}
    for i in range(n):
        for j in range(i, n):
            ei, ej = np.eye(n)[i] * h[i], np.eye(n)[j] * h[j]
            stencil = [centre + ei, centre - ei] if i == j else [
                centre + ei + ej, centre + ei - ej, centre - ei + ej, centre - ei - ej
            ]
            where[i, j] = len(points)
            points += stencil
    values = many(np.array(points))
    f0 = values[0]
    out = np.empty((n, n))
    for (i, j), at in where.items():
        if i == j:
            value = (values[at] - 2 * f0 + values[at + 1]) / h[i] ** 2
        else:
            value = (values[at] - values[at + 1] - values[at + 2] + values[at + 3]) / (4 * h[i] * h[j])
        out[i, j] = out[j, i] = value
    return out


def _covariance(hessian: np.ndarray) -> np.ndarray:
    """Inverse Hessian; a direction the likelihood does not curve in gets infinite variance (an unidentified
    parameter's SE is then inf, not the 0 a pseudo-inverse would give)."""
    if not np.isfinite(hessian).all():
        return np.full(hessian.shape, np.inf)
    values, vectors = np.linalg.eigh((hessian + hessian.T) / 2)
    flat = values <= 1e-9 * max(np.abs(values).max(), 1e-300)
    inverse = np.where(flat, 0.0, 1.0 / np.where(flat, 1.0, values))
    covariance = (vectors * inverse) @ vectors.T
    loose = (np.abs(vectors[:, flat]) > 1e-6).any(axis=1)
    covariance[loose, :] = covariance[:, loose] = np.inf
    return covariance


