"""Sweeps of the chain over a parameter grid, with either engine: what ``qtm simulate`` computes.

The command only parses its options and prints a summary; everything it writes is
built here, so that a table and its provenance can be rebuilt from Python alone.

Examples
--------
>>> points, axes = build_grid({"cfg": "1,7.5", "iterations": "3"})
>>> table = simulate_grid(points, axes)
>>> table.frame.shape[0], table.provenance["parameters"]["engine"]
(6, 'moments')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np

from qtm.errors import QTMError
from qtm.grid import grid_frame, parse_axes, parse_numbers, parse_strings
from qtm.params import GRID_PARAMETERS, MODEL_PARAMETERS, PARAMETERS, Parameter
from qtm.provenance import provenance

ENGINES = ("moments", "particles")
#: The engine is an option of a sweep, not of the chain: it lives beside the parameter model, in its form.
ENGINE = Parameter("engine", "text", "moments", "moments (exact expected moments) or particles (finite N).",
                   choices=ENGINES)
#: Options of the particle engine only (:func:`qtm.particles.sweep.simulate_particles`).
PARTICLE_ONLY = ("replicates", "seed", "dims", "modes", "particle_model", "resampling", "cluster")


class SimulationTable(NamedTuple):
    """The tidy table (one row per grid point x [replicate x] iteration x axis) and its provenance."""

    frame: object
    provenance: dict


def build_grid(options: Mapping[str, object]):
    """The grid points and per-axis model of a sweep, from option values as text or lists.

    Grid parameters (:data:`qtm.params.GRID_PARAMETERS`) take comma lists and
    ``start:stop:step`` ranges; model parameters one value per trait axis. A missing
    option takes its default (:mod:`qtm.params`).

    Returns
    -------
    points : pandas.DataFrame
        One row per grid point, one column per grid parameter.
    axes : dict of numpy.ndarray
        The base model and the real data, one value per axis.
    """
    unknown = set(options) - set(GRID_PARAMETERS) - set(MODEL_PARAMETERS)
    if unknown:
        raise QTMError(f"unknown grid option(s) {', '.join(sorted(unknown))}")
    values = {}
    for name in GRID_PARAMETERS:
        p = PARAMETERS[name]
        spec = options.get(name)
        if spec is None and p.default is None:
            values[name] = [np.nan]  # NaN: the model's default (e.g. drop x fidelity), per point
        elif spec is None:
            values[name] = [p.default]
        elif p.kind == "text":
            values[name] = [p.check(v, label=p.flag) for v in parse_strings(spec, name=name)]
        else:
            numbers = parse_numbers(spec, name=name, integer=p.kind == "int")
            for number in numbers:
                p.check(number, label=p.flag)
            values[name] = numbers
    points = grid_frame(values)
    axes = parse_axes({name: options.get(name, PARAMETERS[name].default) for name in MODEL_PARAMETERS})
    for name, array in axes.items():
        PARAMETERS[name].check(array, label=PARAMETERS[name].flag)
    return points, axes


def simulate_grid(points, axes: Mapping[str, np.ndarray], *, engine: str = "moments", population: int | None = None,
                  scheduler: Mapping[str, object] | None = None, particle_options: Mapping[str, object] | None = None,
                  calibration: Mapping[str, object] | None = None, out=None, progress=None) -> SimulationTable:
    """Run the chain at every grid point with one engine; optionally write the table with its provenance.

    Parameters
    ----------
    points : pandas.DataFrame
        Grid points (:func:`build_grid`).
    axes : mapping
        The base model and the real data, one value per trait axis.
    engine : {"moments", "particles"}
        Exact expected moments (:func:`qtm.recursion.simulate_moments`) or finite populations
        (:func:`qtm.particles.sweep.simulate_particles`, which needs ``out``: it streams its rows).
    population : int, optional
        Images per iteration (moments: the expected finite-N refit; particles: default 1000).
    scheduler : mapping, optional
        The scheduler's parameters (:data:`qtm.params.SCHEDULER_PARAMETERS`; SD v1.5 by default).
        The particle engine samples with SD v1.5's scheduler only.
    particle_options : mapping, optional
        The particle engine's own options (:data:`PARTICLE_ONLY`).
    calibration : mapping, optional
        The record of the calibration the grid and model came from (:meth:`qtm.calibration.Calibration.record`),
        kept in the provenance.
    out : path, optional
        ``.parquet`` (provenance in its metadata) or ``.csv`` (provenance beside it), written atomically.
    progress : callable, optional
        ``progress(done, total)`` over grid points (particles).

    Returns
    -------
    SimulationTable
        The moments engine's table has a column ``diverged_at``: the iteration at which the point's
        moments left the real data's scale on some axis (:func:`qtm.recursion.divergence_iteration`),
        -1 where they did not; its rows from there on may hold inf or NaN.
    """
    engine = ENGINE.check(engine)
    particle_options = {k: v for k, v in dict(particle_options or {}).items() if v is not None}
    scheduler = {k: v for k, v in dict(scheduler or {}).items() if v is not None and v != PARAMETERS[k].default}
    if engine == "moments":
        # Imported here: the solvers load Numba, which the particle engine's sweep and the program's start skip.
        from qtm.solvers import SchedulerConfig

        if particle_options:
            raise QTMError(f"{PARAMETERS[next(iter(particle_options))].flag} applies to --engine particles only")
        return _moments_table(points, axes, population=PARAMETERS["population"].check(population),
                              scheduler=SchedulerConfig.from_parameters(**scheduler), calibration=calibration,
                              out=out)
    if scheduler:
        raise QTMError(f"{PARAMETERS[next(iter(scheduler))].flag} applies to --engine moments only; the particle "
                       "engine samples with SD v1.5's scheduler")
    if "selection_slope" in points and points["selection_slope"].notna().any():
        remedy = "--calibration none (the calibration sets it)" if calibration is not None else "no --selection-slope"
        raise QTMError(f"--selection-slope (a selection on ln var) has no particle form; use --engine moments, or "
                       f"{remedy}")
    if out is None:
        raise QTMError("the particle engine streams its rows to a file; give an output path")
    return _particles_table(points, axes, population=population, options=particle_options, calibration=calibration,
                            out=out, progress=progress)


def _moments_table(points, axes, *, population, scheduler, calibration, out) -> SimulationTable:
    from qtm.io import write_table
    from qtm.recursion import divergence_iteration, simulate_moments

    column = {name: points[name].to_numpy()[:, None] for name in points.columns}
    longest = int(points["iterations"].max())
    trajectory = simulate_moments(
        **{name: values[None, :] for name, values in axes.items()},
        **{name: column[name] for name in GRID_PARAMETERS if name not in ("iterations", "steps", "uncond_fidelity")},
        uncond_fidelity=column["uncond_fidelity"].astype(float), steps=column["steps"].astype(int),
        iterations=longest, population=population, scheduler=scheduler,
    )
    n_points, n_axes = trajectory.mean.shape[:2]
    point, axis, iteration = np.meshgrid(np.arange(n_points), np.arange(n_axes), np.arange(longest), indexing="ij")
    keep = iteration < points["iterations"].to_numpy()[point]
    frame = points.iloc[point[keep]].reset_index(drop=True)
    frame["iteration"] = iteration[keep]
    frame["axis"] = axis[keep]
    frame["mean"] = trajectory.mean[keep]
    frame["var"] = trajectory.var[keep]
    # A point diverges when its first axis does; past its own iteration count (the engine ran `longest`) it did not.
    first = divergence_iteration(trajectory)
    first = np.where(first >= 0, first, longest).min(axis=1)
    frame["diverged_at"] = np.where(first < points["iterations"].to_numpy(), first, -1)[point[keep]]
    parameters = {
        "engine": "moments",
        "grid": {name: _plain(points[name].unique()) for name in points.columns},
        "model": {name: values.tolist() for name, values in axes.items()},
        "population": population,
        "scheduler": dataclasses.asdict(scheduler),
    }
    if calibration is not None:
        parameters["calibration"] = dict(calibration)
    record = provenance(parameters)
    if out is not None:
        write_table(frame, Path(out), provenance=record)
    return SimulationTable(frame, record)


def _particles_table(points, axes, *, population, options, calibration, out, progress) -> SimulationTable:
    import pandas as pd

    from qtm.io import read_provenance
    from qtm.particles.sweep import simulate_particles

    # A number stands for every axis (of dims); a list gives one value per axis.
    model = {name: v.tolist() if len(v) > 1 else float(v[0]) for name, v in axes.items()}
    path = simulate_particles(points, options={**model, **options, "population": population}, out=out,
                              progress=progress, calibration=calibration)
    columns = [*points.columns, "iteration", "axis", "mean", "var"]
    frame = pd.read_parquet(path, columns=columns) if path.suffix == ".parquet" else pd.read_csv(path)
    return SimulationTable(frame, read_provenance(path))


def _plain(values) -> list:
    """JSON-ready values of a grid column (NaN: the default, None)."""
    plain = [v.item() if hasattr(v, "item") else v for v in values]
    return [None if isinstance(v, float) and np.isnan(v) else v for v in plain]
