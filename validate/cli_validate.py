"""``chain validate``: the command line of :func:`validate.pipeline.validate_runs`.

This module only parses the options, draws the progress bar, prints warnings and
the summary; the work is :mod:`validate.pipeline`'s. Being a command-line module
it may use ``chain``: ``--make-reference`` first generates the base model's missing
reference folders with :func:`chain.reference.make_reference`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import typer

from chain.reference import make_reference as generate_reference
from validate.embedders import EMBEDDER_NAMES
from validate.pipeline import validate_runs


def validate_command(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories written by `chain run`."),
    embedder: str = typer.Option("stats", help=f"Feature extractor: {', '.join(EMBEDDER_NAMES)}."),
    report: Path = typer.Option(..., help="Output folder of the report (tables, plots, report.md)."),
    axes: int = typer.Option(3, help="Number of PCA trait axes fixed on the reference population."),
    forecast_from: int = typer.Option(None, help="Also fit on iterations < K only and report the forecast error."),
    reference: Path = typer.Option(None, help="Folder with cond/ and uncond/ base-model generations (all runs)."),
    real: Path = typer.Option(None, help="Folder of real-data images (all runs)."),
    bootstrap: int = typer.Option(200, help="Bootstrap resamples for the 95% intervals (0: none)."),
    seed: int = typer.Option(0, help="Seed of the bootstrap."),
    group: str = typer.Option(
        None,
        help="caption: traits within each caption, fitted with per-caption p_c (default with several captions); "
        "none: pooled over captions.",
    ),
    variance_only: bool = typer.Option(
        False, "--variance-only", help="Fit the log variances only (the means are predicted, not fitted)."
    ),
    fit_mutation: bool = typer.Option(
        False, "--fit-mutation", help="Also fit a per-axis variance added each generation (finetuning error)."
    ),
    make_reference: bool = typer.Option(
        False, "--make-reference", help="First generate missing base-model reference points (RUN/reference/)."
    ),
    clip_model: str = typer.Option("ViT-B-32", help="open_clip architecture (clip embedder)."),
    clip_pretrained: str = typer.Option(None, help="open_clip pretrained tag; 'random' = plumbing test only."),
    clip_checkpoint: Path = typer.Option(None, help="Local open_clip checkpoint file (clip embedder)."),
    batch_size: int = typer.Option(16, help="Images per forward pass (neural embedders)."),
    device: str = typer.Option("cpu", help="torch device of the neural embedders."),
) -> None:
    """Measure trait statistics of chain runs, fit the theory to them, and write a report."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from qtm.io import check_output_dir

    check_output_dir(report, flag="--report")  # before any embedding: a bad path must not cost the work
    console = Console(stderr=True)

    def warn(message):
        console.print(f"chain: warning: {message}", highlight=False, markup=False, soft_wrap=True)

    columns = (
        TextColumn("[bold]embedding ({task.fields[what]})"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    # Library warnings are collected and the user-facing ones (cache, weights) printed as one line each.
    with warnings.catch_warnings(record=True) as caught, Progress(*columns, transient=True) as bar:
        warnings.simplefilter("always")
        task = None

        def progress(done, total, what):
            # One bar while embedding, gone once every image is embedded.
            nonlocal task
            if task is None:
                task = bar.add_task("embed", total=total, what=what)
            bar.update(task, completed=done, what=what)
            if done >= total:
                bar.remove_task(task)
                task = None

        result = validate_runs(
            run_dirs,
            report=report,
            embedder=embedder,
            axes=axes,
            forecast_from=forecast_from,
            reference=reference,
            real=real,
            bootstrap=bootstrap,
            seed=seed,
            prepare=generate_reference if make_reference else None,
            progress=progress,
            fit_mutation=fit_mutation,
            group=group,
            fit_means=not variance_only,
            warn=warn,
            embedder_options={
                "clip_model": clip_model,
                "clip_pretrained": clip_pretrained,
                "clip_checkpoint": clip_checkpoint,
                "batch_size": batch_size,
                "device": device,
            },
        )
    for item in caught:
        if item.category is UserWarning:
            warn(str(item.message))
    fit = result["fit"]
    summary = "no fit" if fit is None else f"fit: reduced chi2 {fit['reduced_chi2']:.3g}, RMS z {fit['fit_rms_z']:.3g}"
    typer.echo(f"report: {result['written']['report']} (--group {result['group']}; {summary})")
