"""Fit the theory's transition one step ahead, and forecast later iterations with calibrated intervals.

The state of a chain is measured at every iteration: per caption (a trajectory's
``group``) and trait axis, the mean and the log variance of the generated set. The fit
predicts each iteration's state from the *measured* previous one (its training set
``D_t``: the real data at ``t = 0``, else iteration ``t - 1``'s images, mixed with the real
data by ``real_fraction``), never by running the recursion from iteration 0, so a
finetuning deviation is counted once, not at every later iteration. The transition is
the theory's (:mod:`qtm.gaussian`, :mod:`qtm.sampler_map`; parameter names as in
:mod:`qtm.params`):

- finetuning from the base model ``(m_B, v_B)`` (per caption, measured on
  ``RUN/reference/cond``): ``m_c = m_B + rho (m_D - m_B)`` (``fidelity``) and, in log space,
  ``ln v_c = ln v_B + rho_v (ln v_D - ln v_B) + mu`` (``var_fidelity``, ``var_shift``);
- the unconditional branch (measured base ``RUN/reference/uncond``) moves toward the pooled
  training set with its own free fidelity ``rho_u`` (``uncond_fidelity``; no ``drop * rho``
  default), its variance terms scaled by :func:`qtm.params.uncond_share`;
- the exact guided-sampler map :func:`qtm.sampler_map.guided_moments` with the run's
  sampler, steps and schedule, and an effective peak scale ``w_eff`` per CFG setting (1 for
  CFG-1 settings). Trait axes are scaled by the base model's unconditional SD first, so
  the sampler sees unit-scale data as a diffusion model does.

Errors: measurement noise of the target (``sqrt(v/n)`` for a mean, ``sqrt((kurtosis + 2)/(n -
1))`` for a log variance with the measured excess kurtosis: traits are heavy-tailed), the
measurement noise of the previous state carried through the transition (its derivative),
and a fitted process-noise variance per quantity (``process_noise`` for means,
``process_noise_log_var``). The parameters maximise the Gaussian one-step-ahead likelihood;
their intervals come from the Hessian of the negative log likelihood. The goodness reports
reduced χ² with and without the process noise and the lag-1 autocorrelation of the
standardised residuals.

:func:`forecast` fits on iterations ``< K`` and simulates the later ones from the measured
state at ``K - 1``, drawing the parameters from their approximate posterior (normal, the
inverse Hessian), process noise at every step and the measurement noise of the start and of
the target, which gives 90 % prediction intervals for each caption and for the run-level
within-caption variance, and their coverage of the held-out measurements.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from qtm.errors import QTMError
from qtm.params import uncond_share
from qtm.random import check_random_state
from qtm.sampler_map import guided_moments
from validate.errors import ValidateError

W_BOUNDS = (0.0, 50.0)
#: Starting points of w_eff: 1 + scale * (cfg - 1); the best local optimum is kept.
START_W_SCALES = (0.3, 1.0, 0.1)
#: Negative log likelihood of a parameter set whose transition overflows: far above any real one.
PENALTY = 1e12
#: Prediction intervals of the forecast.
FORECAST_LEVEL = 0.90
FORECAST_DRAWS = 1000
#: Floor of the excess kurtosis in the log-variance SE (-2 would make it zero).
MIN_KURTOSIS = -1.5
QUANTITIES = ("mean", "log_var")


@dataclass
class Trajectory:
    """Measured per-axis moments of one caption (``group``) of one run at its finished iterations.

    ``mean``, ``var`` and ``kurtosis`` (excess; None: 0) have shape (len(iterations), k);
    ``population`` is the number of images of the caption per iteration; ``setting`` names the
    CFG setting whose ``w_eff`` it shares.
    """

    run: str
    setting: str
    cfg: float
    iterations: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    population: int
    kurtosis: np.ndarray | None = None
    drop: float = 0.0
    real_fraction: float = 0.0
    finetune: str = "base"
    group: str = ""
    schedule: str = "constant"
    sampler: str = "ddim"
    steps: int = 50


Moments = tuple[np.ndarray, np.ndarray]


@dataclass
class BaseMoments:
    """Per-axis (mean, var) of the base model's branches and of the real data; None where unmeasured.

    ``cond`` and ``data`` may map each group (caption) to its own (mean, var); ``uncond``
    is one pair, the unconditional branch having no caption.
    """

    cond: Moments | dict[str, Moments] | None = None
    uncond: Moments | None = None
    data: Moments | dict[str, Moments] | None = None


def _for_group(moments, group: str) -> Moments:
    return moments[group] if isinstance(moments, dict) else moments


@dataclass
class FitResult:
    """Fitted parameters (table with standard errors and 95 % intervals), predictions and goodness of fit.

    ``forecast`` (only from :func:`forecast`): per held-out run and iteration, the run-level
    within-caption variance predicted (with its interval) and measured, and the coverage.
    """

    parameters: pd.DataFrame
    predictions: pd.DataFrame
    goodness: dict
    values: dict = field(default_factory=dict)
    forecast: list = field(default_factory=list)


class _Transitions:
    """The measured transitions D_t -> generated set t, flattened over trajectories and iterations."""

    def __init__(self, trajectories: list[Trajectory], base: BaseMoments, until: int | None):
        if base.cond is None or base.uncond is None:
            raise ValidateError(
                "the one-step fit needs the base model's reference points (RUN/reference/cond and uncond); "
                "generate them with `chain validate --make-reference`"
            )
        if any(t.finetune not in ("base",) for t in trajectories):
            raise ValidateError("runs with finetune=continue are not fitted yet (their prior is an unmeasured model)")
        self.k = trajectories[0].mean.shape[1]
        self.scale = np.sqrt(np.asarray(base.uncond[1], dtype=float))
        self.uncond_mean = np.asarray(base.uncond[0], float) / self.scale
        self.uncond_log_var = np.log(np.asarray(base.uncond[1], float) / self.scale**2)
        settings = sorted(
            {t.setting for t in trajectories if t.cfg != 1.0}, key=lambda s: _setting_cfg(trajectories, s)
        )
        self.settings = settings
        rows = []
        by_run: dict = {}
        for r, trajectory in enumerate(trajectories):
            by_run.setdefault(trajectory.run, []).append(r)
        self.trajectories = trajectories
        for r, trajectory in enumerate(trajectories):
            for i, t in enumerate(trajectory.iterations):
                if until is not None and t >= until:
                    continue
                source = self.source(r, int(t), base, by_run)
                if source is not None:
                    rows.append((r, i, int(t), *source))
        if not rows:
            raise ValidateError(
                "no transition to fit: need two consecutive finished iterations (or real data and iteration 0)"
            )
        self.by_run = by_run
        self.traj = np.array([row[0] for row in rows])
        self.index = np.array([row[1] for row in rows])
        self.iteration = np.array([row[2] for row in rows])
        self.src_mean, self.src_log, self.src_se_mean, self.src_se_log, self.pool_mean, self.pool_log = (
            np.array([row[3 + j] for row in rows]) for j in range(6)
        )
        self.tgt_mean, self.tgt_log, self.tgt_se_mean, self.tgt_se_log = self.measured(self.traj, self.index)
        cond = [_for_group(base.cond, trajectories[r].group) for r in self.traj]
        self.base_mean = np.array([np.asarray(c[0], float) for c in cond]) / self.scale
        self.base_log = np.log(np.array([np.asarray(c[1], float) for c in cond]) / self.scale**2)
        self.setting = np.array(
            [settings.index(trajectories[r].setting) if trajectories[r].cfg != 1.0 else -1 for r in self.traj]
        )
        self.calls = {}
        for j, r in enumerate(self.traj):
            tr = trajectories[r]
            self.calls.setdefault((tr.schedule, tr.sampler, tr.steps), []).append(j)

    def measured(self, traj, index):
        """Scaled mean, log variance and their SEs of generated sets (trajectory, row)."""
        mean, log, se_mean, se_log = [], [], [], []
        for r, i in zip(traj, index, strict=True):
            tr = self.trajectories[r]
            n = tr.population
            kurt = _kurtosis(tr)
            mean.append(tr.mean[i] / self.scale)
            log.append(np.log(tr.var[i] / self.scale**2))
            se_mean.append(np.sqrt(tr.var[i] / n) / self.scale)
            se_log.append(np.sqrt((kurt + 2.0) / max(n - 1, 1)))
        return tuple(np.array(x).reshape(len(traj), self.k) for x in (mean, log, se_mean, se_log))

    def source(self, r, t, base, by_run):
        """D_t of trajectory r: (mean, log var, their SEs, pooled mean and log var of the run's D_t), or None."""
        tr = self.trajectories[r]
        data = base.data

        def data_of(group):
            m, v = _for_group(data, group)
            return np.asarray(m, float) / self.scale, np.asarray(v, float) / self.scale**2

        if t == 0:
            if data is None:
                return None
            members = [data_of(self.trajectories[q].group) for q in by_run[tr.run]]
            mean, var = data_of(tr.group)
            se = (np.zeros(self.k), np.zeros(self.k))
        else:
            rows = [np.flatnonzero(self.trajectories[q].iterations == t - 1) for q in by_run[tr.run]]
            if any(len(x) == 0 for x in rows):
                return None
            members = [
                (self.trajectories[q].mean[x[0]] / self.scale, self.trajectories[q].var[x[0]] / self.scale**2)
                for q, x in zip(by_run[tr.run], rows, strict=True)
            ]
            i = int(np.flatnonzero(tr.iterations == t - 1)[0])
            mean, var = tr.mean[i] / self.scale, tr.var[i] / self.scale**2
            kurt = _kurtosis(tr)
            se = (np.sqrt(var / tr.population), np.sqrt((kurt + 2.0) / max(tr.population - 1, 1)))
            f = tr.real_fraction
            if f > 0:
                if data is None:
                    raise ValidateError(f"{tr.run}: --real-fraction {f} needs the real data (RUN/real) to be fitted")
                mean, var = _mixture((mean, var), data_of(tr.group), f)
                members = [
                    _mixture(pair, data_of(self.trajectories[q].group), f)
                    for q, pair in zip(by_run[tr.run], members, strict=True)
                ]
        means = np.array([m for m, _ in members])
        variances = np.array([v for _, v in members])
        pooled_var = variances.mean(axis=0) + means.var(axis=0)
        return mean, np.log(var), se[0], se[1], means.mean(axis=0), np.log(pooled_var)


def _mixture(moments, other, fraction):
    """Exact (mean, var) of a set whose share ``fraction`` is replaced by a set with moments ``other``."""
    (m, v), (dm, dv) = moments, other
    return (1 - fraction) * m + fraction * dm, (1 - fraction) * v + fraction * dv + fraction * (1 - fraction) * (
        m - dm
    ) ** 2


def _kurtosis(trajectory: Trajectory) -> np.ndarray:
    """The trajectory's excess kurtosis per axis, averaged over iterations (one caption's is noisy)."""
    if trajectory.kurtosis is None:
        return np.zeros(trajectory.mean.shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        value = np.nanmean(np.asarray(trajectory.kurtosis, float), axis=0)
    return np.maximum(np.nan_to_num(value, nan=0.0), MIN_KURTOSIS)


class _Model:
    """Parameter vector -> one-step predictions and likelihood."""

    def __init__(self, data: _Transitions):
        self.data = data
        names = [("fidelity", "", -1), ("uncond_fidelity", "", -1), ("var_fidelity", "", -1), ("var_shift", "", -1)]
        lower, upper = [0.0, 0.0, 0.0, -5.0], [1.0, 1.0, 1.0, 5.0]
        for setting in data.settings:
            names.append(("w_eff", setting, -1))
            lower.append(W_BOUNDS[0])
            upper.append(W_BOUNDS[1])
        names += [("log_process_var", "mean", -1), ("log_process_var", "log_var", -1)]
        lower += [-25.0, -25.0]
        upper += [5.0, 5.0]
        self.names = names
        self.bounds = list(zip(lower, upper, strict=True))

    def start(self, w_scale: float) -> np.ndarray:
        trajectories = self.data.trajectories
        w = [float(np.clip(1 + w_scale * (_setting_cfg(trajectories, s) - 1), *W_BOUNDS)) for s in self.data.settings]
        return np.array([0.7, 0.5, 0.5, 0.0, *w, np.log(0.01), np.log(0.01)])

    def unpack(self, x) -> dict:
        return {name: float(value) for name, value in zip(self.names, x, strict=True)}

    def transition(self, x, src_mean, src_log, pool_mean, pool_log, rows=None):
        """Predicted (mean, log var) of the generated set from D's (scaled) moments; arrays (..., J, k)."""
        d = self.data
        rows = np.arange(len(d.traj)) if rows is None else rows
        rho, rho_u, rho_v, mu = x[0], x[1], x[2], x[3]
        share = float(uncond_share(rho, rho_u))
        cond_mean = d.base_mean[rows] + rho * (src_mean - d.base_mean[rows])
        cond_log = d.base_log[rows] + rho_v * (src_log - d.base_log[rows]) + mu
        u_mean = d.uncond_mean + rho_u * (pool_mean - d.uncond_mean)
        u_log = d.uncond_log_var + share * rho_v * (pool_log - d.uncond_log_var) + share * mu
        w = np.concatenate([x[4 : 4 + len(d.settings)], [1.0]])[d.setting[rows]][:, None]
        cond_mean, cond_log, u_mean, u_log = np.broadcast_arrays(cond_mean, cond_log, u_mean, u_log)
        mean = np.empty(cond_mean.shape)
        log = np.empty_like(mean)
        for (schedule, sampler, steps), members in d.calls.items():
            pick = np.isin(rows, members)
            if not pick.any():
                continue
            out = guided_moments(
                cond_mean[..., pick, :],
                np.exp(cond_log[..., pick, :]),
                u_mean[..., pick, :],
                np.exp(u_log[..., pick, :]),
                cfg=w[pick],
                schedule=schedule,
                sampler=sampler,
                steps=steps,
            )
            mean[..., pick, :] = out.mean
            with np.errstate(divide="ignore", invalid="ignore"):
                log[..., pick, :] = np.log(out.var)
        return mean, log

    def terms(self, x):
        """Residuals, their variances without process noise, and the process variances, per quantity."""
        d = self.data
        eps = 1e-4
        with np.errstate(all="ignore"):
            mean, log = self.transition(x, d.src_mean, d.src_log, d.pool_mean, d.pool_log)
            gain_mean = (self.transition(x, d.src_mean + eps, d.src_log, d.pool_mean, d.pool_log)[0] - mean) / eps
            gain_log = (self.transition(x, d.src_mean, d.src_log + eps, d.pool_mean, d.pool_log)[1] - log) / eps
        residual = {"mean": d.tgt_mean - mean, "log_var": d.tgt_log - log}
        measurement = {
            "mean": d.tgt_se_mean**2 + (gain_mean * d.src_se_mean) ** 2,
            "log_var": d.tgt_se_log**2 + (gain_log * d.src_se_log) ** 2,
        }
        process = {"mean": np.exp(x[-2]), "log_var": np.exp(x[-1])}
        return residual, measurement, process, {"mean": mean, "log_var": log}

    def nll(self, x) -> float:
        try:
            residual, measurement, process, _ = self.terms(x)
        except QTMError:  # an improper tilt (sampler "tilt" only)
            return PENALTY
        total = 0.0
        for q in QUANTITIES:
            variance = measurement[q] + process[q]
            value = 0.5 * np.sum(residual[q] ** 2 / variance + np.log(variance))
            if not np.isfinite(value):
                return PENALTY
            total += value
        return float(total)

    def n_values(self) -> int:
        return 2 * self.data.tgt_mean.size


def _setting_cfg(trajectories, setting) -> float:
    return next(t.cfg for t in trajectories if t.setting == setting)


def _hessian(function, x, bounds, step=1e-3) -> np.ndarray:
    """Central-difference Hessian, the steps kept inside the bounds."""
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
    f0 = function(centre)
    out = np.empty((n, n))
    for i in range(n):
        for j in range(i, n):
            ei, ej = np.eye(n)[i] * h[i], np.eye(n)[j] * h[j]
            if i == j:
                value = (function(centre + ei) - 2 * f0 + function(centre - ei)) / h[i] ** 2
            else:
                value = (
                    function(centre + ei + ej)
                    - function(centre + ei - ej)
                    - function(centre - ei + ej)
                    + function(centre - ei - ej)
                ) / (4 * h[i] * h[j])
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


def fit_theory(
    trajectories: list[Trajectory],
    *,
    base: BaseMoments | None = None,
    fit_until: int | None = None,
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
    model, best = _optimise(trajectories, base, fit_until)
    return _result(model, best, trajectories)[0]


def _optimise(trajectories, base, fit_until):
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
    model = _Model(_Transitions(trajectories, base, fit_until))
    if model.n_values() <= len(model.names):
        raise ValidateError(
            f"the fit has {len(model.names)} parameters but only {model.n_values()} measured values"
            + (f" before --forecast-from {fit_until}" if fit_until is not None else "")
            + "; use more iterations, more captions or more axes"
        )
    best = None
    for w_scale in START_W_SCALES if model.data.settings else START_W_SCALES[:1]:
        start = model.start(w_scale)
        if model.nll(start) >= PENALTY:
            continue
        result = minimize(model.nll, start, method="L-BFGS-B", bounds=model.bounds)
        if best is None or result.fun < best.fun:
            best = result
    if best is None:
        raise ValidateError("the transition overflows at every starting point; the traits are far off unit scale")
    return model, best


def _result(model, best, trajectories) -> tuple[FitResult, np.ndarray]:
    """The fit's tables and goodness, and the parameters' covariance (inverse Hessian of the NLL)."""
    x = best.x
    with np.errstate(all="ignore"):
        hessian = _hessian(model.nll, x, model.bounds)
    covariance = _covariance(hessian)
    stderr = np.sqrt(np.diag(covariance))
    residual, measurement, process, predicted = model.terms(x)
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
                "cfg": _setting_cfg(trajectories, setting) if name == "w_eff" else np.nan,
                "estimate": float(value),
                "stderr": float(err),
                "lo": float(value - 1.96 * err),
                "hi": float(value + 1.96 * err),
            }
            for (name, setting, axis), value, err in zip(model.names, x, stderr, strict=True)
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
        "success": bool(best.success),
        "message": str(best.message),
        "process_sd_mean": float(np.sqrt(process["mean"])),
        "process_sd_log_var": float(np.sqrt(process["log_var"])),
        "measurement_sd_mean": float(np.sqrt(np.mean(measurement["mean"]))),
        "measurement_sd_log_var": float(np.sqrt(np.mean(measurement["log_var"]))),
        "residual_lag1_autocorrelation": _lag1(predictions),
        **_errors(predictions, "fit"),
    }
    values = model.unpack(x)
    return FitResult(
        parameters=parameters,
        predictions=predictions,
        goodness=goodness,
        values=values,
        forecast=[],
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


def _errors(predictions: pd.DataFrame, split: str) -> dict:
    part = predictions[predictions["split"] == split]
    out = {}
    for quantity in QUANTITIES:
        chosen = part[part["quantity"] == quantity]
        out[f"{split}_rmse_{quantity}"] = float(np.sqrt(np.mean(chosen["residual"] ** 2))) if len(chosen) else np.nan
    out[f"{split}_rms_z"] = float(np.sqrt(np.mean(part["z"] ** 2))) if len(part) else np.nan
    return out


def forecast(
    trajectories: list[Trajectory],
    *,
    base: BaseMoments,
    forecast_from: int,
    draws: int = FORECAST_DRAWS,
    level: float = FORECAST_LEVEL,
    random_state=0,
) -> FitResult:
    """Fit on the iterations ``< forecast_from``, then forecast the later ones with prediction intervals.

    From the measured state at ``forecast_from - 1`` (with its measurement noise) the
    transition is iterated ``draws`` times with parameters drawn from N(estimate, inverse
    Hessian) (clipped to their bounds) and process noise at every step; the measurement
    noise of the target is added, so the intervals are for what a measurement will show.

    Returns
    -------
    FitResult
        ``predictions`` holds the in-sample one-step rows (``split`` "fit") and the forecast
        rows (``split`` "forecast", with ``lo``/``hi``, ``covered``); ``forecast`` per held-out
        run and iteration: ``run``, ``iteration``, ``predicted_var``, ``lo``, ``hi`` and
        ``measured_var`` (run-level within-caption variance, summed over axes),
        ``relative_error``, ``covered`` and ``caption_coverage`` (share of the per-caption
        means and log variances inside their intervals); ``goodness`` the forecast errors and
        coverages.

    Examples
    --------
    >>> base = BaseMoments(cond=(np.zeros(1), np.ones(1)), uncond=(np.zeros(1), np.full(1, 2.0)))
    >>> var = [1.0]
    >>> for _ in range(5):
    ...     var.append(np.exp(0.5 * np.log(var[-1]) + 0.2))
    >>> run = Trajectory(run="a", setting="c", cfg=1.0, iterations=np.arange(6), mean=np.zeros((6, 1)),
    ...                  var=np.array(var)[:, None], population=10**5, sampler="tilt")
    >>> result = forecast([run, Trajectory(**{**run.__dict__, "group": "b"})], base=base, forecast_from=3, draws=200)
    >>> [row["iteration"] for row in result.forecast]
    [3, 4, 5]
    >>> all(row["covered"] for row in result.forecast)
    True
    """
    model, best = _optimise(trajectories, base, forecast_from)
    fit, covariance = _result(model, best, trajectories)
    if all(t.iterations.max() < forecast_from for t in trajectories):
        raise ValidateError(f"--forecast-from {forecast_from}: no finished iteration at or after it")
    rng = check_random_state(random_state)
    d = model.data
    x = best.x
    low_b, high_b = np.array(model.bounds).T
    safe = np.where(np.isfinite(covariance), covariance, 0.0)
    safe = (safe + safe.T) / 2
    values, vectors = np.linalg.eigh(safe)
    thetas = x + (rng.standard_normal((draws, len(x))) * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    thetas = np.clip(thetas, low_b, high_b)
    tail = 100 * (1 - level) / 2
    rows, summary = [], []
    for run, members in d.by_run.items():
        runs = [d.trajectories[r] for r in members]
        start = forecast_from - 1
        if any(start not in t.iterations for t in runs):
            continue
        later = sorted({int(t) for tr in runs for t in tr.iterations if t >= forecast_from})
        if not later:
            continue
        idx = [int(np.flatnonzero(tr.iterations == start)[0]) for tr in runs]
        m0, l0, sm0, sl0 = d.measured(np.array(members), np.array(idx))
        mean = m0 + sm0 * rng.standard_normal((draws, *m0.shape))
        log = l0 + sl0 * rng.standard_normal((draws, *l0.shape))
        # Transition rows of this run's captions: the base moments and the setting of each member.
        proxy = np.array([np.flatnonzero(d.traj == r)[0] if (d.traj == r).any() else -1 for r in members])
        if (proxy < 0).any():
            continue
        f = runs[0].real_fraction
        if f > 0 and base.data is not None:
            data = np.array([np.asarray(_for_group(base.data, tr.group)[0], float) for tr in runs]) / d.scale
            data_var = np.array([np.asarray(_for_group(base.data, tr.group)[1], float) for tr in runs]) / d.scale**2
        for t in range(forecast_from, max(later) + 1):
            if f > 0 and base.data is not None:
                mean, var = _mixture((mean, np.exp(log)), (data, data_var), f)
                log = np.log(var)
            pool_mean = mean.mean(axis=1, keepdims=True)
            pool_log = np.log(np.exp(log).mean(axis=1, keepdims=True) + mean.var(axis=1, keepdims=True))
            new_mean, new_log = np.empty_like(mean), np.empty_like(log)
            for b in range(draws):
                try:
                    with np.errstate(all="ignore"):
                        new_mean[b], new_log[b] = model.transition(
                            thetas[b], mean[b], log[b], pool_mean[b], pool_log[b], rows=proxy
                        )
                except QTMError:  # a drawn parameter set with an improper tilt: no prediction from it
                    new_mean[b] = new_log[b] = np.nan
            mean = new_mean + np.sqrt(np.exp(thetas[:, -2]))[:, None, None] * rng.standard_normal(mean.shape)
            log = new_log + np.sqrt(np.exp(thetas[:, -1]))[:, None, None] * rng.standard_normal(log.shape)
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
                            }
                        )
            # Run level: the within-caption variance (mean over captions), summed over the axes, in trait units.
            level_sims = (np.exp(seen_log) * d.scale**2).mean(axis=1).sum(axis=-1)
            measured_level = float((np.exp(tl) * d.scale**2).mean(axis=0).sum())
            lo, hi = np.nanpercentile(level_sims, [tail, 100 - tail])
            predicted_level = float(np.nanmedian(level_sims))
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
    if not summary:
        raise ValidateError(f"--forecast-from {forecast_from}: no run has its iteration {forecast_from - 1} measured")
    held_out = pd.DataFrame(rows)
    fit.predictions = pd.concat([fit.predictions, held_out], ignore_index=True)
    fit.forecast = summary
    fit.goodness.update(_errors(fit.predictions, "forecast"))
    fit.goodness.update(
        {
            "forecast_from": forecast_from,
            "forecast_level": level,
            "forecast_caption_coverage": float(held_out["covered"].mean()),
            "forecast_run_coverage": float(np.mean([s["covered"] for s in summary])),
            "forecast_max_abs_relative_error_var": float(max(abs(s["relative_error"]) for s in summary)),
        }
    )
    return fit
