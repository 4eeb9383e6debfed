"""The exact distribution that a guided sampler produces when p_c and p_u are Gaussian.

:func:`guided_moments` is the one entry point for every sampler name in :data:`SAMPLERS`: DDIM and
DDPM are mapped here, diffusers' other solvers (Euler, Euler-ancestral, DPM-Solver++, Heun,
flow-matching Euler) in :mod:`qtm.solvers`, the continuous-time ODE and SDE limits in
:mod:`qtm.continuous`. The rest of this docstring is about DDIM and DDPM.

For a trait axis with ``p_c = N(m_c, v_c)`` and ``p_u = N(m_u, v_u)``, the noised data
``x_t = a x_0 + b eps`` (``a = sqrt(abar)``, ``b = sqrt(1 - abar)``) has ``Cov(eps, x_t) = b``
and ``Var(x_t) = a^2 v + b^2``, so the ideal noise prediction is affine in ``x``::

    eps_hat(x) = b (x - a m) / (a^2 v + b^2)

and so is the guided one, ``eps_hat_u + w_k (eps_hat_c - eps_hat_u)``. One step of
diffusers' ``DDIMScheduler.step`` (any ``eta``) is::

    x_prev = x_coef x + eps_coef eps_hat(x) + noise_std xi,   xi ~ N(0, 1)

with the coefficients of :func:`step_coefficients`, hence ``x_prev = A_k x + B_k + noise``
and the mean and variance propagate exactly from ``x_K ~ N(0, 1)`` in K steps.
Like diffusers, the output is the last step's ``prev_sample`` (at alpha-bar
``config.final_alpha_cumprod``), not its prediction of x_0. No clipping or
thresholding of the x_0 prediction is modelled (SD v1.5 uses ``clip_sample=False``).

What the exact map shows (the numbers are checked by ``tests/test_sampler_map.py``):

- Guided sampling does not produce the idealised tilt ``p_c (p_c/p_u)^(w-1)``, not even
  in the limit of many steps, because the guided noise prediction is not the noise
  prediction of any noised distribution. With ``p_c = N(1, 0.5)``, ``p_u = N(0, 1)``, CFG 7.5
  and SD v1.5's scheduler, the tilt is N(1.765, 0.118), DDIM (eta 0, 50 steps) gives
  N(2.317, 0.0040) and DDPM (50 steps) N(1.993, 0.043). Guidance through a sampler selects
  much harder than the tilt, and DDIM harder than DDPM. With 1000 steps (cosine betas,
  final alpha 1) DDPM tends to N(1.989, 0.070) and DDIM to N(2.397, 0.0055): the two
  samplers have different limits, and neither is the tilt.
- Without guidance (w = 1) a finite number of steps already narrows p_c: with SD v1.5's
  scheduler and 50 steps, N(1, 0.5) comes out with variance 0.469 (DDIM) or 0.433 (DDPM),
  a selection-like loss of variance in every generation that has nothing to do with CFG.
- Both samplers tend to p_c at w = 1 as the steps grow, but only under a
  schedule that ends at (near) pure noise. SD v1.5's ends at alpha-bar 0.0047 while sampling
  starts from N(0, 1); deterministic DDIM carries that mismatch to the output (mean 0.951
  instead of 1 with 999 steps), DDPM mostly forgets it (0.997).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property
from typing import NamedTuple

import numpy as np

from qtm.continuous import continuous_moments
from qtm.diffusion import DiffusionConfig
from qtm.errors import QTMError
from qtm.gaussian import Moments, cfg_tilt
from qtm.moments_kernels import ddim_law_kernel
from qtm.params import PARAMETERS, SAMPLERS, effective_eta
from qtm.schedules import CFGSchedule
from qtm.solvers import (
    SOLVERS,
    SchedulerConfig,
    SolverPlan,
    check_model,
    flat_points,
    plan_moments,
    scale_table,
    solver_plan,
)
from qtm.validation import as_float_array, check_choice, check_unit_interval


class StepCoefficients(NamedTuple):
    """Per-step coefficients of diffusers' DDIM update, arrays of shape (K,) in sampling order.

    One step maps ``x`` to ``x_coef * x + eps_coef * eps_hat(x) + noise_std * xi``
    with ``xi ~ N(0, 1)``.
    """

    abar_t: np.ndarray
    abar_prev: np.ndarray
    x_coef: np.ndarray
    eps_coef: np.ndarray
    noise_std: np.ndarray


def step_coefficients(steps: int = 50, *, eta: float = 0.0, config: DiffusionConfig | None = None):
    """The DDIM update of each step as ``x_coef * x + eps_coef * eps_hat(x) + noise_std * xi``.

    This is diffusers' ``DDIMScheduler.step`` with ``prediction_type="epsilon"`` and no
    clipping, written for any noise predictor ``eps_hat``: the particle simulator
    applies it with its own (e.g. Gaussian-mixture) denoiser; :func:`guided_moments`
    with the affine Gaussian one. With ``r = abar_prev / abar_t``::

        noise_std**2 = eta**2 (1 - abar_prev) / (1 - abar_t) (1 - 1/r)
        x_coef       = sqrt(r)
        eps_coef     = sqrt(1 - abar_prev - noise_std**2) - sqrt(r (1 - abar_t))

    ``eta = 1`` is the DDPM ancestral step with the posterior variance: diffusers'
    ``DDPMScheduler`` (``variance_type="fixed_small"``, no clipping) makes exactly this
    update under ``leading`` spacing with ``set_alpha_to_one=True``. Otherwise it
    differs in its noise levels only: it steps to the next timestep of its grid and
    ends at alpha-bar 1.

    Parameters
    ----------
    steps : int
        Number of inference steps K.
    eta : float in [0, 1]
        DDIM's noise weight (0: deterministic DDIM, 1: DDPM).
    config : DiffusionConfig, optional
        Scheduler conventions; SD v1.5's by default.

    Returns
    -------
    StepCoefficients

    Examples
    --------
    >>> coef = step_coefficients(10, eta=0.0)
    >>> coef.x_coef.shape, float(coef.noise_std.max())
    ((10,), 0.0)
    """
    eta = check_unit_interval(eta, "eta")
    if eta.ndim:
        raise QTMError(f"eta must be a single number, got an array of shape {eta.shape}")
    eta = float(eta)
    config = DiffusionConfig() if config is None else config
    abar_t, abar_prev = config.step_alphas(steps)
    noise_var = eta**2 * (1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev)
    ratio = abar_prev / abar_t
    # Rounding can push the radicand a hair below 0 when abar_prev is 1.
    direction = np.sqrt(np.maximum(1.0 - abar_prev - noise_var, 0.0))
    eps_coef = direction - np.sqrt(ratio * (1.0 - abar_t))
    return StepCoefficients(abar_t, abar_prev, np.sqrt(ratio), eps_coef, np.sqrt(noise_var))


def gaussian_eps_coefficients(abar, mean, var):
    """Slope and intercept of the ideal noise prediction for data ``N(mean, var)`` at noise level ``abar``.

    ``eps_hat(x) = slope * x + intercept`` with ``slope = b / (a^2 var + b^2)`` and
    ``intercept = -a mean slope``, ``a = sqrt(abar)``, ``b = sqrt(1 - abar)``.
    Broadcasts over all arguments; does no validation (callers validate once).

    Examples
    --------
    >>> slope, intercept = gaussian_eps_coefficients(0.5, 0.0, 1.0)
    >>> round(float(slope), 6), float(intercept)
    (0.707107, -0.0)
    """
    a = np.sqrt(abar)
    b = np.sqrt(1.0 - abar)
    slope = b / (abar * var + (1.0 - abar))
    return slope, -a * mean * slope


def guided_moments(
    cond_mean,
    cond_var,
    uncond_mean,
    uncond_var,
    *,
    cfg,
    schedule="constant",
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    config: DiffusionConfig | None = None,
    scheduler: SchedulerConfig | str | None = None,
):
    """Mean and variance of the output of classifier-free-guided sampling, exactly.

    Parameters
    ----------
    cond_mean, cond_var, uncond_mean, uncond_var : float or array
        The conditional ``p_c`` and unconditional ``p_u`` Gaussians, per trait axis;
        all arguments broadcast together (axes times parameter grids).
    cfg : float or array
        Peak guidance scale w (1: conditional only).
    schedule : str or CFGSchedule
        Shape of the guidance over the steps (see :mod:`qtm.schedules`).
    sampler : str, one of :data:`SAMPLERS`
        ``ddim``: diffusers' DDIM with ``eta``. ``ddpm``: the same with ``eta = 1``
        (the DDPM ancestral step, see :func:`step_coefficients`; ``eta`` is ignored). ``tilt``: the idealised
        ``p_c (p_c/p_u)^(w-1)`` of :func:`qtm.gaussian.cfg_tilt` with ``w`` the
        schedule's mean scale over the K steps (no sampler, no residual noise).
        ``euler``, ``euler-a``, ``dpm++2m``, ``dpm++1s``, ``heun``, ``flow-euler``: diffusers'
        solvers (:func:`qtm.solvers.solver_moments`). ``ode``, ``sde``: the limits of infinitely
        many steps from pure noise (:func:`qtm.continuous.continuous_moments`; a constant
        schedule only, ``steps`` unused).
    steps : int
        Number of inference steps K.
    eta : float in [0, 1]
        DDIM noise weight.
    config : DiffusionConfig, optional
        DDIM/DDPM scheduler conventions; SD v1.5's by default.
    scheduler : SchedulerConfig or preset name ("sd15", "sd21v", "sd3"), optional
        The scheduler configuration for any sampler (instead of ``config``); SD v1.5's by default.

    Returns
    -------
    qtm.gaussian.Moments
        ``(mean, var)`` of the sampler's output, broadcast over the inputs.

    Examples
    --------
    >>> out = guided_moments(1.0, 0.5, 0.0, 1.0, cfg=7.5, steps=50)
    >>> round(float(out.mean), 3), round(float(out.var), 4)
    (2.317, 0.004)
    >>> out = guided_moments(1.0, 0.5, 0.0, 1.0, cfg=[1.0, 7.5], schedule="cosine")
    >>> out.var.shape
    (2,)
    >>> out = guided_moments(1.0, 0.5, 0.0, 1.0, cfg=7.5, sampler="dpm++2m", steps=25, scheduler="sd15")
    >>> round(float(out.mean), 3)
    2.265
    """
    return prepare_sampler(sampler, cfg=cfg, schedule=schedule, steps=steps, eta=eta, config=config,
                           scheduler=scheduler).moments(cond_mean, cond_var, uncond_mean, uncond_var)


@dataclass(frozen=True, eq=False)
class PreparedSampler:
    """A guided sampler prepared for a group of points that share its sampler, schedule, steps and peak scales.

    :func:`prepare_sampler` builds it once (the DDIM coefficients or the solver plan; the schedule's scale table
    on first use); :meth:`moments` then maps any number of models through it (the chain recursion: one per
    iteration).

    Attributes
    ----------
    sampler : str
        One of :data:`SAMPLERS`.
    cfg : numpy.ndarray
        The peak guidance scales.
    schedule : CFGSchedule
    coefficients : StepCoefficients or None
        DDIM's step coefficients (``ddim``, ``ddpm``, ``tilt``).
    plan : SolverPlan or None
        A solver's plan (:data:`qtm.solvers.SOLVERS`).
    """

    sampler: str
    cfg: np.ndarray
    schedule: CFGSchedule
    coefficients: StepCoefficients | None = None
    plan: SolverPlan | None = None

    def at(self, cfg) -> PreparedSampler:
        """The same sampler at the peak guidance scales ``cfg``: its step coefficients or solver plan are kept.

        Examples
        --------
        >>> prepared = prepare_sampler("ddim", cfg=1.0, steps=25)
        >>> prepared.at([1.0, 7.5]).moments(1.0, 0.5, 0.0, 1.0).var.round(4).tolist()
        [0.4394, 0.0028]
        """
        return replace(self, cfg=as_float_array(cfg, "cfg"))

    @cached_property
    def scale_table(self) -> tuple[np.ndarray, np.ndarray]:
        """:func:`qtm.solvers.scale_table` of ``cfg`` at the sampler's model evaluations."""
        abar = self.plan.abar if self.plan is not None else self.coefficients.abar_t
        return scale_table(self.schedule, self.cfg, abar)

    @property
    def mean_log_scales(self) -> np.ndarray:
        """ln of the guidance scale of each entry of ``cfg`` averaged over the sampler's model evaluations (ln of its
        schedule's geometric mean scale at the sampler's noise levels): the shared model's selection on ln var is
        proportional to it (:mod:`validate.transition`).

        Examples
        --------
        >>> prepared = prepare_sampler("ddim", cfg=[1.0, 7.5], steps=10, schedule="cutoff:0.5")
        >>> np.round(np.exp(prepared.mean_log_scales), 4).tolist()  # half the steps at 7.5, half at 1
        [1.0, 2.7386]
        """
        table, rows = self.scale_table
        return np.log(table).mean(axis=-1)[rows]

    @cached_property
    def law_scales(self) -> tuple[np.ndarray, np.ndarray]:
        """The one guidance scale of each distinct peak scale that a closed-form law takes (the tilt: its schedule's
        mean over the steps; the ODE and SDE: the constant scale), and the row of each entry of ``cfg``."""
        if self.sampler == "tilt":
            table, rows = self.scale_table
            return table.mean(axis=-1), rows
        values, inverse = np.unique(self.cfg, return_inverse=True)
        return values, inverse.reshape(self.cfg.shape)

    def moments(self, cond_mean, cond_var, uncond_mean, uncond_var) -> Moments:
        """Mean and variance of the sampler's output for ``p_c = N(cond_mean, cond_var)``, ``p_u = N(uncond_mean,
        uncond_var)`` (per axis; broadcast together with ``cfg``)."""
        if self.sampler in ("ode", "sde"):
            return continuous_moments(cond_mean, cond_var, uncond_mean, uncond_var, cfg=self.cfg, sampler=self.sampler)
        model = check_model(cond_mean, cond_var, uncond_mean, uncond_var)
        table, rows = self.scale_table
        if self.plan is not None:
            return plan_moments(self.plan, table, rows, *model)
        if self.sampler == "tilt":
            scales, rows = self.law_scales
            return cfg_tilt(*model, cfg=scales[rows])
        shape = np.broadcast_shapes(*(part.shape for part in model), rows.shape)
        mean, var = np.empty(math.prod(shape)), np.empty(math.prod(shape))
        ddim_law_kernel(*(flat_points(part, shape) for part in model), flat_points(rows, shape, dtype=np.int64),
                        np.ascontiguousarray(table), self.step_arrays, mean, var)
        return Moments(mean.reshape(shape), var.reshape(shape))

    @cached_property
    def step_arrays(self) -> np.ndarray:
        """:attr:`coefficients` as :func:`qtm.moments_kernels.ddim_law_kernel` takes them, one row each."""
        coef = self.coefficients
        # The noise squared one step at a time, as the NumPy form of this map did, to keep the last bits.
        noise_var = [std**2 for std in coef.noise_std]
        return np.array([coef.abar_t, np.sqrt(coef.abar_t), np.sqrt(1.0 - coef.abar_t), coef.x_coef, coef.eps_coef,
                         noise_var])


