"""``chain data``: build a data set (fetching its package once) and say what it holds."""

from __future__ import annotations

import typer


def data_command(
    spec: str = typer.Argument(..., help="A data set as chain run --data takes it: emoji[:RES], pokemon[:RES], "
                               "digits[:N], a folder or hf:NAME."),
    captions: int = typer.Option(30, help="How many captions to list (the most frequent first)."),
) -> None:
    """Build the data set SPEC and print its image count, image size and captions."""
    from chain.data import describe_dataset

    typer.echo(describe_dataset(spec, max_captions=captions))
