"""The theory's one-step transition of a chain's measured state, and its Gaussian likelihood.

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
  the sampler sees unit-scale data as a diffusion model does. In the shared model (one
  model for every setting) the sampler map gives the generated set's mean only: its log
  variance is the finetuned model's plus ``beta ln w_geo``, ``ln w_geo`` the mean over the
  sampler's steps of the log of the schedule's scale
  (:attr:`qtm.sampler_map.PreparedSampler.mean_log_scales`; ``ln cfg`` for a constant
  schedule), with one shared slope ``beta`` (``selection_slope``): each step's guidance
  multiplies the variance by ``w_t ** (beta / steps)``. Chosen by held-out skill on the study's
  development chains (docs/study.md): the Gaussian law's selection on ln var saturates and,
  once a caption is wider than the unconditional branch, widens, which no single gain repairs;
  among one-parameter forms of the chains' steady response, the mean log scale predicted
  settings left out better than the mean scale or its log.

Errors: measurement noise of the target (``sqrt(v/n)`` for a mean, ``sqrt((kurtosis + 2)/(n -
1))`` for a log variance with the measured excess kurtosis: traits are heavy-tailed), the
measurement noise of the previous state carried through the transition (its derivative),
and fitted process-noise variances per quantity: each caption's own (``log_process_var``) and, where a run has
several captions, a run-level one its captions share at an iteration (``log_common_var``: one finetuning
makes all of them, so its shock is common; the captions' residuals are correlated within a run and iteration).

:class:`TransitionModel` evaluates a batch of parameter vectors in one pass of the sampler map
(the optimiser's finite differences, the Hessian's stencil, the forecast's parameter draws), each
vector's numbers the same as when it is evaluated alone. :mod:`validate.optimiser` fits it;
:mod:`validate.forecast` iterates it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from qtm.errors import QTMError
from qtm.params import default_uncond_fidelity, effective_cfg, uncond_share
from qtm.sampler_map import prepare_sampler
from validate.errors import ValidateError
from validate.state_filter import check_states, filter_transitions

W_BOUNDS = (0.0, 50.0)
#: Bounds of the shared model's guidance gain g (``w_eff = 1 + g (cfg - 1)``).
GAIN_BOUNDS = (0.0, 10.0)
#: Bounds of the shared model's selection slope beta on ln var per unit of the schedule's mean log scale.
SLOPE_BOUNDS = (-5.0, 5.0)
#: Lower bound of every log process variance: an SD of 0.001, far below any measurement noise. Lower, the
#: likelihood is flat to rounding in that parameter and the optimiser strands there (found at -25: SD 0).
LOG_NOISE_FLOOR = float(np.log(1e-6))
#: How selection depends on the setting (:class:`TransitionModel`).
GUIDANCE_MODELS = ("per-setting", "shared")
#: Negative log likelihood of a parameter set whose transition overflows: far above any real one.
PENALTY = 1e12
#: Floor of the excess kurtosis in the log-variance SE (-2 would make it zero).
MIN_KURTOSIS = -1.5
QUANTITIES = ("mean", "log_var")
#: Step of the finite differences that carry the previous state's measurement noise through the transition.
GAIN_STEP = 1e-4


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


def for_group(moments, group: str) -> Moments:
    return moments[group] if isinstance(moments, dict) else moments



class Transitions:
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
            {t.setting for t in trajectories if t.cfg != 1.0}, key=lambda s: setting_cfg(trajectories, s)
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
        # Each row's source as an earlier row's target (-1: real data, a first iteration, a mix with real data) and
        # its depth in that chain of rows: the filter (validate.state_filter) runs through the depths in order.
        position = {(row[0], row[2]): j for j, row in enumerate(rows)}
        self.prev = np.array([-1 if trajectories[row[0]].real_fraction > 0 else position.get((row[0], row[2] - 1), -1)
                              for row in rows])
        self.depth = np.zeros(len(rows), dtype=int)
        for j in np.flatnonzero(self.prev >= 0):  # a trajectory's rows run in iteration order
            self.depth[j] = self.depth[self.prev[j]] + 1
        self.traj = np.array([row[0] for row in rows])
        self.index = np.array([row[1] for row in rows])
        self.iteration = np.array([row[2] for row in rows])
        self.src_mean, self.src_log, self.src_se_mean, self.src_se_log, self.pool_mean, self.pool_log = (
            np.array([row[3 + j] for row in rows]) for j in range(6)
        )
        self.tgt_mean, self.tgt_log, self.tgt_se_mean, self.tgt_se_log = self.measured(self.traj, self.index)
        cond = [for_group(base.cond, trajectories[r].group) for r in self.traj]
        self.base_mean = np.array([np.asarray(c[0], float) for c in cond]) / self.scale
        self.base_log = np.log(np.array([np.asarray(c[1], float) for c in cond]) / self.scale**2)
        self.setting = np.array(
            [settings.index(trajectories[r].setting) if trajectories[r].cfg != 1.0 else -1 for r in self.traj]
        )
        self.cfg = np.array([trajectories[r].cfg for r in self.traj], dtype=float)
        # The captions of one run at one iteration share a finetuning: its shock is common to them (a block).
        keys = [(trajectories[r].run, int(t)) for r, t in zip(self.traj, self.iteration, strict=True)]
        order = {key: b for b, key in enumerate(dict.fromkeys(keys))}
        self.block = np.array([order[key] for key in keys])
        self.n_blocks = len(order)
        self.drop = np.array([trajectories[r].drop for r in self.traj], dtype=float)
        groups = {}
        for j, r in enumerate(self.traj):
            tr = trajectories[r]
            groups.setdefault((tr.schedule, tr.sampler, tr.steps), []).append(j)
        # Each group's sampler is prepared once: the fit changes only its peak scales, not its step coefficients.
        self.calls = [(prepare_sampler(sampler, cfg=1.0, schedule=schedule, steps=steps), members)
                      for (schedule, sampler, steps), members in groups.items()]
        # ln of the guidance a row's generation applies, averaged over its sampler's steps: the shared model's
        # selection on ln var is proportional to it.
        self.log_scale = np.empty(len(self.traj))
        for prepared, members in self.calls:
            self.log_scale[members] = prepared.at(self.cfg[members]).mean_log_scales

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
            m, v = for_group(data, group)
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
                mean, var = mixture((mean, var), data_of(tr.group), f)
                members = [
                    mixture(pair, data_of(self.trajectories[q].group), f)
                    for q, pair in zip(by_run[tr.run], members, strict=True)
                ]
        means = np.array([m for m, _ in members])
        variances = np.array([v for _, v in members])
        pooled_var = variances.mean(axis=0) + means.var(axis=0)
        return mean, np.log(var), se[0], se[1], means.mean(axis=0), np.log(pooled_var)


def mixture(moments, other, fraction):
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



class TransitionModel:
    """Parameter vector -> one-step predictions and likelihood; a batch of vectors (B, n) at once.

    ``guidance`` is how selection depends on the setting: ``"per-setting"``, a free ``w_eff`` per CFG
    setting and a free ``uncond_fidelity`` (describes the runs it is fitted to, predicts no other
    setting); ``"shared"``, one model for every setting: the mean selected by the sampler map at
    ``w_eff = 1 + g (cfg - 1)`` with one ``guidance_gain`` g, ln var by ``beta ln w_geo`` with one
    ``selection_slope`` beta (the module's docstring), and the unconditional branch's fidelity
    ``min(1, a + drop * rho)`` with one ``uncond_drift`` a (:func:`qtm.params.default_uncond_fidelity`),
    so the parameter vector is the same for any set of settings and a fit predicts settings it never saw.
    ``states``: each transition's source as measured, or as the earlier transitions filter it
    (:mod:`validate.state_filter`: for chains whose next model inherits the state a sample was drawn from rather
    than the sample, whose noise would attenuate the fidelities).
    """

    def __init__(self, data: Transitions, *, guidance: str = "per-setting", states: str = "measured"):
        if guidance not in GUIDANCE_MODELS:
            raise ValidateError(f"--guidance {guidance!r} is not one of: {', '.join(GUIDANCE_MODELS)}")
        check_states(states)
        self.data = data
        self.guidance = guidance
        self.states = states
        shared = guidance == "shared"
        names = [("fidelity", "", -1), ("uncond_drift" if shared else "uncond_fidelity", "", -1),
                 ("var_fidelity", "", -1), ("var_shift", "", -1)]
        lower, upper = [0.0, 0.0, 0.0, -5.0], [1.0, 1.0, 1.0, 5.0]
        for setting in [] if shared else data.settings:
            names.append(("w_eff", setting, -1))
            lower.append(W_BOUNDS[0])
            upper.append(W_BOUNDS[1])
        if shared:
            names += [("guidance_gain", "", -1), ("selection_slope", "", -1)]
            lower += [GAIN_BOUNDS[0], SLOPE_BOUNDS[0]]
            upper += [GAIN_BOUNDS[1], SLOPE_BOUNDS[1]]
        # The run-level shock needs blocks of several captions to be told apart from the captions' own.
        self.common = bool(np.bincount(data.block).max() > 1)
        noise = [("log_common_var", q, -1) for q in QUANTITIES] if self.common else []
        names += [*noise, ("log_process_var", "mean", -1), ("log_process_var", "log_var", -1)]
        lower += [LOG_NOISE_FLOOR] * (len(noise) + 2)
        upper += [5.0] * (len(noise) + 2)
        self.names = names
        self.bounds = list(zip(lower, upper, strict=True))

    def start(self, w_scale: float) -> np.ndarray:
        noise = [np.log(0.01)] * (4 if self.common else 2)
        if self.guidance == "shared":
            return np.array([0.7, 0.1, 0.5, 0.0, w_scale, 0.0, *noise])
        trajectories = self.data.trajectories
        w = [float(np.clip(1 + w_scale * (setting_cfg(trajectories, s) - 1), *W_BOUNDS)) for s in self.data.settings]
        return np.array([0.7, 0.5, 0.5, 0.0, *w, *noise])

    def noise(self, x) -> tuple[dict, dict | None]:
        """The process variances per quantity: each caption's own, and the run-level one its block shares (None
        without blocks of several captions); scalars for one vector, (B, 1, 1) for a batch (B, n)."""
        x = np.asarray(x, dtype=float)

        def pick(offset):
            value = {q: np.exp(x[..., len(self.names) - offset + i]) for i, q in enumerate(QUANTITIES)}
            return value if x.ndim == 1 else {q: v[:, None, None] for q, v in value.items()}

        return pick(2), (pick(4) if self.common else None)

    def strength(self, x, rows):
        """``w_eff`` of each transition row (..., J, 1) and the unconditional fidelity (scalar or (..., J, 1))."""
        d = self.data
        theta = x if x.ndim == 1 else x.T[..., None, None]
        if self.guidance == "shared":
            w = effective_cfg(d.cfg[rows][:, None], theta[4])
            return w, default_uncond_fidelity(d.drop[rows][:, None], theta[0], theta[1])
        scales = np.concatenate([x[..., 4 : 4 + len(d.settings)], np.ones((*x.shape[:-1], 1))], axis=-1)
        return scales[..., d.setting[rows]][..., None], theta[1]

    def unpack(self, x) -> dict:
        return {name: float(value) for name, value in zip(self.names, x, strict=True)}

    def transition(self, x, src_mean, src_log, pool_mean, pool_log, rows=None):
        """Predicted (mean, log var) of the generated set from D's (scaled) moments.

        ``x`` is one parameter vector (n,) or a batch (B, n); the moments are arrays (..., J, k),
        for a batch (..., B, J, k) or broadcastable to it.
        """
        d = self.data
        rows = np.arange(len(d.traj)) if rows is None else rows
        x = np.asarray(x, dtype=float)
        # One vector: its scalars; a batch: each parameter as (B, 1, 1), to broadcast over rows and axes.
        theta = x if x.ndim == 1 else x.T[..., None, None]
        rho, rho_v, mu = theta[0], theta[2], theta[3]
        w, rho_u = self.strength(x, rows)
        share = uncond_share(rho, rho_u)
        share = float(share) if np.ndim(share) == 0 else share
        cond_mean = d.base_mean[rows] + rho * (src_mean - d.base_mean[rows])
        cond_log = d.base_log[rows] + rho_v * (src_log - d.base_log[rows]) + mu
        u_mean = d.uncond_mean + rho_u * (pool_mean - d.uncond_mean)
        u_log = d.uncond_log_var + share * rho_v * (pool_log - d.uncond_log_var) + share * mu
        cond_mean, cond_log, u_mean, u_log = np.broadcast_arrays(cond_mean, cond_log, u_mean, u_log)
        shared = self.guidance == "shared"
        mean = np.empty(cond_mean.shape)
        # The shared model selects on ln var by its slope: the sampler's law gives it the mean only.
        log = cond_log + theta[5] * d.log_scale[rows][:, None] if shared else np.empty_like(mean)
        for prepared, members in d.calls:
            pick = np.isin(rows, members)
            if not pick.any():
                continue
            out = prepared.at(w[..., pick, :]).moments(
                cond_mean[..., pick, :],
                np.exp(cond_log[..., pick, :]),
                u_mean[..., pick, :],
                np.exp(u_log[..., pick, :]),
            )
            mean[..., pick, :] = out.mean
            if not shared:
                with np.errstate(divide="ignore", invalid="ignore"):
                    log[..., pick, :] = np.log(out.var)
        return mean, log

    def terms(self, x):
        """Residuals, their variances without process noise, and the process variances, per quantity.

        For a batch ``x`` (B, n) every array gains a leading axis B (the process variances are (B, 1, 1)). With
        ``states="filtered"`` the sources are the filtered states (:mod:`validate.state_filter`).
        """
        if self.states == "filtered":
            return filter_transitions(self, x, GAIN_STEP)[:4]
        d = self.data
        x = np.asarray(x, dtype=float)
        eps = GAIN_STEP
        # The transition and its two finite-difference gains in one pass: a leading axis of 3.
        lead = (3,) + (1,) * (x.ndim - 1) + d.src_mean.shape
        src_mean = np.stack([d.src_mean, d.src_mean + eps, d.src_mean]).reshape(lead)
        src_log = np.stack([d.src_log, d.src_log, d.src_log + eps]).reshape(lead)
        with np.errstate(all="ignore"):
            means, logs = self.transition(x, src_mean, src_log, d.pool_mean, d.pool_log)
            mean, log = means[0], logs[0]
            gain_mean = (means[1] - mean) / eps
            gain_log = (logs[2] - log) / eps
        residual = {"mean": d.tgt_mean - mean, "log_var": d.tgt_log - log}
        measurement = {
            "mean": d.tgt_se_mean**2 + (gain_mean * d.src_se_mean) ** 2,
            "log_var": d.tgt_se_log**2 + (gain_log * d.src_se_log) ** 2,
        }
        process, _ = self.noise(x)
        return residual, measurement, process, {"mean": mean, "log_var": log}

    def nll(self, x) -> float:
        """The negative log likelihood of one parameter vector (:data:`PENALTY` where it overflows)."""
        try:
            residual, measurement, process, _ = self.terms(x)
        except QTMError:  # an improper tilt (sampler "tilt" only)
            return PENALTY
        return self.likelihood(residual, measurement, process, self.noise(x)[1])

    def nll_many(self, xs) -> np.ndarray:
        """:meth:`nll` of each row of ``xs`` (B, n), in one pass of the sampler map."""
        xs = np.asarray(xs, dtype=float)
        try:
            residual, measurement, process, _ = self.terms(xs)
        except QTMError:  # some vector's tilt is improper: only that one gets the penalty
            return np.array([self.nll(x) for x in xs])
        common = self.noise(xs)[1]
        return np.array(
            [
                self.likelihood(
                    *({q: part[q][b] for q in QUANTITIES} for part in (residual, measurement, process)),
                    None if common is None else {q: common[q][b] for q in QUANTITIES},
                )
                for b in range(len(xs))
            ]
        )

    def likelihood(self, residual, measurement, process, common=None) -> float:
        """The negative log likelihood of one vector's terms (:data:`PENALTY` where it is not finite).

        Within a block (one run's captions at one iteration) the residuals of an axis share the run-level
        variance ``common``: covariance ``diag(d) + common 11^T`` with ``d`` the measurement and caption-level
        variances, whose inverse and determinant have closed forms (Sherman-Morrison, the determinant lemma).
        """
        total = 0.0
        for q in QUANTITIES:
            variance = measurement[q] + process[q]
            value = np.sum(residual[q] ** 2 / variance + np.log(variance))
            if common is not None:
                s0, s1 = self.block_sums(1.0 / variance), self.block_sums(residual[q] / variance)
                shrink = 1.0 + common[q] * s0
                value += np.sum(np.log(shrink) - common[q] * s1**2 / shrink)
            value = 0.5 * value
            if not np.isfinite(value):
                return PENALTY
            total += value
        return float(total)

    def block_sums(self, values) -> np.ndarray:
        """Sums of ``values`` (J, k) over each block's rows: (n_blocks, k)."""
        out = np.zeros((self.data.n_blocks, values.shape[-1]))
        np.add.at(out, self.data.block, values)
        return out

    def map_nll(self, function, points) -> list[float]:
        """``map(function, points)`` for scipy's finite differences (its ``workers``): all points in one batch."""
        points = np.array(list(points))
        return list(self.nll_many(points)) if len(points) else []

    def n_values(self) -> int:
        return 2 * self.data.tgt_mean.size


def setting_cfg(trajectories, setting) -> float:
    """The CFG scale of the runs of ``setting``."""
    return next(t.cfg for t in trajectories if t.setting == setting)
