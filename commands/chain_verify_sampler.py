"""``chain verify-sampler``: qtm's exact sampler maps against diffusers' own schedulers.

This check lives in ``chain`` because it steps diffusers' scheduler, which ``qtm`` (the
torch-free ground floor) never imports; ``qtm verify`` runs the checks that need only the
theory. Exit status 1 when the check fails, 2 on bad input.
"""

from __future__ import annotations

from pathlib import Path

import typer

from commands.options import path_text


def verify_sampler_command(
    out: Path = typer.Option(
        Path("runs/verify-sampler"), help="Folder for the plots and verify.json.", parser=path_text
    ),
    check: list[str] = typer.Option(
        None, help="Run only this check (repeatable): sampler_map_diffusers (DDIM/DDPM, 2e5 particles per case) "
        "or solver_maps_diffusers (every other solver and prediction type, 1e6 particles per case; minutes)."
    ),
    size: float = typer.Option(1.0, help="Factor on the particle-cloud size (small values: a quick smoke run)."),
    seed: int = typer.Option(0, help="Seed of the checks."),
) -> None:
    """Step diffusers' schedulers on particle clouds with the exact guided denoiser; compare with qtm's maps."""
    from chain.verify_sampler import CHECKS, run_check
    from qtm.errors import FailureError, QTMError
    from qtm.io import check_output_dir

    names = check or list(CHECKS)
    unknown = [name for name in names if name not in CHECKS]
    if unknown:
        raise QTMError(f"--check {unknown[0]!r} is not a check; choose among {', '.join(CHECKS)}")
    check_output_dir(out, flag="--out")
    results = run_check(names=names, size=size, seed=seed, out=out, echo=typer.echo)
    failed = [r.name for r in results if r.status != "pass"]
    if failed:
        raise FailureError(f"{', '.join(failed)} did not pass; see {out / 'verify.json'}")
