"""The chain recursion: expected trait moments of a Chain of Diffusion, iteration by iteration.

The model's conventions (``CONTRIBUTING.md``): the base model has a conditional
branch ``N(cond_mean, cond_var)`` and an unconditional one ``N(uncond_mean, uncond_var)``;
``D_0`` is the real data ``N(data_mean, data_var)``. Iteration ``t = 0, 1, ...``:

1. finetune on ``D_t``: ``c_t = inherit(prior_c, D_t, rho, rho_v, mu)`` and
   ``u_t = inherit(prior_u, D_t, rho_u, s rho_v, s mu)``, with the prior the base model
   (``finetune="base"``, the reference setup) or the model of iteration ``t-1``
   (``finetune="continue"``); the variance moves linearly with the fidelity unless
   ``var_fidelity`` rho_v is given (then in log space), ``var_shift`` mu is the log-space
   finetuning error and ``s = min(1, rho_u / rho)`` (:func:`qtm.params.uncond_share`);
2. generate: ``G_t = guided_moments(c_t, u_t, w_eff, schedule, sampler, ...)`` with the peak scale
   ``w_eff = 1 + g (cfg - 1)`` of the guidance gain g (:func:`qtm.params.effective_cfg`; g = 1 by
   default: the scale as given); with a selection slope beta the variance is instead ``c_t``'s times
   ``w_geo ** beta``, ``w_geo`` the schedule's geometric mean scale; then add the mutation variance;
3. build the next data set: the expected refit moments of ``population`` samples of
   ``G_t`` (when finite), mixed with the real data at rate ``real_fraction``:
   ``D_{t+1} = mix(G_t, real, real_fraction)`` (``data_workflow="replace"``); or the pool of
   ``D_0`` and every generation so far, each mixed with real data (``accumulate``), or a sample
   of one generation's size from that pool (``accumulate-subsample``): docs/theory.md, "Data
   workflows".

The trajectory records ``G_t`` (after mutation) for every iteration ``t``.

**The model's assumption on the unconditional branch.** Finetuning with
condition-drop probability ``p`` shows the unconditional branch the data in a
fraction ``p`` of the examples, and real networks share the branches' weights, so
the branch moves even without condition drop (issue 13) by its drift ``a``
(``uncond_drift``): it moves with fidelity ``rho_u = min(1, a + p * rho)``
(:func:`qtm.params.default_uncond_fidelity`) unless ``uncond_fidelity`` says
otherwise. This is an assumption of the model, fitted on real chains by
``validate``; the default ``a = 0`` with ``p = 0`` keeps the base unconditional
model for ever.

**Expectations only.** The engine computes expected moments. Finetuning's process
noise (``process_noise``, a random shift of the model's mean each iteration) has mean
zero and, without real data (``real_fraction = 0``), no variance ever depends on a mean,
so the expected trajectory is exactly that without the noise; with real data the mixture's
gap term ``f (1-f) (m - m_d)^2`` gains ``f (1-f) Var(m)``, which the engine leaves out.
The noise enters the particle engine (:mod:`qtm.particles`), and the ``validate`` fit.

Every parameter broadcasts, so a parameter grid is just broadcasting (a trait
axis is one more dimension). The text parameters (``schedule``, ``sampler``,
``finetune``) and ``steps`` and ``eta`` may be arrays too: the points are grouped
by them. Each group's sampler is prepared once (:func:`qtm.sampler_map.prepare_sampler`: the
DDIM coefficients or the solver plan, the schedule's scale table). The DDIM/DDPM samplers and
diffusers' other solvers run in one fused Numba kernel per group (:mod:`qtm.moments_kernels`:
all iterations and all K steps of a block of 16 points in L1 cache, the block's points in
SIMD lanes, blocks on all cores), which does 10^6 points x 20 iterations x 50 steps in
a few seconds on two cores (``benchmarks/moments_grid.py``, ``benchmarks/solver_costs.py``);
the solvers' kernel computes what the :mod:`qtm.gaussian` operators compute, to the last bit. The
tilt and the ODE/SDE limits run through those operators and the prepared sampler, vectorised
over the grid.

Examples
--------
>>> traj = simulate_moments(cond_mean=1.0, cond_var=1.0, uncond_mean=0.0, uncond_var=4.0,
...                         data_mean=1.0, data_var=1.0, cfg=[1.0, 3.0], iterations=5, steps=20)
>>> traj.var.shape
(2, 5)
>>> collapse_iteration(traj, threshold=0.01).tolist()
[-1, 1]
>>> divergence_iteration(traj).tolist()
[-1, -1]
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from qtm.errors import QTMError
from qtm.params import PARAMETERS, default_uncond_fidelity, effective_cfg, uncond_share
from qtm.recursion_engines import KERNEL_SAMPLERS, run_kernel, run_operators, run_solver
from qtm.sampler_map import ddim_config, prepare_sampler
from qtm.schedules import CFGSchedule
from qtm.solvers import SchedulerConfig
from qtm.validation import check_unit_interval


class ChainTrajectory(NamedTuple):
    """Moments of the images generated at each iteration.

    Attributes
    ----------
    mean, var : numpy.ndarray of shape ``grid + (iterations,)``
        Trait mean and variance of ``G_t``, ``t = 0 .. iterations-1``.
    data_mean, data_var : numpy.ndarray of shape ``grid``
        The real data's moments (the reference for collapse).
    """

    mean: np.ndarray
    var: np.ndarray
    data_mean: np.ndarray
    data_var: np.ndarray


def simulate_moments(
    *,
    cond_mean,
    cond_var,
    uncond_mean,
    uncond_var,
    data_mean,
    data_var,
    cfg,
    schedule="constant",
    drop=0.0,
    fidelity=1.0,
    uncond_fidelity=None,
    iterations: int,
    finetune="base",
    real_fraction=0.0,
    sampler="ddim",
    steps=50,
    eta=0.0,
    population: int | None = None,
    mutation=0.0,
    var_fidelity=None,
    var_shift=0.0,
    process_noise=0.0,
    scheduler: SchedulerConfig | str | None = None,
    data_workflow="replace",
    uncond_drift=0.0,
    guidance_gain=1.0,
    selection_slope=None,
) -> ChainTrajectory:
    """Iterate the chain on expected moments, for every point of a broadcast parameter grid.

    Parameters
    ----------
    cond_mean, cond_var, uncond_mean, uncond_var : float or array
        The base model's conditional and unconditional Gaussians.
    data_mean, data_var : float or array
        The real data ``D_0``.
    cfg : float or array
        Peak CFG scale w (the real scale; ``guidance_gain`` maps it to the one the sampler uses).
    schedule : str or array of str
        CFG schedule shape (:mod:`qtm.schedules`).
    drop : float or array in [0, 1]
        Condition-drop probability p of finetuning.
    fidelity : float or array in [0, 1]
        Fidelity rho of the conditional branch.
    uncond_fidelity : None, float or array in [0, 1]
        Fidelity of the unconditional branch; ``None`` (or NaN entries) means
        ``min(1, uncond_drift + drop * fidelity)``.
    iterations : int
        Number of iterations (>= 1).
    finetune : {"base", "continue"} or array of them
        The prior of each finetuning.
    real_fraction : float or array in [0, 1]
        Share of real data mixed into each data set ``D_{t+1}``.
    sampler : str (:data:`qtm.params.SAMPLERS`) or array of them
        See :func:`qtm.sampler_map.guided_moments` (``ddpm`` ignores ``eta``).
    steps : int or array of int
        Sampler steps K.
    eta : float or array in [0, 1]
        DDIM noise weight.
    population : int >= 2, optional
        Images per iteration; when given, ``D_{t+1}`` takes the expected moments of the
        maximum-likelihood refit on that many samples (variance times ``(N-1)/N``).
    mutation : float or array >= 0
        Variance added to every generated set.
    var_fidelity : None, float or array in [0, 1]
        rho_v: finetuning moves each branch's variance in log space,
        ``ln v = ln v_prior + rho_v (ln v_data - ln v_prior) + mu`` (the unconditional branch
        with ``s rho_v``, ``s = min(1, rho_u / rho)``); ``None`` (or NaN entries) moves the
        variance linearly with the fidelity, as before.
    var_shift : float or array
        mu: log-space finetuning error; every finetuned conditional variance is multiplied by
        ``exp(mu)``, the unconditional one by ``exp(s mu)``.
    process_noise : float or array >= 0
        SD of finetuning's noise on the model's mean. Checked, but it does not change the
        expected moments this engine computes (see the module's docstring).
    scheduler : qtm.solvers.SchedulerConfig or preset name, optional
        The noise scheduler every sampler steps with (diffusers' conventions; SD v1.5's by
        default, :meth:`qtm.solvers.SchedulerConfig.from_parameters` builds one from the parameters).
    data_workflow : {"replace", "accumulate", "accumulate-subsample"} or array of them
        What ``D_{t+1}`` is. ``replace``: the newest generation (mixed with real data).
        ``accumulate``: the pool of ``D_0`` and the generations ``0 .. t`` (each of ``population``
        images, each mixed with real data): its mixture moments, between-set spread included,
        and with finite ``population`` the expected maximum-likelihood refit of the pool
        (variance minus ``sum_k (n_k/M) v_k / M`` over the generated strata). ``accumulate-subsample``:
        ``population`` images drawn from that pool, taken as the pool's mixture moments with the
        one-generation refit shrink ``(N-1)/N``. Where these are exact: docs/theory.md, "Data workflows".
    uncond_drift : float or array in [0, 1]
        a: the unconditional branch's fidelity without condition drop (the branches share their
        weights), in the default ``uncond_fidelity``; 0 gives ``drop * fidelity`` bit for bit.
    guidance_gain : float or array >= 0
        g: the sampler guides with the peak scale ``1 + g (cfg - 1)`` (:func:`qtm.params.effective_cfg`),
        which the schedule shapes as it shapes ``cfg``; 1 gives ``cfg`` bit for bit.
    selection_slope : None, float or array
        beta: where given, the generated set's variance is the finetuned conditional model's times
        ``w_geo ** beta``, with ``w_geo`` the geometric mean of the schedule's scales at ``cfg`` over the sampler's
        steps (:attr:`qtm.sampler_map.PreparedSampler.mean_log_scales`), and the sampler's law sets only the mean:
        the selection on ln var of the shared model ``chain validate`` fits (:mod:`validate.transition`). ``None``
        (or NaN entries): the sampler's law for both. These points run through the :mod:`qtm.gaussian` operators.

    Returns
    -------
    ChainTrajectory

    Raises
    ------
    QTMError
        On bad input; :class:`qtm.errors.ImproperDistributionError` when the tilt's
        precision is not positive at some point and iteration.

    Examples
    --------
    >>> traj = simulate_moments(cond_mean=1.0, cond_var=1.0, uncond_mean=0.0, uncond_var=4.0,
    ...                         data_mean=1.0, data_var=1.0, cfg=7.5, drop=[0.0, 1.0],
    ...                         finetune="continue", iterations=3, sampler="tilt")
    >>> traj.var.round(3).tolist()
    [[0.17, 0.024, 0.003], [1.0, 1.0, 1.0]]
    >>> pooled = simulate_moments(cond_mean=1.0, cond_var=1.0, uncond_mean=0.0, uncond_var=4.0,
    ...                           data_mean=1.0, data_var=1.0, cfg=7.5, finetune="continue", iterations=3,
    ...                           sampler="tilt", data_workflow=["replace", "accumulate"])
    >>> pooled.var.round(3).tolist()
    [[0.17, 0.024, 0.003], [0.17, 0.093, 0.065]]
    """
    iterations = PARAMETERS["iterations"].check(iterations)
    numeric = {
        name: PARAMETERS[name].check(value)
        for name, value in (
            ("cond_mean", cond_mean), ("cond_var", cond_var), ("uncond_mean", uncond_mean),
            ("uncond_var", uncond_var), ("data_mean", data_mean), ("data_var", data_var), ("cfg", cfg),
            ("fidelity", fidelity), ("real_fraction", real_fraction), ("mutation", mutation),
        )
    }
    numeric["selection_slope"] = _optional("selection_slope", selection_slope)
    real_cfg = numeric["cfg"]
    numeric["cfg"] = effective_cfg(numeric["cfg"], PARAMETERS["guidance_gain"].check(guidance_gain))
    numeric["uncond_fidelity"] = _uncond_fidelity(uncond_fidelity, PARAMETERS["drop"].check(drop),
                                                  numeric["fidelity"], PARAMETERS["uncond_drift"].check(uncond_drift))
    PARAMETERS["process_noise"].check(process_noise)
    share = uncond_share(numeric["fidelity"], numeric["uncond_fidelity"])
    numeric["var_fidelity"] = _optional("var_fidelity", var_fidelity)
    numeric["uncond_var_fidelity"] = share * numeric["var_fidelity"]
    numeric["var_shift"] = PARAMETERS["var_shift"].check(var_shift)
    numeric["uncond_var_shift"] = share * numeric["var_shift"]
    population = PARAMETERS["population"].check(population)
    categorical = {
        "schedule": _text_array(schedule),
        "sampler": _text_array(sampler),
        "finetune": _text_array(finetune),
        "steps": np.asarray(steps),
        "eta": PARAMETERS["eta"].check(eta),
        "data_workflow": _text_array(data_workflow),
    }
    for name in ("sampler", "finetune", "steps", "data_workflow"):
        for value in np.unique(categorical[name]):
            PARAMETERS[name].check(value.item() if hasattr(value, "item") else value)
    schedules = {str(s): CFGSchedule.parse(str(s)) for s in np.unique(categorical["schedule"])}
    scheduler = SchedulerConfig.parse(scheduler)

    shapes = [a.shape for a in numeric.values()] + [a.shape for a in categorical.values()]
    shape = np.broadcast_shapes(*shapes)
    size = int(np.prod(shape))
    mean = np.empty((size, iterations))
    var = np.empty((size, iterations))
    for key, index in _groups(categorical, shape):
        schedule_spec, sampler_name, mode, num_steps, eta_value, workflow = key
        params = {name: _flat(values, shape, index) for name, values in numeric.items()}
        fused = sampler_name in KERNEL_SAMPLERS
        # The fused kernel steps with the scheduler's DDIM part, whatever model its prediction type names.
        setting = {"config": ddim_config(sampler_name, scheduler)} if fused else {"scheduler": scheduler}
        prepared = prepare_sampler(sampler_name, cfg=params["cfg"], schedule=schedules[schedule_spec],
                                   steps=int(num_steps), eta=float(eta_value), **setting)
        # The fused kernels know the sampler's law only.
        sloped = ~np.isnan(params["selection_slope"])
        runner = run_operators if sloped.any() else run_kernel if fused else run_solver
        if sloped.any():
            with np.errstate(divide="ignore"):
                log_scale = prepared.at(_flat(real_cfg, shape, index)).mean_log_scales
            if not np.isfinite(log_scale[np.broadcast_to(sloped, log_scale.shape)]).all():
                raise QTMError(f"a selection slope selects by the mean log of the CFG scale over the steps, and CFG "
                               f"schedule {schedule_spec!r} reaches a scale of 0 at some cfg: give cfg > 0 and a "
                               "schedule that ends above 0, or no selection slope (--calibration none)")
            params["mean_log_scale"] = log_scale
        run = dict(params, iterations=iterations, sampler=prepared, continue_=mode == "continue",
                   population=population, workflow=workflow)
        if index is None:
            runner(**run, out=(mean, var))
        else:
            group = (np.empty((index.size, iterations)), np.empty((index.size, iterations)))
            runner(**run, out=group)
            mean[index], var[index] = group
    return ChainTrajectory(
        mean.reshape((*shape, iterations)),
        var.reshape((*shape, iterations)),
        np.broadcast_to(numeric["data_mean"], shape).copy(),
        np.broadcast_to(numeric["data_var"], shape).copy(),
    )


def collapse_iteration(trajectory: ChainTrajectory, *, threshold: float = 0.1) -> np.ndarray:
    """First iteration whose variance is at most ``threshold`` times the real data's, or -1 if none.

    Parameters
    ----------
    trajectory : ChainTrajectory
    threshold : float in (0, 1]
        Collapse means ``var_t <= threshold * data_var`` (as in
        :func:`qtm.equilibria.iterations_to_collapse`).

    Returns
    -------
    numpy.ndarray of int, shape ``grid``

    Examples
    --------
    >>> traj = ChainTrajectory(np.zeros(3), np.array([1.0, 0.5, 0.05]), np.array(0.0), np.array(1.0))
    >>> int(collapse_iteration(traj, threshold=0.1))
    2
    """
    threshold = float(check_unit_interval(threshold, "threshold", closed_left=False))
    below = trajectory.var <= threshold * trajectory.data_var[..., None]
    return np.where(below.any(axis=-1), below.argmax(axis=-1), -1)


#: A trajectory diverges where its variance exceeds this multiple of the real data's, or its mean leaves the
#: real data's mean by this many real-data SDs (or either turns inf or NaN).
DIVERGENCE_FACTOR = 1e6


def divergence_iteration(trajectory: ChainTrajectory) -> np.ndarray:
    """First iteration whose moments leave the real data's scale or turn non-finite, or -1 if none.

    A point diverges at iteration t when ``var_t > 1e6 * data_var``, ``|mean_t - data_mean| > 1e6 *
    sqrt(data_var)`` (:data:`DIVERGENCE_FACTOR`) or either moment is inf or NaN: a chain that far from its
    data has left every regime the model describes, so what follows says nothing (and will overflow).

    Parameters
    ----------
    trajectory : ChainTrajectory

    Returns
    -------
    numpy.ndarray of int, shape ``grid``

    Examples
    --------
    >>> traj = ChainTrajectory(np.array([[0.0, 5e6, np.nan], [1.0, 1.0, 1.0]]),
    ...                        np.array([[1.0, 1.0, 1.0], [1.0, 2e6, np.inf]]), np.zeros(2), np.ones(2))
    >>> divergence_iteration(traj).tolist()
    [1, 1]
    >>> divergence_iteration(ChainTrajectory(np.zeros(2), np.ones(2), np.array(0.0), np.array(1.0))).tolist()
    -1
    """
    mean, var = trajectory.mean, trajectory.var
    data_mean, data_var = trajectory.data_mean[..., None], trajectory.data_var[..., None]
    with np.errstate(invalid="ignore", over="ignore"):
        # NaN compares False, so the explicit finiteness tests catch it.
        away = (
            ~np.isfinite(mean) | ~np.isfinite(var) | (var > DIVERGENCE_FACTOR * data_var)
            | (np.abs(mean - data_mean) > DIVERGENCE_FACTOR * np.sqrt(data_var))
        )
    return np.where(away.any(axis=-1), away.argmax(axis=-1), -1)


def _uncond_fidelity(uncond_fidelity, drop: np.ndarray, fidelity: np.ndarray, drift: np.ndarray) -> np.ndarray:
    """rho_u: the given value where given, else the model's assumption min(1, a + drop * rho)."""
    if uncond_fidelity is None:
        return default_uncond_fidelity(drop, fidelity, drift)
    given = np.asarray(uncond_fidelity, dtype=float)
    # NaN marks grid points that take the default (e.g. a table column with gaps).
    PARAMETERS["uncond_fidelity"].check(given[~np.isnan(given)])
    return np.where(np.isnan(given), default_uncond_fidelity(drop, fidelity, drift), given)


