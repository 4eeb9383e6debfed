"""A sweep from option values in one call: what ``qtm simulate`` computes, for Python and for the command.

:func:`sweep` takes the options of ``qtm simulate`` by name, as Python values or as the command line's text
(comma lists, ``start:stop:step`` ranges), fills the rest from the calibration (when one is given), then
:data:`qtm.params.DEFAULT_SWEEP` and the parameter model, builds the grid (:func:`qtm.simulate.build_grid`) and
runs it (:func:`qtm.simulate.simulate_grid`). ``qtm simulate`` calls :func:`sweep_with_grid`, the same with the
grid it built, so the command line and the API are one path. Bad values raise the command line's one-line
:class:`~qtm.errors.QTMError`.
"""

from __future__ import annotations

from qtm.calibration import Calibration
from qtm.errors import QTMError
from qtm.grid import single_value
from qtm.params import ALL_PARAMETERS, DEFAULT_SWEEP, GRID_PARAMETERS, MODEL_PARAMETERS, SCHEDULER_PARAMETERS
from qtm.simulate import ENGINE, PARTICLE_ONLY, SimulationTable, build_grid, simulate_grid

#: The options :func:`sweep` takes besides ``engine``, ``out`` and ``progress``: those of ``qtm simulate``.
SWEEP_OPTIONS = (*GRID_PARAMETERS, *MODEL_PARAMETERS, *SCHEDULER_PARAMETERS, "population", *PARTICLE_ONLY)


def sweep(*, engine: str = "moments", out=None, progress=None, calibration: Calibration | None = None,
          **options) -> SimulationTable:
    """Run the chain over a parameter grid with either engine: ``qtm simulate``'s table and its provenance.

    Parameters
    ----------
    engine : {"moments", "particles"}
        Exact expected moments, or finite populations (which stream their rows to ``out``).
    out : path, optional
        Also write the table (``.parquet`` with the provenance in its metadata, or ``.csv`` with it beside).
    progress : callable, optional
        ``progress(done, total)`` over grid points (particle engine).
    calibration : qtm.calibration.Calibration, optional
        A fitted model (:func:`qtm.calibration.read_calibration`, or the package's
        :func:`qtm.calibration.shipped_calibration`): its parameters and model are the defaults of the options
        not given, and its record goes into the provenance. None (the default here, unlike ``qtm simulate``):
        the uncalibrated reference setup, ``qtm simulate --calibration none``.
    **options
        Any option of ``qtm simulate`` by its name (:data:`SWEEP_OPTIONS`: ``cfg``, ``schedule``, ``drop``,
        ``iterations``, ``cond_var``, ...). Grid options take a value, a list or the command line's text
        (``"1:9:2"``, ``"constant,cosine"``); model options one value per trait axis. An option left out takes
        the calibration's value, else :data:`qtm.params.DEFAULT_SWEEP`'s, else its parameter's default.

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
    >>> from qtm.calibration import shipped_calibration
    >>> calibrated = sweep(cfg=7.5, iterations=2, calibration=shipped_calibration())
    >>> sorted(set(calibrated.frame["axis"])) == list(range(len(shipped_calibration().model["data_mean"])))
    True
    >>> sweep(cfg=-1)
    Traceback (most recent call last):
    ...
    qtm.errors.QTMError: --cfg must be >= 0, got -1
    """
    return sweep_with_grid(engine=engine, out=out, progress=progress, calibration=calibration, **options)[0]


def sweep_with_grid(*, engine: str = "moments", out=None, progress=None, calibration: Calibration | None = None,
                    **options):
    """:func:`sweep`, returning also the grid points (a DataFrame) and the per-axis model it swept."""
    unknown = sorted(set(options) - set(SWEEP_OPTIONS))
    if unknown:
        raise QTMError(f"unknown sweep option(s) {', '.join(unknown)}; choose from {', '.join(SWEEP_OPTIONS)}")
    defaults = dict(DEFAULT_SWEEP)
    if calibration is not None:
        defaults.update(calibration.options())
    given = {name: options[name] if options.get(name) is not None else defaults.get(name) for name in SWEEP_OPTIONS}
    engine = ENGINE.check(engine, label="--engine")
    points, axes = build_grid({name: given[name] for name in (*GRID_PARAMETERS, *MODEL_PARAMETERS)
                               if given[name] is not None})
    population = single_value(ALL_PARAMETERS["population"], given["population"])
    particle_options = {name: single_value(ALL_PARAMETERS[name], given[name]) for name in PARTICLE_ONLY}
    axes_count = len(axes["data_mean"])
    if calibration is not None and particle_options["dims"] not in (None, axes_count):
        raise QTMError(f"--dims {particle_options['dims']} differs from the model's {axes_count} trait axes (the "
                       f"calibration's); give --dims {axes_count}, or --calibration none")
    scheduler = {name: single_value(ALL_PARAMETERS[name], given[name]) for name in SCHEDULER_PARAMETERS}
    record = None if calibration is None else calibration.record()
    table = simulate_grid(points, axes, engine=engine, population=population, scheduler=scheduler,
                          particle_options=particle_options, calibration=record, out=out, progress=progress)
    return table, points, axes
