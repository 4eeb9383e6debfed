"""``chain validate``: the command line of :func:`validate.pipeline.validate_runs`.

This module only parses the options (checked by :class:`validate.parameters.ValidateParameters` before any work,
the device probed by :func:`chain.run_parameters.check_device`), draws the progress bar, prints warnings and
the summary; the work is :mod:`validate.pipeline`'s. Being a command-line module
it may use ``chain``: ``--make-reference`` first generates the base model's missing
reference folders with :func:`chain.reference.make_reference`, and ``--decompose`` (the
default) those and each iteration's CFG-1 and unconditional samples with
:func:`chain.decomposition_samples.make_decomposition_samples` (``--finetune-noise K``: also
K refinetunes of iteration 0's training set), timed and reported. ``--selection-curve`` then generates the base
model's and every iteration's samples at the CFG values of ``--selection-cfg`` with
:func:`chain.selection_samples.make_selection_samples` (paired by seed with the CFG-1 samples), and the report
gains the selection curve (:mod:`validate.selection`).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import typer

from chain.decomposition_samples import DEFAULT_PER_CAPTION, make_decomposition_samples
from chain.errors import ChainError
from chain.reference import make_reference as generate_reference
from chain.run_parameters import check_device
from chain.selection_samples import make_selection_samples
from commands.options import path_text
from qtm.rundir import read_parameters
from validate.conformal import describe_stretch
from validate.embedders import EMBEDDER_NAMES
from validate.parameters import ValidateParameters
from validate.pipeline import validate_runs
from validate.selection import DEFAULT_CFGS
from validate.skill import partial_baselines


def validate_command(
    run_dirs: list[Path] = typer.Argument(
        ..., help="Run directories written by `chain run`.", parser=path_text
    ),
    embedder: str = typer.Option("stats", help=f"Feature extractor: {', '.join(EMBEDDER_NAMES)}."),
    report: Path = typer.Option(..., help="Output folder of the report (tables, plots, report.md).", parser=path_text),
    axes: int = typer.Option(3, help="Number of PCA trait axes fixed on the reference population (a count)."),
    forecast_from: int = typer.Option(None, help="Also fit on iterations < K only and report the forecast error."),
    calibration: str = typer.Option(
        None,
        help="With --forecast-from: take the forecast's model (the shared parameters, their standard errors and the "
        "process noise) from this calibration file instead of fitting it on iterations < K: calibration.json of an "
        "earlier `chain validate --guidance shared` on other runs of the same data set and embedder, or 'shipped' "
        "(the package's, from the digits study).",
    ),
    predict: list[str] = typer.Option(
        None,
        help="Held-out run directories (repeat the option, or separate with commas): fit one model for every "
        "setting on RUN_DIRS and predict each held-out run's iterations from its iteration 0 (--predict-from) and "
        "run.json settings, scored against baselines; the report gains calibration.json for `qtm simulate "
        "--calibration`.",
    ),
    predict_from: int = typer.Option(
        1,
        help="With --predict: K, the first predicted iteration; each held-out run is predicted from its measured "
        "iteration K - 1 (its iterations before K give the trend baseline; none of them enters the fit).",
    ),
    conformal: bool = typer.Option(
        False,
        "--conformal",
        help="With --predict: also give intervals calibrated out of sample (each training setting predicted from a "
        "fit on the others, the theory's intervals stretched until they cover 90 % of those values; one more fit "
        "per training setting).",
    ),
    guidance: str = typer.Option(
        None,
        help="Model of selection of the fit and forecast: per-setting (a free w_eff per CFG setting) or shared "
        "(one model for every setting: the mean from the sampler's law at w_eff = 1 + g (cfg - 1), ln var selected "
        "by one slope per unit of the mean log CFG scale). Default: per-setting, shared with --predict (whose "
        "prediction always uses shared, reusing that fit).",
    ),
    states: str = typer.Option(
        None,
        help="Source state of each one-step transition: measured, or filtered (the Kalman filter's estimate from "
        "the earlier iterations and the measurement, for chains whose next model inherits the state a sample came "
        "from: the sample's noise then attenuates the fitted fidelities). For the fit, the forecast and --predict; "
        "default filtered, with --calibration the calibration's.",
    ),
    reference: Path = typer.Option(
        None, help="Folder with cond/ and uncond/ base-model generations (all runs).", parser=path_text
    ),
    real: Path = typer.Option(None, help="Folder of real-data images (all runs).", parser=path_text),
    bootstrap: int = typer.Option(200, help="Bootstrap resamples for the 95% intervals (a count; 0: none)."),
    seed: int = typer.Option(0, help="Seed of the bootstrap."),
    group: str = typer.Option(
        None,
        help="caption: traits within each caption, fitted with per-caption p_c (default with several captions); "
        "none: pooled over captions.",
    ),
    decompose: bool = typer.Option(
        True,
        "--decompose/--no-decompose",
        help="Selection, response and inheritance per iteration: first generate each finished iteration's missing "
        "CFG-1 and unconditional samples (and the base-model reference points) into the run directory.",
    ),
    decompose_per_caption: int = typer.Option(
        DEFAULT_PER_CAPTION, help="CFG-1 images per caption of each iteration's model (half as many unconditional)."
    ),
    finetune_noise: int = typer.Option(
        0, help="K: also finetune K more models on iteration 0's training set and sample them (finetuning noise)."
    ),
    selection_curve: bool = typer.Option(
        False,
        "--selection-curve/--no-selection-curve",
        help="The selection law S(w), measured and predicted: first generate the base model's and every iteration's "
        "samples at each CFG value of --selection-cfg (paired by seed with the CFG-1 samples) into RUN/selection.",
    ),
    selection_cfg: str = typer.Option(
        None,
        help=f"Comma-separated peak CFG values of the selection curve, each > 0 and given once (implies "
        f"--selection-curve; default {','.join(f'{w:g}' for w in DEFAULT_CFGS)}).",
    ),
    selection_per_caption: int = typer.Option(
        None,
        help="Images per caption at each CFG value of the selection curve (default: a third of "
        "--decompose-per-caption, at least 3).",
    ),
    plots: bool = typer.Option(
        True,
        "--plots/--no-plots",
        help="Draw the report's plots (PNG); --no-plots writes the same tables and report.md without them, in a "
        "sixth of the time, for sweeps whose numbers are read rather than looked at.",
    ),
    make_reference: bool = typer.Option(
        False, "--make-reference", help="First generate missing base-model reference points (RUN/reference/) and "
        "write the run's data set to RUN/real where it has none."
    ),
    clip_model: str = typer.Option(
        "ViT-B-32", help="open_clip architecture name (e.g. ViT-B-32, ViT-L-14; clip embedder)."
    ),
    clip_pretrained: str = typer.Option(None, help="open_clip pretrained tag; 'random' = plumbing test only."),
    clip_checkpoint: Path = typer.Option(
        None, help="Local open_clip checkpoint file (clip embedder).", parser=path_text
    ),
    batch_size: int = typer.Option(16, help="Images per forward pass (neural embedders)."),
    device: str = typer.Option("cpu", help="torch device of the neural embedders: cpu, cuda or cuda:N."),
) -> None:
    """Measure trait statistics of chain runs, fit the theory to them, and write a report."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    held_out = [Path(part) for item in predict or [] for part in item.split(",") if part]
    curve = DEFAULT_CFGS if selection_curve and selection_cfg is None else selection_cfg
    # Every option before any work: a bad value must not cost the generation or the embedding.
    checked = ValidateParameters(
        report=report, axes=axes, forecast_from=forecast_from, bootstrap=bootstrap, seed=seed, guidance=guidance,
        states=states, group=group, predict=tuple(held_out), predict_from=predict_from, selection_curve=curve,
        real=real, reference=reference, calibration=calibration, embedder=embedder,
        batch_size=batch_size, decompose=decompose, decompose_per_caption=decompose_per_caption,
        finetune_noise=finetune_noise, selection_per_caption=selection_per_caption,
    ).check(run_dirs)
    cfgs, paired = checked.selection_curve, checked.selection_per_caption
    if device != "cpu":  # the CPU is always there; anything else is probed once, as `chain run` does
        device = check_device(device)
    console = Console(stderr=True)

    def warn(message):
        console.print(f"chain: warning: {message}", highlight=False, markup=False, soft_wrap=True)

    generation = {"images": 0, "seconds": 0.0, "finetunes": 0}
    selection = {"images": 0, "seconds": 0.0}

    def prepare(path):
        if not make_reference and "backend" not in read_parameters(path):
            # Not a `chain run` directory (images from elsewhere): measure what is there, generate nothing.
            warn(f"{Path(path).name}: run.json names no backend; no decomposition samples generated")
            return
        began = time.perf_counter()
        generate_reference(path, real_data=real is None)
        generation["seconds"] += time.perf_counter() - began
        if decompose:
            try:
                made = make_decomposition_samples(
                    path, per_caption=decompose_per_caption, finetune_noise=finetune_noise, real_data=real is None
                )
            except ChainError as error:
                warn(f"{Path(path).name}: no decomposition samples generated: {error}")
                return
            for key in generation:
                generation[key] += made[key]
        if cfgs is not None:
            try:
                made = make_selection_samples(path, cfgs, per_caption=decompose_per_caption, paired=paired)
            except ChainError as error:
                warn(f"{Path(path).name}: no selection samples generated: {error}")
                return
            for key in selection:
                selection[key] += made[key]
            if made["skipped"]:
                warn(f"{Path(path).name}: no CFG-1 samples to pair with at iterations {made['skipped']}; "
                     "those models are left out of the selection curve")

    columns = (
        TextColumn("[bold]{task.fields[what]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    # Library warnings are collected and the user-facing ones (cache, weights) printed as one line each.
    with warnings.catch_warnings(record=True) as caught, Progress(*columns, transient=True) as bar:
        warnings.simplefilter("always")
        task = None

        def progress(done, total, what):
            # One bar per stage (embedding, the conformal calibration's fits), gone once the stage is done.
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
            calibration=calibration,
            predict=held_out,
            predict_from=predict_from,
            conformal=conformal,
            guidance=guidance,
            states=states,
            reference=reference,
            real=real,
            bootstrap=bootstrap,
            seed=seed,
            prepare=prepare if make_reference or decompose else None,
            progress=progress,
            group=group,
            decompose_runs=decompose,
            selection_curve=cfgs,
            plots=plots,
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
    if decompose:
        typer.echo(
            f"decomposition samples: {generation['images']} images generated and {generation['finetunes']} "
            f"finetunes made in {generation['seconds']:.1f} s (reference points included)"
        )
    if cfgs is not None:
        typer.echo(f"selection samples: {selection['images']} images generated in {selection['seconds']:.1f} s")
    fit = result["fit"]
    summary = (
        "no fit"
        if fit is None
        else f"one-step fit: reduced chi2 {fit['reduced_chi2']:.3g} "
        f"({fit['reduced_chi2_measurement']:.3g} without process noise)"
    )
    if result["forecast"] is not None:
        g = result["forecast"]
        better = g["skill_better_baseline"]
        model = "" if "forecast_calibration" not in g else " with the calibration's model"
        typer.echo(
            f"forecast from iteration {g['forecast_from']}{model}: mean |Δ ln var| {g['skill_theory_abs_log_var']:.3g} "
            f"against {g[f'skill_{better}_abs_log_var']:.3g} for {better} (ratio {g['skill_ratio']:.2f}); 90 % "
            f"intervals cover {100 * g['forecast_run_coverage']:.0f} % of run-iterations"
        )
    if result["prediction"] is not None:
        g = result["prediction"]
        better = g["skill_better_baseline"]
        partial = "".join(f"; against {phrase}" for phrase in partial_baselines(g))
        typer.echo(
            f"prediction of {len(g['held_out_runs'])} held-out run(s): mean |Δ ln var| "
            f"{g['skill_theory_abs_log_var']:.3g} against {g[f'skill_{better}_abs_log_var']:.3g} for {better} "
            f"(ratio {g['skill_ratio']:.2f}{partial}); 90 % intervals cover {100 * g['predict_run_coverage']:.0f} % "
            f"of run-iterations{_conformal_coverage(g)}"
        )
    typer.echo(f"report: {result['written']['report']} (--group {result['group']}; {summary})")


def _conformal_coverage(goodness: dict) -> str:
    """The run-level conformal intervals' coverage, for the summary line (nothing without a calibration)."""
    pool = goodness.get("interval_calibration", {}).get("run log_var")
    if pool is None:
        return ""
    covering = "" if pool["coverage"] is None else f" {100 * pool['coverage']:.0f} %"
    return f"; conformal intervals ({describe_stretch(pool['stretch'])}){covering}"
