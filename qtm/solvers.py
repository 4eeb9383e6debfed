"""The exact output law of guided Euler, Euler-ancestral, DPM-Solver++, Heun and flow-matching Euler sampling.

Every solver here carries a sample ``x = alpha x0 + s eps`` (``alpha, s`` the signal and noise scales
of its parametrisation) and is linear in its model outputs and its fresh noise. For data
``N(m, v)`` the ideal denoiser is affine in ``x``::

    D(x) = E[x0 | x] = m + g (x - alpha m),   g = alpha v / (alpha^2 v + s^2),

and since the noise, velocity and data predictions are affine images of one another at a given
noise level, guiding any of them (``u + w (c - u)``) is the same as guiding ``D``. The
prediction type a model uses therefore does not change the law (the tests step diffusers with
both), only the solver, its noise levels and its start do. One step of every solver is::

    x_next = x_coef x + d_coef D_k(x) + prev_coef D_{k-1} + noise_std xi,   xi ~ N(0, 1),

where ``D_{k-1}`` is the previous step's guided output (DPM-Solver++ 2M's history). The mean of
``(x, D_{k-1})`` and their 2x2 covariance propagate exactly, per axis, from the sampler's start
``N(0, init_noise_sigma^2)``. Heun's two evaluations per step compose into one affine step.

The noise levels, starts and last steps are diffusers' (0.42): ``EulerDiscreteScheduler``,
``EulerAncestralDiscreteScheduler``, ``DPMSolverMultistepScheduler`` (``dpmsolver++``, midpoint,
``lower_order_final``), ``HeunDiscreteScheduler`` and ``FlowMatchEulerDiscreteScheduler``. Two
conventions are this module's: noise levels are computed in float64 (diffusers rounds its sigmas
to float32), and the ideal denoiser is evaluated at the solver's own sigma (with Karras sigmas
diffusers passes the model a rounded or interpolated timestep; an ideal continuous-noise model
knows the sigma).

Examples
--------
>>> out = solver_moments(1.0, 0.5, 0.0, 1.0, cfg=7.5, sampler="dpm++2m", steps=25)
>>> round(float(out.mean), 3), round(float(out.var), 4)
(2.265, 0.0043)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from qtm.diffusion import BETA_SCHEDULES, TIMESTEP_SPACINGS, DiffusionConfig
from qtm.errors import QTMError
from qtm.gaussian import Moments
from qtm.moments_kernels import sampler_kernel
from qtm.params import PREDICTION_TYPES, SCHEDULER_PRESETS
from qtm.schedules import CFGSchedule
from qtm.validation import as_float_array, check_choice, check_int, check_nonnegative

#: The discrete solvers this module maps (``ddim`` and ``ddpm`` live in :mod:`qtm.sampler_map`); every
#: sampler name is :data:`qtm.params.SAMPLERS`.
SOLVERS = ("euler", "euler-a", "dpm++2m", "dpm++1s", "heun", "flow-euler")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")

# Each diffusers scheduler's own default spacing: a pipeline's scheduler config (SD v1.5's, SD 2.1's)
# does not set one, so ``from_config`` leaves every scheduler at its default.
_DEFAULT_SPACING = {
    "ddim": "leading", "ddpm": "leading", "euler": "linspace", "euler-a": "linspace",
    "dpm++2m": "linspace", "dpm++1s": "linspace", "heun": "linspace",
}
_KARRAS_SOLVERS = ("euler", "dpm++2m", "dpm++1s", "heun")


@dataclass(frozen=True)
class SchedulerConfig:
    """A diffusers scheduler configuration shared by all solvers (diffusers' names; SD v1.5 by default).

    Parameters
    ----------
    num_train_timesteps, beta_start, beta_end, beta_schedule, steps_offset, set_alpha_to_one
        As in :class:`qtm.diffusion.DiffusionConfig`.
    prediction_type : {"epsilon", "v_prediction", "flow"}
        What the model predicts; ``flow`` (velocity of a rectified flow) goes with ``flow-euler``
        only, and the other two with every other solver. It does not change the law (see the
        module docstring) but is what the scheduler is built with.
    timestep_spacing : {"leading", "trailing", "linspace"} or None
        ``None``: each scheduler's own default (``leading`` for DDIM/DDPM, ``linspace`` for the
        others), which is what a pipeline gets from a config that does not set it.
    use_karras_sigmas : bool
        Karras et al.'s rho = 7 sigmas (Euler, Heun, DPM-Solver++).
    final_sigmas_type : {"zero", "sigma_min"}
        Where Euler, Heun and DPM-Solver++ end (DPM-Solver++ takes a first-order last step at "zero").
    lower_order_final : bool
        DPM-Solver++: first-order last step when there are fewer than 15 steps.
    shift : float
        Flow matching's time shift (SD3: 3.0).

    Examples
    --------
    >>> SchedulerConfig.preset("sd21v").prediction_type
    'v_prediction'
    >>> SchedulerConfig().scheduler_kwargs("euler")["timestep_spacing"]
    'linspace'
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "epsilon"
    timestep_spacing: str | None = None
    steps_offset: int = 1
    set_alpha_to_one: bool = False
    use_karras_sigmas: bool = False
    final_sigmas_type: str = "zero"
    lower_order_final: bool = True
    shift: float = 1.0

    def __post_init__(self):
        check_choice(self.prediction_type, "prediction_type", PREDICTION_TYPES)
        check_choice(self.final_sigmas_type, "final_sigmas_type", FINAL_SIGMAS_TYPES)
        if self.timestep_spacing is not None:
            check_choice(self.timestep_spacing, "timestep_spacing", TIMESTEP_SPACINGS)
        check_choice(self.beta_schedule, "beta_schedule", BETA_SCHEDULES)
        for name in ("use_karras_sigmas", "lower_order_final"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise QTMError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not (isinstance(self.shift, (int, float, np.floating)) and 0 < self.shift < math.inf):
            raise QTMError(f"shift must be a positive number, got {self.shift!r}")
        # The remaining fields are checked where DiffusionConfig is built from them.
        self.diffusion_config("ddim")

    @classmethod
    def preset(cls, name: str) -> SchedulerConfig:
        """``sd15`` (SD v1.5), ``sd21v`` (SD 2.1, v-prediction) or ``sd3`` (flow matching, shift 3)."""
        check_choice(name, "scheduler preset", SCHEDULER_PRESETS)
        if name == "sd21v":
            return cls(prediction_type="v_prediction")
        if name == "sd3":
            return cls(prediction_type="flow", shift=3.0)
        return cls()

    @classmethod
    def for_sampler(cls, sampler: str) -> SchedulerConfig:
        """The preset a sampler goes with by default: SD3's (flow matching) for ``flow-euler``, else SD v1.5's.

        Examples
        --------
        >>> SchedulerConfig.for_sampler("flow-euler").prediction_type
        'flow'
        """
        return cls.preset("sd3" if sampler == "flow-euler" else "sd15")

    @classmethod
    def parse(cls, spec) -> SchedulerConfig:
        """A configuration, a preset name, or ``None`` (SD v1.5)."""
        if spec is None:
            return cls()
        if isinstance(spec, SchedulerConfig):
            return spec
        if isinstance(spec, str):
            return cls.preset(spec)
        raise QTMError(f"scheduler must be a SchedulerConfig or one of {', '.join(SCHEDULER_PRESETS)}, got {spec!r}")

    @classmethod
    def from_parameters(cls, *, scheduler="sd15", beta_schedule=None, timestep_spacing=None, train_timesteps=None,
                        prediction_type=None, shift=None, karras=False) -> SchedulerConfig:
        """A preset with the overrides given (the parameters of :data:`qtm.params.SCHEDULER_PARAMETERS`).

        Examples
        --------
        >>> config = SchedulerConfig.from_parameters(scheduler="sd21v", timestep_spacing="trailing")
        >>> config.prediction_type, config.timestep_spacing
        ('v_prediction', 'trailing')
        """
        base = cls.preset(scheduler)
        overrides = {"beta_schedule": beta_schedule, "timestep_spacing": timestep_spacing,
                     "num_train_timesteps": train_timesteps, "prediction_type": prediction_type, "shift": shift}
        changed = {name: value for name, value in overrides.items() if value is not None}
        if karras:
            changed["use_karras_sigmas"] = True
        return dataclasses.replace(base, **changed)

    def spacing(self, sampler: str) -> str:
        """The timestep spacing ``sampler``'s scheduler uses under this configuration."""
        return self.timestep_spacing or _DEFAULT_SPACING.get(sampler, "linspace")

    def diffusion_config(self, sampler: str = "ddim") -> DiffusionConfig:
        """The DDIM/DDPM part of this configuration as a :class:`qtm.diffusion.DiffusionConfig`."""
        return DiffusionConfig(
            num_train_timesteps=self.num_train_timesteps,
            beta_start=self.beta_start,
            beta_end=self.beta_end,
            beta_schedule=self.beta_schedule,
            timestep_spacing=self.spacing(sampler),
            steps_offset=self.steps_offset,
            set_alpha_to_one=self.set_alpha_to_one,
        )

    def scheduler_kwargs(self, sampler: str) -> dict:
        """Keyword arguments of the diffusers scheduler class that ``sampler`` names (tests build it from these)."""
        check_choice(sampler, "sampler", (*SOLVERS, "ddim", "ddpm"))
        if sampler == "flow-euler":
            return {"num_train_timesteps": self.num_train_timesteps, "shift": float(self.shift)}
        kwargs = {
            "num_train_timesteps": self.num_train_timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "beta_schedule": self.beta_schedule,
            "prediction_type": self.prediction_type,
            "timestep_spacing": self.spacing(sampler),
            "steps_offset": self.steps_offset,
        }
        if sampler in ("ddim", "ddpm"):
            kwargs["clip_sample"] = False
            if sampler == "ddim":
                kwargs["set_alpha_to_one"] = self.set_alpha_to_one
        if sampler in _KARRAS_SOLVERS:
            kwargs["use_karras_sigmas"] = self.use_karras_sigmas
        if sampler in ("euler", "dpm++2m", "dpm++1s"):
            kwargs["final_sigmas_type"] = self.final_sigmas_type
        if sampler in ("dpm++2m", "dpm++1s"):
            kwargs.update(
                algorithm_type="dpmsolver++",
                solver_order=2 if sampler == "dpm++2m" else 1,
                lower_order_final=self.lower_order_final,
            )
        return kwargs


class SolverPlan(NamedTuple):
    """A solver's K steps as arrays of shape (K,), in sampling order.

    Step k evaluates the denoiser on ``x = alpha x0 + noise eps`` and maps
    ``x -> x_coef x + d_coef D_k + prev_coef D_{k-1} + noise_std xi``. For Heun, ``x_coef`` and
    ``d_coef`` are None, ``alpha`` and ``noise`` list its 2K - 1 evaluations (the entries of
    diffusers' ``timesteps``) and ``sigmas`` (VE, K + 1) define its two-evaluation steps.
    ``init_std`` is the sampler's starting standard deviation.
    """

    alpha: np.ndarray
    noise: np.ndarray
    x_coef: np.ndarray | None
    d_coef: np.ndarray | None
    prev_coef: np.ndarray
    noise_std: np.ndarray
    init_std: float
    sigmas: np.ndarray

    @property
    def abar(self) -> np.ndarray:
        """The VP alpha-bar of each evaluation (what an ``interval`` CFG schedule reads)."""
        # Flow matching's first evaluation is pure noise (alpha-bar 0): floor it so that its sigma is huge, not inf.
        return np.maximum(self.alpha**2 / (self.alpha**2 + self.noise**2), np.finfo(float).tiny)


def solver_plan(sampler: str, steps: int = 50, *, scheduler: SchedulerConfig | str | None = None) -> SolverPlan:
    """Noise levels and update coefficients of ``steps`` steps of a diffusers solver.

    Parameters
    ----------
    sampler : {"euler", "euler-a", "dpm++2m", "dpm++1s", "heun", "flow-euler"}
    steps : int
        Number of inference steps K (``set_timesteps(K)``).
    scheduler : SchedulerConfig or preset name, optional
        SD v1.5's by default; ``flow-euler`` needs ``prediction_type="flow"`` (e.g. ``"sd3"``).

    Returns
    -------
    SolverPlan

    Examples
    --------
    >>> plan = solver_plan("euler", 10)
    >>> plan.x_coef.shape, float(plan.x_coef[-1])
    ((10,), 0.0)
    """
    check_choice(sampler, "sampler", SOLVERS)
    config = SchedulerConfig.parse(scheduler)
    k = check_int(steps, "steps", minimum=1)
    if k > config.num_train_timesteps:
        raise QTMError(f"steps must be <= num_train_timesteps ({config.num_train_timesteps}), got {k}")
    if (sampler == "flow-euler") != (config.prediction_type == "flow"):
        raise QTMError(
            f"sampler {sampler!r} does not go with prediction_type {config.prediction_type!r}: "
            "flow-euler samples flow-matching models (prediction_type 'flow', e.g. the sd3 preset), "
            "the other solvers epsilon or v_prediction models"
        )
    if sampler == "flow-euler":
        return _flow_plan(config, k)
    sigmas = _ve_sigmas(config, sampler, k)
    zeros = np.zeros(k)
    if sampler == "dpm++2m" or sampler == "dpm++1s":
        return _dpm_plan(config, sampler, sigmas)
    # Diffusers starts these from N(0, sigma_max^2 + 1) under leading spacing, from N(0, sigma_max^2) otherwise.
    init = math.hypot(sigmas.max(), 1.0) if config.spacing(sampler) == "leading" else float(sigmas.max())
    now, after = sigmas[:-1], sigmas[1:]
    ones = np.ones(k)
    if sampler == "heun":
        # Evaluations in pipeline-loop order: s_0, then s_1, s_1, ..., s_{K-1}, s_{K-1} (corrector, predictor).
        evals = np.concatenate([sigmas[:1], np.repeat(sigmas[1:-1], 2)])
        none = np.zeros(len(evals))
        return SolverPlan(np.ones(len(evals)), evals, None, None, none, none, init, sigmas)
    if sampler == "euler":
        return SolverPlan(ones, now, after / now, 1.0 - after / now, zeros, zeros, init, sigmas)
    up = np.sqrt(after**2 * (now**2 - after**2) / now**2)
    down = np.sqrt(after**2 - up**2)
    return SolverPlan(ones, now, down / now, 1.0 - down / now, zeros, up, init, sigmas)


def _timesteps(config: SchedulerConfig, sampler: str, k: int) -> np.ndarray:
    """The (possibly fractional) timesteps of diffusers' Euler-type ``set_timesteps``."""
    if config.spacing(sampler) == "linspace":
        # Unlike DDIM's linspace grid, the Euler-type schedulers keep these timesteps fractional.
        return np.linspace(0, config.num_train_timesteps - 1, k)[::-1]
    return config.diffusion_config(sampler).timesteps(k).astype(float)


def _dpm_timesteps(config: SchedulerConfig, k: int) -> np.ndarray:
    """DPMSolverMultistepScheduler's integer timesteps (K + 1 grid points, the last dropped)."""
    total = config.num_train_timesteps
    spacing = config.spacing("dpm++2m")
    if spacing == "linspace":
        return np.linspace(0, total - 1, k + 1).round()[::-1][:-1]
    if spacing == "leading":
        # Not DiffusionConfig's leading grid of K + 1 steps: diffusers does not check this one's range.
        return (np.arange(k + 1) * (total // (k + 1))).round()[::-1][:-1] + config.steps_offset
    return config.diffusion_config("dpm++2m").timesteps(k).astype(float)


def _karras(sigma_min: float, sigma_max: float, k: int) -> np.ndarray:
    ramp = np.linspace(0.0, 1.0, k)
    lo, hi = sigma_min ** (1 / 7), sigma_max ** (1 / 7)
    return (hi + ramp * (lo - hi)) ** 7


def _ve_sigmas(config: SchedulerConfig, sampler: str, k: int) -> np.ndarray:
    """The K + 1 VE sigmas of Euler, Euler-ancestral, Heun (before duplication) and DPM-Solver++."""
    abar = config.diffusion_config().alphas_cumprod
    train = np.sqrt((1.0 - abar) / abar)
    if sampler in ("dpm++2m", "dpm++1s"):
        timesteps = _dpm_timesteps(config, k)
        karras_range = (train[0], train[-1])
    else:
        timesteps = _timesteps(config, sampler, k)
    sigmas = np.interp(timesteps, np.arange(len(train)), train)
    if sampler not in ("dpm++2m", "dpm++1s"):
        karras_range = (sigmas[-1], sigmas[0])
    if config.use_karras_sigmas and sampler in _KARRAS_SOLVERS:
        sigmas = _karras(*karras_range, k)
    # Only Euler and DPM-Solver++ have a final_sigmas_type; Euler-ancestral and Heun always end at 0.
    if sampler in ("euler-a", "heun") or config.final_sigmas_type == "zero":
        last = 0.0
    else:
        last = float(train[0])
    return np.append(sigmas, last)


def _dpm_plan(config: SchedulerConfig, sampler: str, sigmas: np.ndarray) -> SolverPlan:
    """DPM-Solver++ (midpoint) in VP form, with diffusers' choice of order at each step."""
    k = len(sigmas) - 1
    now, after = sigmas[:-1], sigmas[1:]
    alpha = 1.0 / np.sqrt(now**2 + 1.0)
    alpha_next = 1.0 / np.sqrt(after**2 + 1.0)
    # exp(-h) with h the step in log-SNR is the ratio of VE sigmas; it stays finite at a last sigma of 0.
    decay = after / now
    x_coef = decay * alpha_next / alpha
    first = alpha_next * (1.0 - decay)
    second = np.zeros(k, dtype=bool)
    if sampler == "dpm++2m":
        final_first = config.final_sigmas_type == "zero" or (config.lower_order_final and k < 15)
        second[1:] = True
        if final_first:
            second[-1] = False
    d_coef = first.copy()
    prev_coef = np.zeros(k)
    idx = np.flatnonzero(second)
    if idx.size:
        h = np.log(now[idx] / after[idx])
        h0 = np.log(sigmas[idx - 1] / now[idx])
        half_over_r = 0.5 * h / h0
        d_coef[idx] = first[idx] * (1.0 + half_over_r)
        prev_coef[idx] = -first[idx] * half_over_r
    return SolverPlan(alpha, now * alpha, x_coef, d_coef, prev_coef, np.zeros(k), 1.0, sigmas)


def _flow_plan(config: SchedulerConfig, k: int) -> SolverPlan:
    """FlowMatchEulerDiscreteScheduler: sigma from 1 to the (twice) shifted sigma_min, then 0."""
    total, shift = config.num_train_timesteps, float(config.shift)

    def shifted(s):
        return shift * s / (1.0 + (shift - 1.0) * s)

    # set_timesteps spaces the already shifted sigma range linearly, then shifts again (as diffusers does).
    sigmas = shifted(np.linspace(shifted(1.0), shifted(1.0 / total), k))
    sigmas = np.append(sigmas, 0.0)
    now, after = sigmas[:-1], sigmas[1:]
    zeros = np.zeros(k)
    return SolverPlan(1.0 - now, now, after / now, 1.0 - after / now, zeros, zeros, 1.0, sigmas)


def solver_moments(
    cond_mean,
    cond_var,
    uncond_mean,
    uncond_var,
    *,
    cfg,
    schedule="constant",
    sampler: str = "dpm++2m",
    steps: int = 50,
    scheduler: SchedulerConfig | str | None = None,
) -> Moments:
    """Mean and variance of guided sampling with a diffusers solver, exactly (Gaussian p_c, p_u per axis).

    Parameters
    ----------
    cond_mean, cond_var, uncond_mean, uncond_var : float or array
        ``p_c = N(cond_mean, cond_var)`` and ``p_u = N(uncond_mean, uncond_var)``; all broadcast
        together with ``cfg``.
    cfg : float or array
        Peak guidance scale w.
    schedule : str or CFGSchedule
        Guidance shape over the model evaluations in pipeline-loop order (the entries of
        diffusers' ``scheduler.timesteps``): K, or 2K - 1 for Heun.
    sampler : {"euler", "euler-a", "dpm++2m", "dpm++1s", "heun", "flow-euler"}
    steps : int
        Number of inference steps K.
    scheduler : SchedulerConfig or preset name, optional
        SD v1.5's by default (``"sd3"`` for ``flow-euler``).

    Returns
    -------
    qtm.gaussian.Moments

    Examples
    --------
    >>> out = solver_moments(1.0, 0.5, 0.0, 1.0, cfg=[1.0, 7.5], sampler="euler", steps=30)
    >>> out.var.round(3).tolist()
    [0.441, 0.003]
    """
    model = check_model(cond_mean, cond_var, uncond_mean, uncond_var)
    cfg = as_float_array(cfg, "cfg")
    schedule = CFGSchedule.parse(schedule)
    plan = solver_plan(sampler, steps, scheduler=scheduler)
    return plan_moments(plan, *scale_table(schedule, cfg, plan.abar), *model)


def check_model(cond_mean, cond_var, uncond_mean, uncond_var) -> tuple[np.ndarray, ...]:
    """The two branches' moments as float arrays: finite means, non-negative variances."""
    cond_mean = as_float_array(cond_mean, "cond_mean")
    uncond_mean = as_float_array(uncond_mean, "uncond_mean")
    return cond_mean, check_nonnegative(cond_var, "cond_var"), uncond_mean, check_nonnegative(uncond_var, "uncond_var")


def scale_table(schedule: CFGSchedule, cfg: np.ndarray, alphas_cumprod: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The guidance scale of each distinct peak scale at each model evaluation, and the row of each entry of ``cfg``.

    Returns
    -------
    table : numpy.ndarray of shape (distinct values, evaluations)
    rows : numpy.ndarray of int, shape ``cfg.shape``
    """
    values, inverse = np.unique(cfg, return_inverse=True)
    return schedule.scales(values, len(alphas_cumprod), alphas_cumprod=alphas_cumprod), inverse.reshape(cfg.shape)


def plan_moments(plan: SolverPlan, table, rows, cond_mean, cond_var, uncond_mean, uncond_var) -> Moments:
    """The law of one guided sampling along ``plan`` from the checked branch moments (:func:`check_model`).

    ``table`` and ``rows`` are :func:`scale_table`'s for the plan's evaluations. The mean of ``x`` and of the
    previous guided output ``D_{k-1}`` and their 2x2 covariance propagate exactly (Heun: one affine map per step),
    in :func:`qtm.moments_kernels.sampler_kernel`.
    """
    shape = np.broadcast_shapes(cond_mean.shape, cond_var.shape, uncond_mean.shape, uncond_var.shape, rows.shape)
    model = [flat_points(values, shape) for values in (cond_mean, cond_var, uncond_mean, uncond_var)]
    size = math.prod(shape)
    mean, var = np.empty(size), np.empty(size)
    sampler_kernel(*model, flat_points(rows, shape, dtype=np.int64), np.ascontiguousarray(table.T), plan_arrays(plan),
                   mean, var)
    return Moments(mean.reshape(shape), var.reshape(shape))


def plan_arrays(plan: SolverPlan) -> tuple:
    """The plan as the kernels of :mod:`qtm.moments_kernels` take it (Heun: ``x_coef`` and ``d_coef`` empty)."""
    empty = np.empty(0)
    # Squared one step at a time, as the NumPy form of this map did, so that the results keep their last bits.
    noise_var = np.array([std**2 for std in plan.noise_std])
    heun = plan.x_coef is None
    return (np.ascontiguousarray(plan.alpha), np.ascontiguousarray(plan.noise),
            empty if heun else np.ascontiguousarray(plan.x_coef), empty if heun else np.ascontiguousarray(plan.d_coef),
            np.ascontiguousarray(plan.prev_coef), noise_var, np.ascontiguousarray(plan.sigmas),
            float(plan.init_std**2), heun)


def flat_points(values: np.ndarray, shape: tuple, *, dtype=np.float64) -> np.ndarray:
    """One value for all points, or one per point of ``shape`` (flat), as the kernels take them."""
    flat = values.reshape(1) if values.size == 1 else np.broadcast_to(values, shape).reshape(-1)
    return np.require(flat, dtype=dtype, requirements=["C", "W"])
