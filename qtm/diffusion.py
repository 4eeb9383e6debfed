"""Diffusion conventions: beta schedules, timestep grids and DDIM step noise levels, as diffusers has them.

The exact sampler map (:mod:`qtm.sampler_map`), the particle simulator and the real
chain must agree on which noise levels a K-step sampler visits. This module
reproduces diffusers' ``DDIMScheduler`` (``__init__``, ``set_timesteps`` and the
noise levels that ``step`` reads) in NumPy, so that the theory needs no torch.
The defaults are Stable Diffusion v1.5's scheduler configuration.

All noise levels are computed in float64; diffusers computes the betas in float32,
so its ``alphas_cumprod`` differ from these in the seventh significant digit.

Two quirks of diffusers are reproduced on purpose, because the real sampler has them:

- ``step`` goes from timestep ``t`` to ``t - T // K`` (``T`` training timesteps, ``K``
  steps), not to the next timestep of the grid; with ``trailing`` or ``linspace``
  spacing the two can differ.
- The last step lands on ``final_alpha_cumprod``: 1 with ``set_alpha_to_one``, else
  ``alphas_cumprod[0]`` (SD v1.5), so the sampler's output keeps a little noise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np

from qtm.errors import QTMError
from qtm.validation import check_choice, check_int

BETA_SCHEDULES = ("scaled_linear", "linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


@dataclass(frozen=True)
class DiffusionConfig:
    """A DDIM scheduler configuration (diffusers' names and meanings; SD v1.5's defaults).

    Parameters
    ----------
    num_train_timesteps : int
        Number of training timesteps T.
    beta_start, beta_end : float
        First and last beta of the ``linear`` and ``scaled_linear`` schedules.
    beta_schedule : {"scaled_linear", "linear", "squaredcos_cap_v2"}
        ``scaled_linear`` is linear in sqrt(beta) (latent diffusion); ``squaredcos_cap_v2``
        is the cosine schedule of improved DDPM (betas capped at 0.999; ``beta_start``
        and ``beta_end`` unused).
    timestep_spacing : {"leading", "trailing", "linspace"}
        How ``K`` inference timesteps are picked among the ``T`` training ones.
    steps_offset : int
        Added to every ``leading`` timestep (SD v1.5 uses 1).
    set_alpha_to_one : bool
        Whether the last step lands on alpha-bar 1 (clean) or on ``alphas_cumprod[0]``.

    Examples
    --------
    >>> config = DiffusionConfig()
    >>> config.timesteps(4).tolist()
    [751, 501, 251, 1]
    >>> abar_t, abar_prev = config.step_alphas(4)
    >>> bool(abar_prev[-1] == config.final_alpha_cumprod == config.alphas_cumprod[0])
    True
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    timestep_spacing: str = "leading"
    steps_offset: int = 1
    set_alpha_to_one: bool = False

    def __post_init__(self):
        check_int(self.num_train_timesteps, "num_train_timesteps", minimum=1)
        check_choice(self.beta_schedule, "beta_schedule", BETA_SCHEDULES)
        check_choice(self.timestep_spacing, "timestep_spacing", TIMESTEP_SPACINGS)
        check_int(self.steps_offset, "steps_offset", minimum=0)
        if not isinstance(self.set_alpha_to_one, (bool, np.bool_)):
            raise QTMError(f"set_alpha_to_one must be True or False, got {self.set_alpha_to_one!r}")
        if self.beta_schedule != "squaredcos_cap_v2":
            for name in ("beta_start", "beta_end"):
                value = getattr(self, name)
                if not (isinstance(value, (int, float, np.floating)) and 0.0 < value < 1.0):
                    raise QTMError(f"{name} must lie in (0, 1), got {value!r}")

    @cached_property
    def alphas_cumprod(self) -> np.ndarray:
        """Cumulative product of ``1 - beta`` over the training timesteps (float64, read-only)."""
        steps = self.num_train_timesteps
        if self.beta_schedule == "linear":
            betas = np.linspace(self.beta_start, self.beta_end, steps)
        elif self.beta_schedule == "scaled_linear":
            betas = np.linspace(math.sqrt(self.beta_start), math.sqrt(self.beta_end), steps) ** 2
        else:
            betas = _cosine_betas(steps)
        abar = np.cumprod(1.0 - betas)
        abar.setflags(write=False)
        return abar

    @property
    def final_alpha_cumprod(self) -> float:
        """Alpha-bar that the last step lands on."""
        return 1.0 if self.set_alpha_to_one else float(self.alphas_cumprod[0])

    def scheduler_config(self) -> dict:
        """These settings as keyword arguments of diffusers' schedulers: ``DDIMScheduler(**config.scheduler_config())``.

        Examples
        --------
        >>> DiffusionConfig().scheduler_config()["beta_schedule"]
        'scaled_linear'
        """
        return asdict(self)

    def timesteps(self, num_inference_steps: int) -> np.ndarray:
        """The K timesteps a sampler visits, noisiest first (diffusers' ``set_timesteps``).

        Raises :class:`QTMError` when ``num_inference_steps`` exceeds the training
        timesteps, or when ``leading`` spacing with ``steps_offset`` would step past
        the last training timestep (diffusers would fail with an IndexError there).
        """
        total = self.num_train_timesteps
        k = check_int(num_inference_steps, "steps", minimum=1)
        if k > total:
            raise QTMError(f"steps must be <= num_train_timesteps ({total}), got {k}")
        if self.timestep_spacing == "linspace":
            grid = np.linspace(0, total - 1, k).round()[::-1].astype(np.int64)
        elif self.timestep_spacing == "leading":
            grid = (np.arange(k) * (total // k)).round()[::-1].astype(np.int64) + self.steps_offset
            if grid[0] >= total:
                raise QTMError(
                    f"steps={k} with leading spacing and steps_offset={self.steps_offset} reaches timestep "
                    f"{grid[0]} >= num_train_timesteps ({total}); use fewer steps or trailing spacing"
                )
        else:
            grid = np.round(np.arange(total, 0, -total / k)).astype(np.int64) - 1
        return grid

    def step_alphas(self, num_inference_steps: int) -> tuple[np.ndarray, np.ndarray]:
        """Alpha-bar before and after each of the K steps, in sampling order.

        Step ``k`` goes from timestep ``t_k`` to ``t_k - T // K`` exactly as
        diffusers' ``DDIMScheduler.step`` does, landing on ``final_alpha_cumprod`` when
        that is negative.

        Returns
        -------
        abar_t, abar_prev : numpy.ndarray of shape (K,)
        """
        timesteps = self.timesteps(num_inference_steps)
        prev = timesteps - self.num_train_timesteps // len(timesteps)
        abar = self.alphas_cumprod
        abar_t = abar[timesteps]
        abar_prev = np.where(prev >= 0, abar[np.maximum(prev, 0)], self.final_alpha_cumprod)
        return abar_t, abar_prev


def _cosine_betas(steps: int, max_beta: float = 0.999) -> np.ndarray:
    """The ``squaredcos_cap_v2`` betas (diffusers' ``betas_for_alpha_bar`` with the cosine transform)."""
    edges = np.arange(steps + 1) / steps
    alpha_bar = np.cos((edges + 0.008) / 1.008 * np.pi / 2) ** 2
    return np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], max_beta)
