"""A sweep from option values in one call: what ``qtm simulate`` computes, for Python.

:func:`sweep` takes the options of ``qtm simulate`` by name, as Python values or as the command line's text
(comma lists, ``start:stop:step`` ranges), fills the rest from :data:`qtm.params.DEFAULT_SWEEP` and the
parameter model, builds the grid (:func:`qtm.simulate.build_grid`) and runs it
(:func:`qtm.simulate.simulate_grid`). Bad values raise the command line's one-line
:class:`~qtm.errors.QTMError`.
"""

from __future__ import annotations

from qtm.errors import QTMError
from qtm.grid import single_value
from qtm.params import ALL_PARAMETERS, DEFAULT_SWEEP, GRID_PARAMETERS, MODEL_PARAMETERS, SCHEDULER_PARAMETERS
from qtm.simulate import ENGINE, PARTICLE_ONLY, SimulationTable, build_grid, simulate_grid

#: The options :func:`sweep` takes besides ``engine``, ``out`` and ``progress``: those of ``qtm simulate``.
SWEEP_OPTIONS = (*GRID_PARAMETERS, *MODEL_PARAMETERS, *SCHEDULER_PARAMETERS, "population", *PARTICLE_ONLY)


def sweep(*, engine: str = "moments", out=None, progress=None, **options) -> SimulationTable:
    """Run the chain over a parameter grid with either engine: ``qtm simulate --calibration none``'s table and its
    provenance (no calibration: every option not given takes the default sweep's or its parameter's default).

    Parameters
    ----------
    engine : {"moments", "particles"}
        Exact expected moments, or finite populations (which stream their rows to ``out``).
    out : path, optional
        Also write the table (``.parquet`` with the provenance in its metadata, or ``.csv`` with it beside).
    progress : callable, optional
        ``progress(done, total)`` over grid points (particle engine).
    **options
        Any option of ``qtm simulate`` by its name (:data:`SWEEP_OPTIONS`: ``cfg``, ``schedule``, ``drop``,
        ``iterations``, ``cond_var``, ...). Grid options take a value, a list or the command line's text
        (``"1:9:2"``, ``"constant,cosine"``); model options one value per trait axis. An option left out takes
        :data:`qtm.params.DEFAULT_SWEEP`'s value, else its parameter's default.

    Returns
    -------
    qtm.simulate.SimulationTable
        ``frame``: a pandas DataFrame, one row per grid point x iteration x trait axis (x replicate);
        ``provenance``: parameters, versions and git commit.

    Examples
    --------
    >>> table = sweep(cfg=[1, 7.5], iterations=3)
    >>> len(table.frame), int(table.frame["iteration"].max()), table.provenance["parameters"]["grid"]["cfg"]
    (24, 2, [1.0, 7.5])
    >>> sweep(cfg=-1)
    Traceback (most recent call last):
    ...
    qtm.errors.QTMError: --cfg must be >= 0, got -1
    """
    unknown = sorted(set(options) - set(SWEEP_OPTIONS))
    if unknown:
        raise QTMError(f"unknown sweep option(s) {', '.join(unknown)}; choose from {', '.join(SWEEP_OPTIONS)}")
    given = {name: options.get(name, DEFAULT_SWEEP.get(name)) for name in SWEEP_OPTIONS}
    engine = ENGINE.check(engine, label="--engine")
    points, axes = build_grid({name: given[name] for name in (*GRID_PARAMETERS, *MODEL_PARAMETERS)
                               if given[name] is not None})
    population = single_value(ALL_PARAMETERS["population"], given["population"])
    particle_options = {name: single_value(ALL_PARAMETERS[name], given[name]) for name in PARTICLE_ONLY}
    scheduler = {name: single_value(ALL_PARAMETERS[name], given[name]) for name in SCHEDULER_PARAMETERS}
    return simulate_grid(points, axes, engine=engine, population=population, scheduler=scheduler,
                         particle_options=particle_options, out=out, progress=progress)