def prepare_sampler(sampler: str, *, cfg, schedule="constant", steps: int = 50, eta: float = 0.0,
                    config: DiffusionConfig | None = None,
                    scheduler: SchedulerConfig | str | None = None) -> PreparedSampler:
    """Check the sampler's parameters and build what its map needs, once (see :func:`guided_moments`).

    Examples
    --------
    >>> prepared = prepare_sampler("dpm++2m", cfg=[1.0, 7.5], steps=25)
    >>> prepared.moments(1.0, 0.5, 0.0, 1.0).var.round(4).tolist()
    [0.4688, 0.0043]
    """
    check_choice(sampler, "sampler", SAMPLERS)
    if config is not None and scheduler is not None:
        raise QTMError("give the scheduler configuration once: config= (a DiffusionConfig) or scheduler=, not both")
    cfg = as_float_array(cfg, "cfg")
    if sampler in SOLVERS:
        plan = solver_plan(sampler, steps, scheduler=scheduler)
        return PreparedSampler(sampler, cfg, CFGSchedule.parse(schedule), plan=plan)
    if sampler in ("ode", "sde"):
        if CFGSchedule.parse(schedule).kind != "constant":
            raise QTMError(f"sampler {sampler!r} takes a constant guidance scale, got schedule {schedule!r}")
        return PreparedSampler(sampler, cfg, CFGSchedule.parse(schedule))
    if scheduler is not None:
        config = ddim_config(sampler, scheduler)
    coef = step_coefficients(steps, eta=effective_eta(sampler, eta), config=config)
    return PreparedSampler(sampler, cfg, CFGSchedule.parse(schedule), coefficients=coef)


