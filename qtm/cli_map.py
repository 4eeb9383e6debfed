"""``qtm map``: the distribution that one guided sampling produces, exactly.

Examples
--------
``qtm map --cfg 7.5 --schedule cosine`` prints, per trait axis, the mean and variance of
DDIM's output for the default model; ``--json`` prints the same for machines.
"""

from __future__ import annotations

import json

import typer

from qtm.validation import check_int
from qtm.errors import QTMError
from qtm.grid import parse_axes, parse_numbers, parse_strings

#: The base model of ``qtm map`` and ``qtm simulate`` when none is given (one trait axis).
MODEL_DEFAULTS = {"cond_mean": "1", "cond_var": "1", "uncond_mean": "0", "uncond_var": "1.5"}


def map_command(
    cond_mean: str = typer.Option(MODEL_DEFAULTS["cond_mean"], help="Conditional mean, one per trait axis."),
    cond_var: str = typer.Option(MODEL_DEFAULTS["cond_var"], help="Conditional variance, one per axis."),
    uncond_mean: str = typer.Option(MODEL_DEFAULTS["uncond_mean"], help="Unconditional mean, one per axis."),
    uncond_var: str = typer.Option(MODEL_DEFAULTS["uncond_var"], help="Unconditional variance, per axis."),
    cfg: str = typer.Option("7.5", help="Peak CFG scale w."),
    schedule: str = typer.Option("constant", help="CFG schedule: constant, linear[:END], cosine[:END], "
                                 "cutoff:F, interval:LO:HI."),
    sampler: str = typer.Option("ddim", help="ddim, ddpm (eta 1) or tilt (idealised p_c (p_c/p_u)^(w-1))."),
    steps: str = typer.Option("50", help="Sampler steps (SD v1.5's scheduler)."),
    eta: str = typer.Option("0", help="DDIM noise weight in [0, 1]."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Mean and variance of one CFG-guided sampling from Gaussian p_c and p_u, per trait axis."""
    from qtm.sampler_map import guided_moments

    model = parse_axes(
        {"cond_mean": cond_mean, "cond_var": cond_var, "uncond_mean": uncond_mean, "uncond_var": uncond_var}
    )
    cfg_value = _single(parse_numbers(cfg, name="cfg"), "cfg")
    steps_value = _single(parse_numbers(steps, name="steps", integer=True), "steps")
    steps_value = check_int(steps_value, "steps", minimum=1)
    eta_value = _single(parse_numbers(eta, name="eta"), "eta")
    schedule_value = _single(parse_strings(schedule, name="schedule"), "schedule")
    sampler_value = _single(parse_strings(sampler, name="sampler"), "sampler")
    out = guided_moments(
        model["cond_mean"], model["cond_var"], model["uncond_mean"], model["uncond_var"],
        cfg=cfg_value, schedule=schedule_value, sampler=sampler_value, steps=steps_value, eta=eta_value,
    )  # fmt: skip
    axes = [{"axis": a, "mean": float(m), "var": float(v)} for a, (m, v) in enumerate(zip(*out, strict=True))]
    if as_json:
        parameters = {name: values.tolist() for name, values in model.items()}
        parameters.update(cfg=cfg_value, schedule=schedule_value, sampler=sampler_value, steps=steps_value,
                          eta=eta_value)
        typer.echo(json.dumps({"parameters": parameters, "axes": axes}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{sampler_value}, CFG {cfg_value:g} ({schedule_value}), {steps_value} steps")
    for column in ("axis", "mean", "var"):
        table.add_column(column, justify="right")
    for row in axes:
        table.add_row(str(row["axis"]), f"{row['mean']:.6g}", f"{row['var']:.6g}")
    Console().print(table)


def _single(values: list, name: str):
    if len(values) != 1:
        raise QTMError(f"qtm map takes one value of --{name.replace('_', '-')}, got {len(values)}; "
                       "use qtm simulate for a grid")
    return values[0]
