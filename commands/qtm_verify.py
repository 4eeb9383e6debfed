"""``qtm verify``: the statistical verification suite (see :mod:`qtm.verify`).

Examples
--------
``qtm verify --out runs/verify`` runs every check at full size (a few minutes on two
cores), prints one line per check and writes a plot per check and ``verify.json``;
``qtm verify --check drift --size 0.1`` runs one check at a tenth of its sample sizes.
The exit status is 1 when a check fails or cannot run, 2 on bad input.
"""

from __future__ import annotations

from pathlib import Path

import typer

from commands.options import path_text
from qtm.verify import CHECKS, FALSE_FAILURE_RATE


def verify_command(
    out: Path = typer.Option(Path("runs/verify"), help="Folder for the plots and verify.json.", parser=path_text),
    check: list[str] = typer.Option(None, help="Run only this check (repeatable); see --list."),
    size: float = typer.Option(1.0, help="Factor on every sample size (small values: a quick smoke run)."),
    seed: int = typer.Option(0, help="Seed of the whole suite (each check derives its own from it)."),
    false_failure_rate: float = typer.Option(
        FALSE_FAILURE_RATE, help="Designed chance that one check fails although simulator and formula agree."
    ),
    list_checks: bool = typer.Option(False, "--list", help="List the checks and exit."),
) -> None:
    """Compare the simulators with analytic quantitative genetics and with each other (z-scores, p-values)."""
    from qtm.errors import FailureError
    from qtm.io import check_output_dir
    from qtm.verify import run_checks

    if list_checks:
        for name, entry in CHECKS.items():
            typer.echo(f"{name:<24} {entry.title}")
        return
    check_output_dir(out, flag="--out")
    results = run_checks(
        check or None, size=size, seed=seed, out=out, false_failure_rate=false_failure_rate, echo=typer.echo
    )
    counts = {status: sum(r.status == status for r in results) for status in ("pass", "fail", "error", "skipped")}
    summary = (f"{counts['pass']} passed, {counts['fail']} failed, {counts['error']} could not run, "
               f"{counts['skipped']} skipped")  # fmt: skip
    typer.echo(f"{summary}; plots and verify.json in {out}")
    if counts["fail"] or counts["error"]:
        raise FailureError(f"{summary}; see {out / 'verify.json'}")