def ddim_config(sampler: str, scheduler: SchedulerConfig | str) -> DiffusionConfig:
    """The noise schedule a DDIM-family ``sampler`` (``ddim``, ``ddpm``, ``tilt``) steps with under ``scheduler``.

    Examples
    --------
    >>> ddim_config("ddim", "sd15").num_train_timesteps
    1000
    >>> ddim_config("ddim", "sd3")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    qtm.errors.QTMError: sampler 'ddim' does not sample flow-matching models (prediction type flow, ...
    """
    scheduler = SchedulerConfig.parse(scheduler)
    if scheduler.prediction_type == "flow":
        raise QTMError(f"sampler {sampler!r} does not sample flow-matching models (prediction type flow, which "
                       "--scheduler sd3 sets); use --sampler flow-euler, or another --scheduler")
    return scheduler.diffusion_config(sampler)


def sampler_law(cond_mean=None, cond_var=None, uncond_mean=None, uncond_var=None, *, cfg=None, schedule=None,
                sampler=None, steps=None, eta=None, scheduler=None):
    """The exact law of one guided sampling, per trait axis, as a table: what ``qtm map`` prints.

    Every argument is a parameter of :mod:`qtm.params`, with its default when left out and its check (the same
    one-line :class:`~qtm.errors.QTMError` as the command line's).

    Parameters
    ----------
    cond_mean, cond_var, uncond_mean, uncond_var : float or sequence of float, optional
        The base model's conditional and unconditional Gaussians, one value per trait axis (one value: every axis).
    cfg : float, optional
        Peak classifier-free guidance scale w (>= 0; default 7.5).
    schedule : str, optional
        CFG schedule shape (``constant``, ``linear[:END]``, ``cosine[:END]``, ``cutoff:F``, ``interval:LO:HI``).
    sampler : str, optional
        One of :data:`qtm.params.SAMPLERS` (default ``ddim``).
    steps : int, optional
        Denoising steps (default 50).
    eta : float, optional
        DDIM noise weight in [0, 1] (default 0).
    scheduler : mapping, optional
        The scheduler's parameters (:data:`qtm.params.SCHEDULER_PARAMETERS`, e.g. ``{"scheduler": "sd3"}``);
        SD v1.5's by default.

    Returns
    -------
    pandas.DataFrame
        One row per trait axis: ``axis``, ``mean``, ``var``.

    Examples
    --------
    >>> sampler_law(1.0, 1.0, 0.0, 1.5, cfg=7.5, sampler="ddim").round(4)
       axis   mean     var
    0     0  3.353  0.0635
    >>> sampler_law([1.0, 2.0], 1.0, 0.0, 1.5, cfg=7.5, sampler="tilt")["var"].round(4).tolist()
    [0.3158, 0.3158]
    """
    import pandas as pd

    model = {"cond_mean": cond_mean, "cond_var": cond_var, "uncond_mean": uncond_mean, "uncond_var": uncond_var}
    model = {name: np.atleast_1d(np.asarray(PARAMETERS[name].default if value is None else value, dtype=float))
             for name, value in model.items()}
    model = dict(zip(model, np.broadcast_arrays(*model.values()), strict=True))
    for name, values in model.items():
        PARAMETERS[name].check(values, label=PARAMETERS[name].flag)
    given = {"cfg": cfg, "schedule": schedule, "sampler": sampler, "steps": steps, "eta": eta}
    sampling = {name: PARAMETERS[name].check(PARAMETERS[name].default if value is None else value,
                                             label=PARAMETERS[name].flag) for name, value in given.items()}
    settings = {name: PARAMETERS[name].check(value, label=PARAMETERS[name].flag)
                for name, value in dict(scheduler or {}).items() if value is not None}
    scheduler = SchedulerConfig.from_parameters(**settings)
    out = _finite_law(model, sampling, scheduler)
    if out is None:
        raise QTMError(_overflow_message(model, sampling, scheduler))
    return pd.DataFrame({"axis": np.arange(len(out.mean)), "mean": np.asarray(out.mean, dtype=float),
                         "var": np.asarray(out.var, dtype=float)})


