"""Figure: how far 25 and 50 steps of each diffusers solver are from the continuous-time limits.

:func:`solver_limits` draws on a matplotlib figure with the parameters of :data:`PARAMETERS` (the signature
:func:`qtm.figures.figure` registers; ``qtm figures`` draws it).

Examples
--------
>>> sorted(PARAMETERS)
['cfg', 'model', 'samplers', 'steps']
"""

from __future__ import annotations

import numpy as np

NAME = "solver_limits"
TITLE = "Every solver against its continuous-time limit"
CAPTION = (
    "Output variance of one guided sampling against the CFG scale w for p_c = N(1, 1), p_u = N(0, 1.5) "
    "(qtm simulate's default model), SD v1.5's scheduler (flow Euler: SD3's). Left: the limits of infinitely "
    "many steps, the probability-flow ODE (variance v_c^w v_u^(1-w)) and the reverse SDE (the integral of "
    "E^-4), the tilt, and each solver at 25 (dashed) and 50 (solid) steps. Right: each solver's variance "
    "relative to its own limit (ODE for DDIM, Euler, DPM-Solver++, Heun and flow Euler; SDE for DDPM and "
    "Euler-ancestral). Finite steps and SD v1.5's finite sigma_max keep every solver away from its limit, "
    "by a factor that grows with w."
)
PARAMETERS = {
    "cfg": tuple(np.round(np.linspace(1.0, 10.0, 19), 2).tolist()),
    "samplers": ("ddim", "euler", "dpm++2m", "heun", "flow-euler", "ddpm", "euler-a"),
    "steps": (25, 50),
    "model": (1.0, 1.0, 0.0, 1.5),
}
_SDE_SAMPLERS = ("ddpm", "euler-a")


def solver_limits(fig, *, cfg, samplers, steps, model):
    """Draw the figure on ``fig`` (two panels).

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> fig = plt.figure()
    >>> solver_limits(fig, cfg=(1.0, 3.0), samplers=("ddim",), steps=(25,), model=(1.0, 1.0, 0.0, 1.5))
    >>> len(fig.axes)
    2
    >>> plt.close(fig)
    """
    from qtm.continuous import continuous_moments
    from qtm.sampler_map import guided_moments
    from qtm.solvers import SchedulerConfig

    cfg = np.asarray(cfg, dtype=float)
    var_ax, ratio_ax = fig.subplots(1, 2)
    limits = {kind: continuous_moments(*model, cfg=cfg, sampler=kind).var for kind in ("ode", "sde")}
    var_ax.plot(cfg, limits["ode"], "k-", lw=2.5, label="ODE limit")
    var_ax.plot(cfg, limits["sde"], "k--", lw=2.5, label="SDE limit")
    var_ax.plot(cfg, guided_moments(*model, cfg=cfg, sampler="tilt").var, "k:", label="tilt")
    styles = ("--", "-", "-.", ":")
    for index, sampler in enumerate(samplers):
        scheduler = SchedulerConfig.for_sampler(sampler)
        limit = limits["sde" if sampler in _SDE_SAMPLERS else "ode"]
        for count, style in zip(steps, styles, strict=False):
            var = guided_moments(*model, cfg=cfg, sampler=sampler, steps=count, scheduler=scheduler).var
            label = sampler if count == steps[-1] else None
            var_ax.plot(cfg, var, style, color=f"C{index}", label=label)
            ratio_ax.plot(cfg, var / limit, style, color=f"C{index}", label=f"{sampler}, {count} steps")
    ratio_ax.axhline(1.0, color="k", lw=0.8)
    var_ax.set(yscale="log", xlabel="CFG scale w", ylabel="output variance",
               title=f"p_c = N({model[0]:g}, {model[1]:g}), p_u = N({model[2]:g}, {model[3]:g})")  # fmt: skip
    ratio_ax.set(yscale="log", xlabel="CFG scale w", ylabel="variance / its limit's",
                 title="distance from the limit (dashed: 25 steps, solid: 50)")  # fmt: skip
    var_ax.legend(fontsize=7)
    ratio_ax.legend(fontsize=6, ncol=2)
