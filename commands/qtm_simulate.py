"""``qtm simulate``: run the chain over a parameter grid and write a tidy table.

Grid options take comma lists and ``start:stop:step`` ranges (text options: comma
lists); the grid is their Cartesian product. Model options give one value per trait
axis. ``--config FILE.toml`` sets any option by name; the command line overrides it.
Every option is a parameter of :mod:`qtm.params`; the table is built by
:func:`qtm.simulate.simulate_grid`.

The default sweep (no options, :data:`qtm.params.DEFAULT_SWEEP`) is CFG 1, 3, 7.5 x schedule
constant/cosine x condition drop 0/0.2 for 10 iterations of the reference setup (finetuning
from the base model with fidelity 0.5) on one trait axis: the base model's conditional
branch N(1, 1), its unconditional branch N(0, 1.5), the real data N(1, 1). It shows
collapse at CFG 7.5 and what ReDiFine's two parts (cosine CFG schedule, condition drop) do
to it. The unconditional branch is only 1.5 times wider than the conditional one because
the exact DDIM map at CFG 7.5 already takes a 4-times-wider one to a variance of 1e-4 in
the first generation, which leaves nothing to watch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from commands.options import parameter_options
from qtm.grid import load_config, merge_options, single_value
from qtm.params import (
    ALL_PARAMETERS,
    DEFAULT_SWEEP,
    GRID_PARAMETERS,
    MODEL_PARAMETERS,
    SCHEDULER_PARAMETERS,
    Parameter,
)
from qtm.simulate import ENGINE, PARTICLE_ONLY, build_grid, simulate_grid

OUT = Parameter("out", "text", "runs/qtm-simulate.parquet", "Output table (.parquet, .csv).")
#: The options of ``qtm simulate`` and of its ``--config`` files, by name.
OPTIONS = {"engine": ENGINE, **{name: ALL_PARAMETERS[name] for name in (*GRID_PARAMETERS, *MODEL_PARAMETERS)},
           **{name: ALL_PARAMETERS[name] for name in SCHEDULER_PARAMETERS},
           "population": ALL_PARAMETERS["population"], **{name: ALL_PARAMETERS[name] for name in PARTICLE_ONLY},
           "out": OUT}
#: Collapse: the variance falls below this fraction of the real data's.
COLLAPSE_THRESHOLD = 0.1
#: Grid points shown in the printed summary.
SUMMARY_ROWS = 20


@parameter_options(*OPTIONS, text=True, defaults=DEFAULT_SWEEP, registry=OPTIONS)
def simulate(
    config: Path = typer.Option(None, help="TOML file of options; the command line overrides it."),
    **given,
) -> None:
    """Run the Chain of Diffusion over a parameter grid; write one row per point x iteration x axis."""
    from qtm.io import check_table_path

    file_options = load_config(config, allowed=OPTIONS) if config is not None else {}
    defaults = {name: DEFAULT_SWEEP.get(name) for name in OPTIONS}
    options = merge_options(given, file_options, defaults)
    engine = ENGINE.check(options["engine"] or ENGINE.default, label="--engine")
    out_path = check_table_path(options["out"] or OUT.default)
    points, axes = build_grid({name: options[name] for name in (*GRID_PARAMETERS, *MODEL_PARAMETERS)
                               if options[name] is not None})
    population = single_value(OPTIONS["population"], options["population"])
    particle_options = {name: single_value(OPTIONS[name], options[name]) for name in PARTICLE_ONLY}
    scheduler = {name: single_value(OPTIONS[name], options[name]) for name in SCHEDULER_PARAMETERS}
    if engine == "moments":
        table = simulate_grid(points, axes, population=population, scheduler=scheduler,
                              particle_options=particle_options, out=out_path)
    else:
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task("grid points", total=len(points))
            table = simulate_grid(points, axes, engine="particles", population=population, scheduler=scheduler,
                                  particle_options=particle_options, out=out_path,
                                  progress=lambda done, total: bar.update(task, completed=done, total=total))
    _print_summary(table.frame, points, axes, engine, out_path)


def _print_summary(frame, points, axes: dict, engine: str, out_path: Path) -> None:
    """Per grid point: the last iteration's moments relative to the real data, and when it collapsed."""
    from rich.console import Console
    from rich.table import Table

    from qtm.recursion import ChainTrajectory, collapse_iteration

    shown = [name for name in points.columns if points[name].nunique(dropna=False) > 1] or ["cfg"]
    point_columns = list(points.columns)
    # Replicates (particle engine) are averaged; groups keep the grid's order.
    per_iteration = frame.groupby([*point_columns, "iteration", "axis"], dropna=False, sort=False)[
        ["mean", "var"]
    ].mean()
    per_point = per_iteration.groupby(level=list(range(len(point_columns))), dropna=False, sort=False)
    data_var = axes["data_var"]
    title = (
        f"qtm simulate ({engine}): last iteration; collapse = first iteration with "
        f"var <= {COLLAPSE_THRESHOLD:g} x real var"
    )
    table = Table(title=title)
    for name in shown:
        table.add_column(name.replace("_", " "), justify="right")
    for name in ("iterations", "final mean", "final var / real var", "collapse at"):
        if name != "iterations" or "iterations" not in shown:
            table.add_column(name, justify="right")
    for count, (key, group) in enumerate(per_point):
        if count == SUMMARY_ROWS:
            table.add_row(*["..."] * len(table.columns))
            break
        values = dict(zip(point_columns, key, strict=True))
        var = group["var"].unstack("axis").to_numpy()
        mean = group["mean"].unstack("axis").to_numpy()
        # One row per axis: the trajectory of each axis along the last dimension.
        trajectory = ChainTrajectory(mean.T, var.T, axes["data_mean"], data_var)
        first = collapse_iteration(trajectory, threshold=COLLAPSE_THRESHOLD)
        collapse = [str(t) if t >= 0 else "never" for t in first]
        cells = [_cell(values[name]) for name in shown]
        if "iterations" not in shown:
            cells.append(str(var.shape[0]))
        cells += [
            ", ".join(f"{m:.3g}" for m in mean[-1]),
            ", ".join(f"{r:.3g}" for r in var[-1] / data_var),
            ", ".join(collapse),
        ]
        table.add_row(*cells)
    console = Console()
    console.print(table)
    more = len(points) - SUMMARY_ROWS
    tail = f" ({more} more grid points in the table)" if more > 0 else ""
    console.print(f"wrote {len(frame)} rows to {out_path}{tail}")


def _cell(value) -> str:
    if isinstance(value, float):
        return "default" if np.isnan(value) else f"{value:g}"
    return str(value)
