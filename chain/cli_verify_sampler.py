"""``chain verify-sampler``: qtm's exact sampler map against diffusers' own scheduler.

This check lives in ``chain`` because it steps diffusers' scheduler, which ``qtm`` (the
torch-free ground floor) never imports; ``qtm verify`` runs the checks that need only the
theory. Exit status 1 when the check fails, 2 on bad input.
"""

from __future__ import annotations

from pathlib import Path

import typer


def verify_sampler_command(
    out: Path = typer.Option(Path("runs/verify-sampler"), help="Folder for the plot and verify.json."),
    size: float = typer.Option(1.0, help="Factor on the particle-cloud size (small values: a quick smoke run)."),
    seed: int = typer.Option(0, help="Seed of the check."),
) -> None:
    """Step diffusers' DDIMScheduler on a particle cloud with the exact denoiser; compare with qtm's map."""
    from chain.verify_sampler import run_check
    from qtm.errors import FailureError
    from qtm.io import check_output_dir

    check_output_dir(out, flag="--out")
    result = run_check(size=size, seed=seed, out=out, echo=typer.echo)
    if result.status != "pass":
        raise FailureError(f"the sampler-map check did not pass ({result.status}); see {out / 'verify.json'}")
