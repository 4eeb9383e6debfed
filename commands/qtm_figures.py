"""``qtm figures``: redraw the theory figures and their index (see :mod:`qtm.figures`).

Examples
--------
``qtm figures --out figures/`` draws every figure as PNG and PDF and writes
``figures/README.md``; ``qtm figures --only chain --format png`` redraws one figure.
"""

from __future__ import annotations

from pathlib import Path

import typer

from commands.options import path_text
from qtm.grid import parse_strings


def figures_command(
    out: Path = typer.Option(
        Path("figures"), help="Output folder (figures and their README.md index).", parser=path_text
    ),
    only: list[str] = typer.Option(None, help="Draw only this figure (repeatable); see --list."),
    formats: str = typer.Option("png,pdf", "--format", help="Comma list of file formats: png, pdf."),
    list_figures: bool = typer.Option(False, "--list", help="List the figures and exit."),
) -> None:
    """Draw the theory figures (PNG and PDF) from the theory code alone and index them in README.md."""
    from qtm.figures import FIGURES, make_figures
    from qtm.io import check_output_dir

    if list_figures:
        for name, spec in FIGURES.items():
            typer.echo(f"{spec.number}. {name:<22} {spec.title}")
        return
    check_output_dir(out, flag="--out")
    make_figures(out, names=only or None, formats=parse_strings(formats, name="format"), echo=typer.echo)
