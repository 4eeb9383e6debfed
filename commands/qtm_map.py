"""``qtm map``: the distribution that one guided sampling produces, exactly.

Every option is a parameter of :mod:`qtm.params`, with the same range as in ``qtm simulate``.

Examples
--------
``qtm map --cfg 7.5 --schedule cosine`` prints, per trait axis, the mean and variance of
DDIM's output for the default model; ``--json`` prints the same for machines. The work is
:func:`qtm.sampler_map.sampler_law` (``qtm.sampler_law`` in Python).
"""

from __future__ import annotations

import typer

from commands.options import parameter_options
from qtm.grid import parse_axes, single_value
from qtm.io import to_json
from qtm.params import PARAMETERS, SCHEDULER_PARAMETERS

#: The base model ``qtm map`` samples from (one value per trait axis).
MODEL_OPTIONS = ("cond_mean", "cond_var", "uncond_mean", "uncond_var")
TOO_MANY = "qtm map takes one value of {flag}, got {count}; use qtm simulate for a grid"
#: One value each: what the sampler does.
SAMPLING_OPTIONS = ("cfg", "schedule", "sampler", "steps", "eta")


@parameter_options(*MODEL_OPTIONS, *SAMPLING_OPTIONS, *SCHEDULER_PARAMETERS, text=True)
def map_command(
    as_json: bool = typer.Option(False, "--json", help="Print JSON (for machines) instead of a table."),
    **given,
) -> None:
    """Mean and variance of one CFG-guided sampling from Gaussian p_c and p_u, per trait axis."""
    from qtm.sampler_map import sampler_law

    model = parse_axes({name: given[name] or PARAMETERS[name].default for name in MODEL_OPTIONS})
    sampling = {name: _single(name, given[name]) for name in SAMPLING_OPTIONS}
    scheduler = {name: _single(name, given[name]) for name in SCHEDULER_PARAMETERS}
    table = sampler_law(*(model[name] for name in MODEL_OPTIONS), **sampling, scheduler=scheduler)
    axes = [{"axis": int(row.axis), "mean": float(row.mean), "var": float(row.var)} for row in table.itertuples()]
    if as_json:
        parameters = {name: values.tolist() for name, values in model.items()}
        parameters.update(sampling, **scheduler)
        typer.echo(to_json({"parameters": parameters, "axes": axes}, path="standard output"))
        return
    from rich.console import Console
    from rich.table import Table

    shown = Table(title=f"{sampling['sampler']}, CFG {sampling['cfg']:g} ({sampling['schedule']}), "
                        f"{sampling['steps']} steps")
    for column in ("axis", "mean", "var"):
        shown.add_column(column, justify="right")
    for row in axes:
        shown.add_row(str(row["axis"]), f"{row['mean']:.6g}", f"{row['var']:.6g}")
    Console().print(shown)


def _single(name: str, spec):
    """One value of ``name`` (its default when not given), checked by its parameter."""
    value = single_value(PARAMETERS[name], spec, too_many=TOO_MANY)
    return PARAMETERS[name].default if value is None else value
