"""``qtm simulate``: run the chain over a parameter grid and write a tidy table.

Grid options take comma lists and ``start:stop:step`` ranges (text options: comma
lists); the grid is their Cartesian product. Model options give one value per trait
axis. ``--config FILE.toml`` sets any option by name; the command line overrides it.

The default sweep (no options) is CFG 1, 3, 7.5 x schedule constant/cosine x condition
drop 0/0.2 for 10 iterations of the reference setup (finetuning from the base model with
fidelity 0.5) on one trait axis: the base model's conditional branch N(1, 1), its
unconditional branch N(0, 1.5), the real data N(1, 1). It shows collapse at CFG 7.5 and
what ReDiFine's two parts (cosine CFG schedule, condition drop) do to it. The
unconditional branch is only 1.5 times wider than the conditional one because the exact
DDIM map at CFG 7.5 already takes a 4-times-wider one to a variance of 1e-4 in the first
generation, which leaves nothing to watch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from qtm.validation import check_choice, check_int
from qtm.cli_map import MODEL_DEFAULTS
from qtm.errors import QTMError
from qtm.grid import grid_frame, load_config, merge_options, parse_axes, parse_numbers, parse_strings

ENGINES = ("moments", "particles")
#: Grid options in the table's column order, with their defaults (None: drop x fidelity).
GRID_DEFAULTS = {
    "cfg": "1,3,7.5", "schedule": "constant,cosine", "drop": "0,0.2", "fidelity": "0.5",
    "uncond_fidelity": None, "iterations": "10", "finetune": "base", "real_fraction": "0", "sampler": "ddim",
    "steps": "50", "eta": "0", "mutation": "0",
}
TEXT_OPTIONS = ("schedule", "finetune", "sampler")
INTEGER_OPTIONS = ("iterations", "steps")
MODEL_OPTION_DEFAULTS = {**MODEL_DEFAULTS, "data_mean": "1", "data_var": "1"}
#: Options of the particle engine only (passed on to qtm.particles.sweep.simulate_particles).
PARTICLE_OPTIONS = ("replicates", "seed", "dims", "modes", "model", "scheduler")
OTHER_DEFAULTS = {"engine": "moments", "out": "runs/qtm-simulate.parquet", "population": None,
                  **dict.fromkeys(PARTICLE_OPTIONS)}
DEFAULTS = {**GRID_DEFAULTS, **MODEL_OPTION_DEFAULTS, **OTHER_DEFAULTS}
#: Collapse: the variance falls below this fraction of the real data's.
COLLAPSE_THRESHOLD = 0.1
#: Grid points shown in the printed summary.
SUMMARY_ROWS = 20


def _option(name: str, text: str):
    """A command line option that defaults to None (so that a --config file can set it) and shows its default."""
    return typer.Option(None, help=text, show_default=DEFAULTS[name])


def simulate(
    engine: str = _option("engine", "moments (exact expected moments) or particles (finite N)."),
    cfg: str = _option("cfg", "Peak CFG scale w."),
    schedule: str = _option("schedule", "CFG schedules, comma list."),
    drop: str = _option("drop", "Condition-drop probability p of finetuning."),
    fidelity: str = _option("fidelity", "Fidelity rho of finetuning, in [0, 1]."),
    uncond_fidelity: str = typer.Option(None, help="Unconditional fidelity.", show_default="drop x fidelity"),
    iterations: str = _option("iterations", "Iterations of the chain."),
    finetune: str = _option("finetune", "Finetune from the base or the previous model."),
    real_fraction: str = _option("real_fraction", "Share of real data mixed into each data set."),
    sampler: str = _option("sampler", "ddim, ddpm or tilt."),
    steps: str = _option("steps", "Sampler steps."),
    eta: str = _option("eta", "DDIM noise weight."),
    mutation: str = _option("mutation", "Variance added to each generated set."),
    cond_mean: str = _option("cond_mean", "Base conditional mean, one per trait axis."),
    cond_var: str = _option("cond_var", "Base conditional variance, one per axis."),
    uncond_mean: str = _option("uncond_mean", "Base unconditional mean, one per axis."),
    uncond_var: str = _option("uncond_var", "Base unconditional variance, one per axis."),
    data_mean: str = _option("data_mean", "Real data mean, one per axis."),
    data_var: str = _option("data_var", "Real data variance, one per axis."),
    population: str = typer.Option(None, help="Images per iteration (moments: expected finite-N refit)."),
    replicates: str = typer.Option(None, help="Particles: replicates per grid point."),
    seed: str = typer.Option(None, help="Particles: random seed."),
    dims: str = typer.Option(None, help="Particles: trait dimensions."),
    modes: str = typer.Option(None, help="Particles: mixture components."),
    model: str = typer.Option(None, help="Particles: qg or sampler."),
    scheduler: str = typer.Option(None, help="Particles: Dask scheduler address."),
    out: str = _option("out", "Output table (.parquet, .csv)."),
    config: Path = typer.Option(None, help="TOML file of options; the command line overrides it."),
) -> None:
    """Run the Chain of Diffusion over a parameter grid; write one row per point x iteration x axis."""
    from qtm.io import check_table_path

    given = {name: value for name, value in locals().items() if name in DEFAULTS}
    file_options = load_config(config, allowed=list(DEFAULTS)) if config is not None else {}
    options = merge_options(given, file_options, DEFAULTS)
    engine_name = check_choice(str(options["engine"]), "engine", ENGINES)
    out_path = check_table_path(options["out"])
    points = grid_frame({name: _grid_values(name, options[name]) for name in GRID_DEFAULTS})
    axes = parse_axes({name: options[name] for name in MODEL_OPTION_DEFAULTS})
    if engine_name == "moments":
        frame = _run_moments(points, axes, options, out_path)
    else:
        frame = _run_particles(points, axes, options, out_path)
    _print_summary(frame, points, axes, engine_name, out_path)


def _grid_values(name: str, spec) -> list:
    if name == "uncond_fidelity" and spec is None:
        return [np.nan]  # NaN: the model's default drop x fidelity (qtm.recursion)
    if name in TEXT_OPTIONS:
        return parse_strings(spec, name=name)
    return parse_numbers(spec, name=name, integer=name in INTEGER_OPTIONS)


def _single_int(options: dict, name: str, minimum: int) -> int | None:
    if options[name] is None:
        return None
    values = parse_numbers(options[name], name=name, integer=True)
    if len(values) != 1:
        raise QTMError(f"--{name} takes one value, got {len(values)}")
    return check_int(values[0], name, minimum=minimum)


def _run_moments(points, axes: dict, options: dict, out_path: Path):
    from qtm.io import write_table
    from qtm.provenance import provenance
    from qtm.recursion import simulate_moments

    for name in PARTICLE_OPTIONS:
        if options[name] is not None:
            raise QTMError(f"--{name} applies to --engine particles only")
    population = _single_int(options, "population", minimum=2)
    column = {name: points[name].to_numpy()[:, None] for name in points.columns}
    longest = int(points["iterations"].max())
    trajectory = simulate_moments(
        **{name: values[None, :] for name, values in axes.items()},
        cfg=column["cfg"], schedule=column["schedule"], drop=column["drop"], fidelity=column["fidelity"],
        uncond_fidelity=column["uncond_fidelity"].astype(float), iterations=longest,
        finetune=column["finetune"], real_fraction=column["real_fraction"], sampler=column["sampler"],
        steps=column["steps"].astype(int), eta=column["eta"], population=population,
        mutation_var=column["mutation"],
    )  # fmt: skip
    n_points, n_axes = trajectory.mean.shape[:2]
    point, axis, iteration = np.meshgrid(np.arange(n_points), np.arange(n_axes), np.arange(longest),
                                         indexing="ij")
    keep = iteration < points["iterations"].to_numpy()[point]
    frame = points.iloc[point[keep]].reset_index(drop=True)
    frame["iteration"] = iteration[keep]
    frame["axis"] = axis[keep]
    frame["mean"] = trajectory.mean[keep]
    frame["var"] = trajectory.var[keep]
    parameters = {
        "engine": "moments",
        "grid": {name: _plain(points[name].unique()) for name in points.columns},
        "model": {name: values.tolist() for name, values in axes.items()},
        "population": population,
    }
    write_table(frame, out_path, provenance=provenance(parameters))
    return frame


def _run_particles(points, axes: dict, options: dict, out_path: Path):
    try:
        from qtm.particles.sweep import simulate_particles
    except ImportError:
        raise QTMError("particle engine not available") from None
    import pandas as pd
    from rich.progress import Progress

    minimum = {"population": 2, "replicates": 1, "seed": 0, "dims": 1, "modes": 1}
    particle_options = {name: _single_int(options, name, minimum=low) for name, low in minimum.items()}
    particle_options["model"] = options["model"]
    particle_options["scheduler"] = options["scheduler"]
    # A number stands for every axis (of --dims); a list gives one value per axis.
    particle_options.update({name: v.tolist() if len(v) > 1 else float(v[0]) for name, v in axes.items()})
    with Progress(transient=True) as bar:
        task = bar.add_task("grid points", total=len(points))
        path = simulate_particles(
            points, options={k: v for k, v in particle_options.items() if v is not None}, out=out_path,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    columns = [*points.columns, "iteration", "axis", "mean", "var"]
    return pd.read_parquet(path, columns=columns) if path.suffix == ".parquet" else pd.read_csv(path)


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


def _plain(values) -> list:
    """JSON-ready values of a grid column (NaN: the default, None)."""
    plain = [v.item() if hasattr(v, "item") else v for v in values]
    return [None if isinstance(v, float) and np.isnan(v) else v for v in plain]