def _finite_law(model: dict, sampling: dict, scheduler: SchedulerConfig) -> Moments | None:
    """The law, or None where it overflows (numpy's overflow warnings are the error's business, not stderr's)."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        out = guided_moments(*model.values(), **sampling, scheduler=scheduler)
    return out if np.isfinite(out.mean).all() and np.isfinite(out.var).all() else None


def _overflow_message(model: dict, sampling: dict, scheduler: SchedulerConfig) -> str:
    """Name the inputs that made the law overflow: each one whose default (no guidance, for ``cfg``) alone
    makes the law finite again (all the model values that are not their defaults, if none does)."""
    given = [name for name, values in model.items() if not np.all(values == PARAMETERS[name].default)]
    causes = [name for name in given
              if _finite_law({**model, name: np.full_like(model[name], PARAMETERS[name].default)}, sampling,
                             scheduler) is not None]
    if sampling["cfg"] != 1 and _finite_law(model, {**sampling, "cfg": 1.0}, scheduler) is not None:
        causes.append("cfg")
    causes = causes or given or ["cfg"]
    values = {**{name: float(np.max(np.abs(model[name]))) for name in model}, "cfg": float(sampling["cfg"])}
    named = " and ".join(f"{PARAMETERS[name].flag} {values[name]:g}" for name in causes)
    advice = " or ".join("a smaller --cfg" if name == "cfg" else f"{PARAMETERS[name].flag} nearer "
                         f"{PARAMETERS[name].default:g}" for name in causes)
    return (f"the sampler's output overflowed to inf or NaN with {named}; give {advice} (standardised traits have "
            "means near 0 and variances near 1)")
