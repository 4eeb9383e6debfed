"""Fit the theory's chain recursion to measured trait trajectories.

The model is :func:`qtm.recursion.simulate_moments` with the idealised ``tilt``
sampler, per trait axis (axes independent), and these free parameters:

- ``w_eff`` per CFG setting (peak scale and schedule): the *effective* selection
  strength, i.e. the tilt exponent that reproduces what the real sampler did;
- ``fidelity`` rho of finetuning (shared by all runs);
- ``uncond_fidelity`` rho_u of the unconditional branch, shared by the runs with
  condition drop > 0 (runs without drop keep ``rho_u = 0``, the model's assumption);
- optionally (``fit_mutation``) a variance added to each generated set per axis;
- where the base model's reference points are missing, nuisance moments per axis:
  the unconditional branch ``p_u`` (mean, log variance) and, without real data or a
  CFG-1 reference, the data/conditional branch ``p_c`` (mean, log variance), one per
  group.

A trajectory may be one caption of a run (its ``group``): CFG selects within a
caption, so each caption is a concept with its own ``p_c`` (and data), while
``w_eff``, ``rho``, ``rho_u`` and the caption-free ``p_u`` are shared by all
captions. :class:`BaseMoments` then maps each caption to its measured moments.

Each run's own settings (drop, real fraction, finetune mode, images per
iteration) are fixed from its ``run.json``. Residuals are standardised: the mean
error over its standard error ``sqrt(var/n)`` and the log-variance error over
``sqrt(2/(n-1))``; :func:`scipy.optimize.least_squares` minimises their sum of
squares. Parameter standard errors come from the Jacobian, ``(JᵀJ)⁻¹`` scaled by
``max(1, χ²/dof)`` so that a misfit widens them and a good fit does not shrink them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from qtm.errors import QTMError
from validate.errors import ValidateError

W_BOUNDS = (0.0, 50.0)
#: Starting points: w_eff = 1 + scale * (cfg - 1); the best of the local fits is kept. The last
#: (every w_eff = 1, the neutral tilt) is always a proper distribution.
START_W_SCALES = (1.0, 0.3, 0.0)
#: Evaluations per start: a fit that has not converged by then says so in its goodness (``success``).
MAX_NFEV = 200
#: Standardised residual given to every point when a parameter set makes the tilt improper.
IMPROPER_PENALTY = 1e3


@dataclass
class Trajectory:
    """Measured per-axis moments of one run at its finished iterations.

    ``mean`` and ``var`` have shape (len(iterations), k); ``population`` is the number
    of images per iteration; ``setting`` names the CFG setting whose ``w_eff`` it shares;
    ``group`` the caption (concept) whose ``p_c`` it has (``""``: all captions pooled).
    """

    run: str
    setting: str
    cfg: float
    iterations: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    population: int
    drop: float = 0.0
    real_fraction: float = 0.0
    finetune: str = "base"
    group: str = ""


Moments = tuple[np.ndarray, np.ndarray]


@dataclass
class BaseMoments:
    """Per-axis (mean, var) of the base model's branches and of the real data; None where unmeasured.

    ``cond`` and ``data`` may instead map each group (caption) to its own (mean, var);
    ``uncond`` is one pair, the unconditional branch having no caption.
    """

    cond: Moments | dict[str, Moments] | None = None
    uncond: Moments | None = None
    data: Moments | dict[str, Moments] | None = None


def _for_group(moments, group: str) -> Moments:
    return moments[group] if isinstance(moments, dict) else moments


@dataclass
class FitResult:
    """Fitted parameters (table with standard errors), predictions, goodness of fit."""

    parameters: pd.DataFrame
    predictions: pd.DataFrame
    goodness: dict
    values: dict = field(default_factory=dict)


class _Model:
    """Maps the parameter vector to predicted trajectories."""

    def __init__(
        self, trajectories: list[Trajectory], base: BaseMoments, *, fit_mutation: bool = False, fit_means: bool = True
    ):
        self.trajectories = trajectories
        self.fit_means = fit_means
        self.base = base
        self.k = trajectories[0].mean.shape[1]
        self.groups = list(dict.fromkeys(t.group for t in trajectories))
        self.settings = sorted({t.setting for t in trajectories}, key=lambda s: _setting_cfg(trajectories, s))
        self.fit_uncond_fidelity = any(t.drop > 0 for t in trajectories)
        names, lower, upper = [], [], []
        for setting in self.settings:
            names.append(("w_eff", setting, -1))
            lower.append(W_BOUNDS[0])
            upper.append(W_BOUNDS[1])
        names.append(("fidelity", "", -1))
        lower.append(0.0)
        upper.append(1.0)
        if self.fit_uncond_fidelity:
            names.append(("uncond_fidelity", "", -1))
            lower.append(0.0)
            upper.append(1.0)
        self.nuisance = []
        if base.uncond is None:
            self.nuisance.append("uncond")
        if base.cond is None and base.data is None:
            self.nuisance.append("cond")
        for branch in self.nuisance:
            # p_u is caption-free (one for all groups); p_c belongs to a group (its second name slot).
            for group in self.groups if branch == "cond" else [""]:
                for quantity in ("mean", "log_var"):
                    for axis in range(self.k):
                        names.append((f"{branch}_{quantity}", group, axis))
                        lower.append(-np.inf)
                        upper.append(np.inf)
        self.fit_mutation = fit_mutation
        if fit_mutation:
            for axis in range(self.k):
                names.append(("mutation_var", "", axis))
                lower.append(0.0)
                upper.append(np.inf)
        self.names = names
        self.bounds = (np.array(lower), np.array(upper))
        self.iterations = int(max(t.iterations.max() for t in trajectories)) + 1

    def start(self, w_scale: float) -> np.ndarray:
        x = []
        for setting in self.settings:
            cfg = _setting_cfg(self.trajectories, setting)
            x.append(float(np.clip(1 + w_scale * (cfg - 1), *W_BOUNDS)) if np.isfinite(cfg) else 1.0)
        x.append(0.9)
        if self.fit_uncond_fidelity:
            x.append(0.3)
        first = self.trajectories[0]
        for branch in self.nuisance:
            for group in self.groups if branch == "cond" else [""]:
                widen = 1.0 if branch == "cond" else 2.0
                chosen = next(t for t in self.trajectories if t.group == group) if branch == "cond" else first
                x += list(chosen.mean[0])
                x += list(np.log(chosen.var[0] * widen))
        if self.fit_mutation:
            x += list(0.05 * first.var[0])
        return np.array(x, dtype=float)

    def unpack(self, x) -> dict:
        return {name: float(value) for name, value in zip(self.names, x, strict=True)}

    def _column(self, X, name, setting="", axis=-1) -> np.ndarray:
        return X[:, self.names.index((name, setting, axis))]

    def _branches(self, X):
        """Per-axis (mean, var) of the base branches and the data: cond and data (B, runs, k), uncond (B, 1, k)."""

        def nuisance(branch, group):
            mean = np.stack([self._column(X, f"{branch}_mean", group, a) for a in range(self.k)], axis=-1)
            log_var = np.stack([self._column(X, f"{branch}_log_var", group, a) for a in range(self.k)], axis=-1)
            return mean[:, None, :], np.exp(log_var)[:, None, :]

        def measured(pair):
            return np.asarray(pair[0], float)[None, None, :], np.asarray(pair[1], float)[None, None, :]

        def per_run(make):
            pairs = [make(t.group) for t in self.trajectories]
            return tuple(np.concatenate([np.broadcast_to(p[i], (len(X), 1, self.k)) for p in pairs], 1) for i in (0, 1))

        base = self.base
        if "cond" in self.nuisance:
            cond = data = per_run(lambda group: nuisance("cond", group))
        else:
            cond_source = base.cond if base.cond is not None else base.data
            data_source = base.data if base.data is not None else base.cond
            cond = per_run(lambda group: measured(_for_group(cond_source, group)))
            data = per_run(lambda group: measured(_for_group(data_source, group)))
        uncond = nuisance("uncond", "") if "uncond" in self.nuisance else measured(base.uncond)
        return cond, uncond, data

    def predict(self, X) -> tuple[np.ndarray, np.ndarray]:
        """Predicted mean and variance, shape (B, runs, k, iterations), for parameter rows X (B, P).

        All rows and runs go through one call of the recursion per population size (the
        recursion broadcasts over them), which is what makes the finite-difference
        Jacobian cheap. Raises QTMError when some row makes the tilt improper.
        """
        from qtm.recursion import simulate_moments

        X = np.atleast_2d(X)
        cond, uncond, data = self._branches(X)
        runs = self.trajectories
        w = np.stack([self._column(X, "w_eff", t.setting) for t in runs], axis=1)[:, :, None]
        rho = self._column(X, "fidelity")[:, None, None]
        has_drop = np.array([t.drop > 0 for t in runs])[None, :, None]
        rho_u = (
            self._column(X, "uncond_fidelity")[:, None, None] * has_drop
            if self.fit_uncond_fidelity
            else np.zeros((1, len(runs), 1))
        )
        mutation = (
            np.stack([self._column(X, "mutation_var", axis=a) for a in range(self.k)], axis=-1)[:, None, :]
            if self.fit_mutation
            else 0.0
        )
        mean = np.empty((len(X), len(runs), self.k, self.iterations))
        var = np.empty_like(mean)
        for population in sorted({t.population for t in runs}):
            pick = np.array([t.population == population for t in runs])
            chosen = [t for t in runs if t.population == population]

            def per_run(values, pick=pick):
                return values[:, pick] if values.shape[1] == len(runs) else values

            traj = simulate_moments(
                cond_mean=per_run(cond[0]),
                cond_var=per_run(cond[1]),
                uncond_mean=per_run(uncond[0]),
                uncond_var=uncond[1],
                data_mean=per_run(data[0]),
                data_var=per_run(data[1]),
                cfg=per_run(w),
                fidelity=rho,
                uncond_fidelity=per_run(rho_u) + np.zeros((1, 1, self.k)),
                drop=np.array([t.drop for t in chosen])[None, :, None],
                finetune=np.array(["continue" if t.finetune in ("continue", "previous") else "base" for t in chosen])[
                    None, :, None
                ],
                real_fraction=np.array([t.real_fraction for t in chosen])[None, :, None],
                mutation=mutation,
                iterations=self.iterations,
                sampler="tilt",
                population=population if population >= 2 else None,
            )
            shape = (len(X), len(chosen), self.k, self.iterations)
            mean[:, pick] = np.broadcast_to(traj.mean, shape)
            var[:, pick] = np.broadcast_to(traj.var, shape)
        return mean, var

    def _residual_rows(self, mean, var, masks) -> np.ndarray:
        out = []
        for r, (trajectory, mask) in enumerate(zip(self.trajectories, masks, strict=True)):
            n = trajectory.population
            pick = trajectory.iterations[mask]
            se_mean = np.sqrt(trajectory.var[mask] / n)
            se_log = np.sqrt(2.0 / max(n - 1, 1))
            predicted_mean = np.moveaxis(mean[:, r][..., pick], -1, 1)  # (B, t, k)
            predicted_var = np.moveaxis(var[:, r][..., pick], -1, 1)
            r_mean = (trajectory.mean[mask] - predicted_mean) / se_mean
            r_log = (np.log(trajectory.var[mask]) - np.log(np.maximum(predicted_var, 1e-300))) / se_log
            parts = [r_mean, r_log] if self.fit_means else [r_log]
            out.append(np.concatenate([part.reshape(len(mean), -1) for part in parts], axis=1))
        return np.concatenate(out, axis=1)

    def residuals_batch(self, X, masks) -> np.ndarray:
        """Standardised residuals for each parameter row (B, n_values); improper rows get the penalty."""
        try:
            return self._residual_rows(*self.predict(X), masks)
        except QTMError:
            if len(X) == 1:
                return np.full((1, self.n_values(masks)), IMPROPER_PENALTY)
            return np.concatenate([self.residuals_batch(row[None], masks) for row in X])

    def proper(self, x) -> bool:
        """Whether the tilt is a proper distribution at every iteration for parameters ``x``."""
        try:
            self.predict(np.asarray(x)[None])
        except QTMError:
            return False
        return True

    def n_values(self, masks) -> int:
        return sum((2 if self.fit_means else 1) * int(m.sum()) * self.k for m in masks)

    def residuals(self, x, masks) -> np.ndarray:
        return self.residuals_batch(np.asarray(x)[None], masks)[0]

    def jacobian(self, x, masks) -> np.ndarray:
        """Forward differences, stepping inward at a bound, all evaluated in one batched call."""
        x = np.asarray(x, dtype=float)
        step = 1e-6 * np.maximum(1.0, np.abs(x))
        step = np.where(x + step > self.bounds[1], -step, step)
        rows = np.vstack([x, x + np.diag(step)])
        values = self.residuals_batch(rows, masks)
        return ((values[1:] - values[0]) / step[:, None]).T


def _setting_cfg(trajectories, setting) -> float:
    return next(t.cfg for t in trajectories if t.setting == setting)


def fit_theory(
    trajectories: list[Trajectory],
    *,
    base: BaseMoments | None = None,
    fit_until: int | None = None,
    fit_mutation: bool = False,
    fit_means: bool = True,
) -> FitResult:
    """Least-squares fit of the tilt-sampler chain recursion to measured trajectories.

    Parameters
    ----------
    trajectories : list of Trajectory
        One per run; all with the same number of trait axes.
    base : BaseMoments, optional
        Measured base-model branches and real data; missing ones are fitted as nuisance.
    fit_until : int, optional
        Fit only iterations ``< fit_until`` and forecast the rest (``split`` column
        ``"fit"`` or ``"forecast"`` in the predictions).
    fit_mutation : bool
        Also fit a variance added to every generated set, per axis (``mutation_var`` of
        the recursion): the finetuning error that the tilt model otherwise lacks, which
        lets the variance grow along a chain even at CFG 1.
    fit_means : bool
        Fit the means too (default). ``False`` fits the log variances alone: a diagnostic of
        whether the model describes the collapse when the means follow dynamics it lacks
        (e.g. pixel values bounded in [0, 1]); the means are still predicted, under split
        ``"not fitted"``.

    Returns
    -------
    FitResult

    Examples
    --------
    >>> from qtm.recursion import simulate_moments
    >>> true = simulate_moments(cond_mean=0.0, cond_var=1.0, uncond_mean=0.0, uncond_var=2.0,
    ...                         data_mean=0.0, data_var=1.0, cfg=2.0, fidelity=0.8, iterations=5,
    ...                         sampler="tilt")
    >>> run = Trajectory(run="a", setting="cfg=3", cfg=3.0, iterations=np.arange(5),
    ...                  mean=true.mean[:, None], var=true.var[:, None], population=1000)
    >>> base = BaseMoments(cond=(np.zeros(1), np.ones(1)), uncond=(np.zeros(1), np.full(1, 2.0)))
    >>> fit = fit_theory([run], base=base)
    >>> round(fit.values[("w_eff", "cfg=3", -1)], 2)
    2.0
    """
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
    model = _Model(trajectories, base, fit_mutation=fit_mutation, fit_means=fit_means)
    masks = [
        t.iterations < fit_until if fit_until is not None else np.ones(len(t.iterations), bool) for t in trajectories
    ]
    n_fit = model.n_values(masks)
    if n_fit < len(model.names):
        raise ValidateError(
            f"the fit has {len(model.names)} parameters but only {n_fit} measured values"
            + (f" before --forecast-from {fit_until}" if fit_until is not None else "")
            + "; use more iterations, more axes, or base-model reference points"
        )
    best = None
    for w_scale in START_W_SCALES:
        start = model.start(w_scale)
        if not model.proper(start):
            continue  # the optimiser cannot leave a region where every residual is the flat penalty
        result = least_squares(
            model.residuals,
            start,
            jac=model.jacobian,
            bounds=model.bounds,
            args=(masks,),
            x_scale="jac",
            method="trf",
            max_nfev=MAX_NFEV,
        )
        if model.proper(result.x) and (best is None or result.cost < best.cost):
            best = result
    if best is None:
        raise ValidateError(
            "the tilt model is improper (non-positive precision w/v_c + (1-w)/v_u) at every starting point; "
            "the measured p_c is wider than p_u on some axis, which CFG > 1 cannot tilt"
        )
    chi2 = float(2 * best.cost)
    dof = n_fit - len(model.names)
    scale = max(1.0, chi2 / dof) if dof > 0 else float("nan")
    try:
        covariance = np.linalg.pinv(best.jac.T @ best.jac) * scale
        stderr = np.sqrt(np.clip(np.diag(covariance), 0, None))
    except np.linalg.LinAlgError:
        stderr = np.full(len(model.names), np.nan)
    values = model.unpack(best.x)
    parameters = pd.DataFrame(
        [
            {
                "parameter": name,
                "setting": setting,
                "axis": axis,
                "cfg": _setting_cfg(trajectories, setting) if name == "w_eff" else np.nan,
                "estimate": float(value),
                "stderr": float(err),
            }
            for (name, setting, axis), value, err in zip(model.names, best.x, stderr, strict=True)
        ]
    )
    predictions = _prediction_table(model, best.x, trajectories, masks)
    goodness = {
        "chi2": chi2,
        "dof": dof,
        "reduced_chi2": chi2 / dof if dof > 0 else float("nan"),
        "n_values": n_fit,
        "n_parameters": len(model.names),
        "success": bool(best.success),
        "message": str(best.message),
        **_errors(predictions, "fit"),
    }
    if fit_until is not None:
        goodness.update(_errors(predictions, "forecast"))
    return FitResult(parameters=parameters, predictions=predictions, goodness=goodness, values=values)


def _prediction_table(model, x, trajectories, masks) -> pd.DataFrame:
    try:
        mean, var = (values[0] for values in model.predict(np.asarray(x)[None]))
    except QTMError:
        mean = var = np.full((len(trajectories), model.k, model.iterations), np.nan)
    rows = []
    for r, (trajectory, mask) in enumerate(zip(trajectories, masks, strict=True)):
        n = trajectory.population
        for row, t in enumerate(trajectory.iterations):
            split = "fit" if mask[row] else "forecast"
            for axis in range(model.k):
                measured_var = trajectory.var[row, axis]
                for quantity, measured, predicted, se in (
                    ("mean", trajectory.mean[row, axis], mean[r, axis, t], np.sqrt(measured_var / n)),
                    ("log_var", np.log(measured_var), np.log(var[r, axis, t]), np.sqrt(2.0 / max(n - 1, 1))),
                ):
                    rows.append(
                        {
                            "run": trajectory.run,
                            "group": trajectory.group,
                            "setting": trajectory.setting,
                            "iteration": int(t),
                            "axis": axis,
                            "quantity": quantity,
                            "measured": float(measured),
                            "se": float(se),
                            "predicted": float(predicted),
                            "residual": float(measured - predicted),
                            "z": float((measured - predicted) / se),
                            "split": split if quantity == "log_var" or model.fit_means else "not fitted",
                        }
                    )
    return pd.DataFrame(rows)


def _errors(predictions: pd.DataFrame, split: str) -> dict:
    part = predictions[predictions["split"] == split]
    out = {}
    for quantity in ("mean", "log_var"):
        chosen = part[part["quantity"] == quantity]
        out[f"{split}_rmse_{quantity}"] = float(np.sqrt(np.mean(chosen["residual"] ** 2))) if len(chosen) else np.nan
    out[f"{split}_rms_z"] = float(np.sqrt(np.mean(part["z"] ** 2))) if len(part) else np.nan
    return out
