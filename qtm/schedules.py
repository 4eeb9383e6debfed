"""Classifier-free guidance schedules: one guidance scale per denoising step.

These definitions are the only ones in the project: the exact sampler map, the
particle simulator and the real chain (through the diffusers step-end callback)
all call :meth:`CFGSchedule.scales`, so that theory and experiment mean the same
schedule.

A schedule is a *shape*; the peak scale ``cfg`` is given separately. Steps are
numbered ``k = 0 .. K-1`` in sampling order (``k = 0`` is the noisiest step).

=================  =========================================================
spec               guidance scale at step k (progress ``s = k / (K-1)``)
=================  =========================================================
``constant``       ``cfg``
``linear[:END]``   ``cfg + (END - cfg) * s`` (END defaults to 1)
``cosine[:END]``   ``END + (cfg - END) * (1 + cos(pi s)) / 2`` (END defaults to 1)
``cutoff:F``       ``cfg`` for the first ``ceil(F K)`` steps, then 1 (no guidance)
``interval:LO:HI`` ``cfg`` while the noise level ``sigma = sqrt((1-abar)/abar)``
                   lies in ``[LO, HI]``, else 1 (guidance in a limited interval)
=================  =========================================================

A scale of 1 means "conditional branch only", the neutral point of selection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qtm.errors import QTMError

SCHEDULE_KINDS = ("constant", "linear", "cosine", "cutoff", "interval")

#: The decaying schedule that ReDiFine's ``--redifine`` shorthand selects.
REDIFINE_SCHEDULE = "cosine"
#: The condition-drop probability that ReDiFine's ``--redifine`` shorthand selects.
REDIFINE_DROP = 0.2


@dataclass(frozen=True)
class CFGSchedule:
    """A guidance schedule shape.

    Parameters
    ----------
    kind : {"constant", "linear", "cosine", "cutoff", "interval"}
    end : float
        Final scale of the ``linear`` and ``cosine`` decays.
    fraction : float
        Share of the steps guided by ``cutoff``.
    sigma_low, sigma_high : float
        The noise interval of ``interval``.

    Examples
    --------
    >>> CFGSchedule.parse("linear").scales(7.0, num_steps=4).tolist()
    [7.0, 5.0, 3.0, 1.0]
    >>> CFGSchedule.parse("cutoff:0.5").scales(3.0, num_steps=4).tolist()
    [3.0, 3.0, 1.0, 1.0]
    """

    kind: str = "constant"
    end: float = 1.0
    fraction: float = 1.0
    sigma_low: float = 0.0
    sigma_high: float = math.inf

    def __post_init__(self):
        if self.kind not in SCHEDULE_KINDS:
            raise QTMError(f"unknown CFG schedule {self.kind!r}; choose one of: {', '.join(SCHEDULE_KINDS)}")
        if not 0.0 <= self.fraction <= 1.0:
            raise QTMError(f"the cutoff fraction must lie in [0, 1], got {self.fraction:g}")
        if not 0 <= self.end < math.inf:
            raise QTMError(
                f"the final scale of a decaying schedule must be finite and >= 0, got {self.end:g}"
            )
        if not 0.0 <= self.sigma_low <= self.sigma_high:
            raise QTMError(
                "the guidance interval needs 0 <= LO <= HI, "
                f"got LO={self.sigma_low:g}, HI={self.sigma_high:g}"
            )

    @classmethod
    def parse(cls, spec: str | CFGSchedule) -> CFGSchedule:
        """Build a schedule from its text form (``"cosine"``, ``"cutoff:0.4"``, ``"interval:0.3:5"``...)."""
        if isinstance(spec, CFGSchedule):
            return spec
        name, *args = str(spec).strip().split(":")
        try:
            values = [float(a) for a in args]
        except ValueError:
            raise QTMError(f"CFG schedule {spec!r}: the arguments after ':' must be numbers") from None
        expected = {
            "constant": (0, 0), "linear": (0, 1), "cosine": (0, 1), "cutoff": (1, 1), "interval": (2, 2),
        }
        if name not in expected:
            raise QTMError(f"unknown CFG schedule {name!r}; choose one of: {', '.join(SCHEDULE_KINDS)}")
        low, high = expected[name]
        if not low <= len(values) <= high:
            raise QTMError(f"CFG schedule {spec!r}: {name} takes {_count_text(low, high)} after ':'")
        if name in ("linear", "cosine"):
            return cls(name, end=values[0] if values else 1.0)
        if name == "cutoff":
            return cls(name, fraction=values[0])
        if name == "interval":
            return cls(name, sigma_low=values[0], sigma_high=values[1])
        return cls(name)

    @property
    def spec(self) -> str:
        """The text form, which :meth:`parse` reads back."""
        if self.kind in ("linear", "cosine"):
            return self.kind if self.end == 1.0 else f"{self.kind}:{_number(self.end)}"
        if self.kind == "cutoff":
            return f"cutoff:{_number(self.fraction)}"
        if self.kind == "interval":
            return f"interval:{_number(self.sigma_low)}:{_number(self.sigma_high)}"
        return "constant"

    def mean_scale(self, cfg, num_steps: int, *, alphas_cumprod=None) -> np.ndarray:
        """The schedule's mean scale over the steps: the w of the idealised tilt that stands for it.

        The moments engine's ``tilt`` sampler and the particle engine's ``qg`` model both
        select with (p_c/p_u)^(w-1) at this w, so that they mean the same thing by a schedule.

        Examples
        --------
        >>> float(CFGSchedule.parse("cutoff:0.5").mean_scale(5.0, 10))
        3.0
        """
        return self.scales(cfg, num_steps, alphas_cumprod=alphas_cumprod).mean(axis=-1)

    def scales(self, cfg, num_steps: int, *, alphas_cumprod=None) -> np.ndarray:
        """Guidance scale of each of ``num_steps`` steps, in sampling order.

        Parameters
        ----------
        cfg : float or array
            Peak guidance scale; an array gives one schedule per entry along a
            new last axis.
        num_steps : int
            Number of denoising steps K.
        alphas_cumprod : array of shape (K,), optional
            Cumulative alpha product at each step's timestep (needed by ``interval`` only).

        Returns
        -------
        numpy.ndarray of shape ``np.shape(cfg) + (K,)``
        """
        if num_steps < 1:
            raise QTMError(f"the number of steps must be >= 1, got {num_steps}")
        cfg = np.asarray(cfg, dtype=float)[..., None]
        progress = np.arange(num_steps) / max(num_steps - 1, 1)
        if self.kind == "constant":
            out = cfg + 0.0 * progress
        elif self.kind == "linear":
            out = cfg + (self.end - cfg) * progress
        elif self.kind == "cosine":
            out = self.end + (cfg - self.end) * 0.5 * (1.0 + np.cos(np.pi * progress))
        elif self.kind == "cutoff":
            guided = np.arange(num_steps) < math.ceil(self.fraction * num_steps - 1e-12)
            out = np.where(guided, cfg, 1.0)
        else:
            if alphas_cumprod is None:
                raise QTMError("the 'interval' CFG schedule needs the noise level of each step")
            abar = np.asarray(alphas_cumprod, dtype=float)
            if abar.shape != (num_steps,):
                raise QTMError(f"expected {num_steps} noise levels, got {abar.shape}")
            sigma = np.sqrt((1.0 - abar) / abar)
            inside = (sigma >= self.sigma_low) & (sigma <= self.sigma_high)
            out = np.where(inside, cfg, 1.0)
        return np.broadcast_to(out, (*cfg.shape[:-1], num_steps)).copy()


def _number(value: float) -> str:
    """Shortest text that reads back as exactly ``value`` (``2`` rather than ``2.0``)."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _count_text(low: int, high: int) -> str:
    if low == high:
        return f"exactly {low} number{'s' if low != 1 else ''}"
    return f"at most {high} number{'s' if high != 1 else ''}"