def _optional(name: str, value) -> np.ndarray:
    """An optional parameter with NaN where not given (None, or a grid point's gap): ``selection_slope`` (NaN: the
    sampler's law selects on the variance too), ``var_fidelity`` (NaN: the variance moves linearly)."""
    if value is None:
        return np.array(np.nan)
    given = np.asarray(value, dtype=float)
    PARAMETERS[name].check(given[~np.isnan(given)])
    return given


def _text_array(value) -> np.ndarray:
    return np.asarray(value, dtype=object)


def _groups(categorical: dict, shape: tuple):
    """Yield ((schedule, sampler, finetune, steps, eta, data_workflow), flat index or None for all points)."""
    if all(a.ndim == 0 for a in categorical.values()):
        yield tuple(a.item() for a in categorical.values()), None
        return
    codes, uniques = [], []
    for values in categorical.values():
        flat = np.broadcast_to(values, shape).ravel()
        unique, inverse = np.unique(flat.astype(str) if flat.dtype == object else flat, return_inverse=True)
        uniques.append(unique)
        codes.append(inverse.ravel())
    combined = np.ravel_multi_index(codes, [len(u) for u in uniques])
    for code in np.unique(combined):
        parts = np.unravel_index(code, [len(u) for u in uniques])
        key = tuple(u[p].item() for u, p in zip(uniques, parts, strict=True))
        yield key, np.flatnonzero(combined == code)


def _flat(values: np.ndarray, shape: tuple, index) -> np.ndarray:
    """A parameter for the points of one group: one value if it is constant, else one per point.

    Always a writeable C-contiguous float64 array: the kernel is compiled for exactly that
    type, and a read-only input (pandas hands those out) would otherwise compile it again."""
    if values.size == 1:
        flat = values.reshape(1)
    else:
        flat = np.broadcast_to(values, shape).reshape(-1)
        flat = flat if index is None else flat[index]
    return np.require(flat, dtype=np.float64, requirements=["C", "W"])
