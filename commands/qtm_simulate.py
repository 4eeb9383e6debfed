"""``qtm simulate``: run the chain over a parameter grid and write a tidy table.

Grid options take comma lists and ``start:stop:step`` ranges (text options: comma
lists); the grid is their Cartesian product. Model options give one value per trait
axis. Every option is a parameter of :mod:`qtm.params`; the table is built by
:func:`qtm.simulate.simulate_grid`.

Where each option's value comes from, the first that gives it winning: the command line;
``--config FILE.toml`` (any option by name); the calibration (``--calibration FILE``, by default
the one shipped in the package, :func:`qtm.calibration.shipped_calibration`: its parameters, such as
fidelity, guidance gain, sampler and steps, and its base model and real data); the default sweep
(:data:`qtm.params.DEFAULT_SWEEP`); each parameter's default. ``--calibration none`` uses no
calibration. The CFG values stay the real CFG scales (the table's ``cfg`` column); the calibration's
guidance gain maps them to the scale the sampler uses.

The default sweep (no options) is CFG 1, 3, 7.5 x schedule constant/cosine x condition drop 0/0.2
for 10 iterations, finetuning from the base model, with the shipped calibration: a prediction of
settings from one model fitted to the digits chains (``make demo``); the particle engine, which has no form of
its selection slope, sweeps without it unless told otherwise (and says so). With ``--calibration none`` it
is the reference setup (fidelity 0.5) on one trait axis: the base model's conditional branch
N(1, 1), its unconditional branch N(0, 1.5), the real data N(1, 1). It shows collapse at CFG 7.5
and what ReDiFine's two parts (cosine CFG schedule, condition drop) do to it. The unconditional
branch is only 1.5 times wider than the conditional one because the exact DDIM map at CFG 7.5
already takes a 4-times-wider one to a variance of 1e-4 in the first generation, which leaves
nothing to watch.

The printed summary says per point and axis when the variance collapsed (at most 0.1 x the real
data's) and when the moments diverged (:func:`qtm.recursion.divergence_iteration`: the variance
above 1e6 x the real data's, the mean more than 1e6 real SDs away, or inf/NaN): "diverges at t".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from commands.options import parameter_options, path_text
from qtm.calibration import CALIBRATED, Calibration, read_calibration, shipped_calibration
from qtm.grid import load_config, merge_options
from qtm.params import (
    ALL_PARAMETERS,
    DEFAULT_SWEEP,
    GRID_PARAMETERS,
    MODEL_PARAMETERS,
    SCHEDULER_PARAMETERS,
    Parameter,
)
from qtm.simulate import ENGINE, PARTICLE_ONLY

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
#: ``--calibration``'s word for no calibration.
NO_CALIBRATION = "none"
#: The defaults ``--help`` shows: the default sweep's, and the calibration's where it sets an option.
SHOWN_DEFAULTS = {**DEFAULT_SWEEP, **dict.fromkeys((*CALIBRATED, *MODEL_PARAMETERS), "calibration")}


@parameter_options(*OPTIONS, text=True, defaults=SHOWN_DEFAULTS, registry=OPTIONS)
def simulate(
    config: Path = typer.Option(None, help="TOML file of options; the command line overrides it.", parser=path_text),
    calibration: str = typer.Option(
        None, help="Calibration file (JSON, from a fit of real chains): its parameters and model replace the "
        "defaults; --config and the command line override it. 'none': the uncalibrated reference setup. "
        "Default: the calibration shipped in the package (the digits study)."),
    **given,
) -> None:
    """Run the Chain of Diffusion over a parameter grid; write one row per point x iteration x axis.

    Each option's value: the command line, else --config, else the calibration, else the default sweep.
    """
    from qtm.grid_sweep import sweep_with_grid
    from qtm.io import check_table_path

    file_options = load_config(config, allowed=OPTIONS) if config is not None else {}
    options = merge_options(given, file_options, dict.fromkeys(OPTIONS))
    engine = ENGINE.check(options.pop("engine") or ENGINE.default, label="--engine")
    chosen = _calibration(calibration, engine)
    out = options.pop("out")
    out_path = check_table_path(OUT.default if out is None else out)
    sweep_options = {name: value for name, value in options.items() if value is not None}
    from rich.progress import Progress

    # Only the particle engine reports progress (the moments engine is one vectorised pass).
    with Progress(transient=True, disable=engine == "moments") as bar:
        task = bar.add_task("grid points", total=None)
        table, points, axes = sweep_with_grid(
            engine=engine, out=out_path, calibration=chosen, **sweep_options,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    _print_summary(table.frame, points, axes, engine, out_path, chosen, shipped_dropped=calibration is None)


def _calibration(spec: str | None, engine: str) -> Calibration | None:
    """The calibration ``--calibration`` names: the shipped one when not given (none for the particle engine where
    the shipped one has a selection slope, which that engine has no form of), none for 'none'."""
    if spec is None:
        shipped = shipped_calibration()
        sloped = shipped.parameters.get("selection_slope") is not None
        return None if engine == "particles" and sloped else shipped
    if spec.strip().lower() == NO_CALIBRATION:
        return None
    return read_calibration(spec, label="--calibration")


def _print_summary(frame, points, axes: dict, engine: str, out_path: Path, calibration: Calibration | None, *,
                   shipped_dropped: bool = False) -> None:
    """Per grid point: the last iteration's moments relative to the real data, and when it collapsed or diverged."""
    from rich.console import Console
    from rich.table import Table

    from qtm.recursion import DIVERGENCE_FACTOR, ChainTrajectory, collapse_iteration, divergence_iteration

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
        f"var <= {COLLAPSE_THRESHOLD:g} x real var; diverges = var > {DIVERGENCE_FACTOR:g} x real var, "
        f"|mean - real mean| > {DIVERGENCE_FACTOR:g} real SDs, or inf/NaN"
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
        collapse = [_outcome(c, d) for c, d in zip(first, divergence_iteration(trajectory), strict=True)]
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
    no_slope = np.all(np.nan_to_num(frame.get("selection_slope", 0.0)) == 0)
    if "guidance_gain" in frame and (frame["guidance_gain"] == 0).all() and no_slope:
        # A fit can find no effect of guidance (w_eff = 1 at every CFG); its rows then differ in name only.
        console.print("note: guidance gain 0 (w_eff = 1 at every CFG) and no selection slope: CFG, schedule and "
                      "condition drop change nothing in this sweep")
    if calibration is None:
        console.print("calibration: none (the reference setup)")
        if shipped_dropped:
            console.print("note: the shipped calibration selects on ln var by a slope, which the particle engine has "
                          "no form of, so this sweep is uncalibrated (--engine moments sweeps the calibrated model)")
    else:
        console.print(f"calibration: {calibration.source['path']} (sha256 {calibration.source['sha256'][:12]})")
        # A calibration says where it is known to fail; a sweep made with it repeats that.
        if calibration.provenance.get("warning"):
            console.print(f"calibration warning: {calibration.provenance['warning']}")


def _outcome(collapse: int, diverge: int) -> str:
    """When an axis collapsed, diverged, both (collapse first) or neither."""
    if diverge >= 0 and not 0 <= collapse < diverge:
        return f"diverges at {diverge}"
    if diverge >= 0:
        return f"{collapse} (diverges at {diverge})"
    return str(collapse) if collapse >= 0 else "never"


def _cell(value) -> str:
    if isinstance(value, float):
        return "default" if np.isnan(value) else f"{value:g}"
    return str(value)
