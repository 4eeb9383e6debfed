"""``chain validate``: trait statistics of chain runs, the theory fitted to them, and a report.

Pipeline: read the run directories (finished iterations only) → embed every image
set with the chosen embedder (cached) → fix PCA trait axes on the reference
population → statistics per iteration with bootstrap intervals → fit the
tilt-sampler recursion (:mod:`validate.fitting`) → tables, plots and ``report.md``.

The reference population (axes, Fréchet distance) is the real data when a run has
it (``RUN/real`` or ``--real``), else the base model's CFG-1 generations
(``RUN/reference/cond`` or ``--reference DIR/cond``), else iteration 0 of the first
run given; the report says which.

With ``--group caption`` (the default when the runs have several captions) the
traits are measured within each caption, as the theory means them: CFG selects
within a caption, a concept with its own p_c. The axes are then the principal
components of the reference's within-caption deviations, every population gets
per-caption rows (``caption`` column) and a within-caption summary, and the fit is
joint over captions (shared ``w_eff``, ``rho``, ``rho_u`` and p_u; per-caption p_c).
``--group none`` pools all images of an iteration, as before.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import typer

from chain.errors import ChainError
from qtm.validation import check_int
from qtm.io import atomic_path, write_json, write_table
from qtm.provenance import provenance
from validate.axes import fit_axes
from validate.cache import embed_image_set
from validate.embedders import EMBEDDER_NAMES, get_embedder
from validate.fitting import BaseMoments, Trajectory, fit_theory
from validate.report import markdown_table, plot_strength, plot_summary, plot_trajectories, sample_grid
from validate.runs import ImageSet, Run, read_run
from validate.statistics import (
    ALL_CAPTIONS,
    MIN_GROUP_SIZE,
    WITHIN_CAPTIONS,
    bootstrap_statistics,
    group_indices,
    grouped_statistics,
)

CACHE_FOLDER = ".validate_cache"
GROUPS = ("caption", "none")


def validate_runs(
    run_dirs,
    *,
    report,
    embedder: str = "stats",
    axes: int = 3,
    forecast_from: int | None = None,
    reference=None,
    real=None,
    bootstrap: int = 200,
    seed: int = 0,
    embedder_options: dict | None = None,
    reference_backend=None,
    make_reference: bool = False,
    fit_mutation: bool = False,
    group: str | None = None,
    fit_means: bool = True,
    warn=None,
) -> dict:
    """Validate the runs in ``run_dirs`` and write the report into ``report``.

    Parameters
    ----------
    run_dirs : list of path-like
        Run directories written by ``chain run``.
    report : path-like
        Output folder (created; files in it are replaced atomically).
    embedder : {"stats", "efficientnet", "clip"}
    axes : int
        Number of PCA trait axes.
    forecast_from : int, optional
        Also fit on iterations ``< forecast_from`` only and report the forecast error of the rest.
    reference, real : path-like, optional
        Base-model reference folder (``cond``/``uncond`` subfolders) and real-data folder for all runs.
    bootstrap : int
        Bootstrap resamples for the intervals (0 for none).
    seed : int
        Seed of the bootstrap.
    embedder_options : dict, optional
        Options of :func:`validate.embedders.get_embedder`.
    make_reference : bool
        First generate the base model's missing reference points into each run
        (:func:`validate.reference.make_reference`).
    fit_mutation : bool
        Also fit a per-axis variance added each generation (finetuning error); see
        :func:`validate.fitting.fit_theory`.
    fit_means : bool
        ``False``: fit the log variances only (:func:`validate.fitting.fit_theory`).
    group : {"caption", "none"}, optional
        ``caption``: traits within each caption and a joint per-caption fit; ``none``:
        pooled over captions. Default: ``caption`` when the runs have several captions and
        every caption at least 3 images per iteration (else ``none``, with a warning).
    reference_backend : chain.backends.base.Backend, optional
        The backend :func:`validate.reference.make_reference` uses (default: built from run.json).
    warn : callable, optional
        Receives each warning as one line (default: :func:`warnings.warn`).

    Returns
    -------
    dict
        Paths of what was written and the fit's goodness.

    Examples
    --------
    >>> validate_runs([], report="/tmp/unused")
    Traceback (most recent call last):
    ...
    chain.errors.ChainError: give at least one run directory
    """
    warn = warn if warn is not None else (lambda message: warnings.warn(message, stacklevel=2))
    if not run_dirs:
        raise ChainError("give at least one run directory")
    axes = check_int(axes, "--axes", minimum=1)
    bootstrap = check_int(bootstrap, "--bootstrap", minimum=0)
    if forecast_from is not None:
        forecast_from = check_int(forecast_from, "--forecast-from", minimum=1)
    if group is not None and group not in GROUPS:
        raise ChainError(f"--group {group!r} is not one of: {', '.join(GROUPS)}")
    if Path(report).exists() and not Path(report).is_dir():
        raise ChainError(f"--report {str(report)!r} is a file; give a folder for the report")
    model = get_embedder(embedder, **(embedder_options or {}))
    if make_reference:
        from validate.reference import make_reference as generate_reference

        for path in run_dirs:
            generate_reference(path, backend=reference_backend)
    runs = []
    for path in run_dirs:
        run = read_run(path, reference=reference, real=real)
        if run.skipped:
            warn(f"{run.name}: skipped unfinished iterations: {', '.join(run.skipped)}")
        if not run.iterations:
            warn(f"{run.name}: no finished iteration; left out of the report")
            continue
        runs.append(run)
    if not runs:
        raise ChainError("no run directory has a finished iteration; wait for `chain run` to finish one")
    if len({run.name for run in runs}) < len(runs):
        raise ChainError("two run directories have the same name; give runs with distinct folder names")

    captions = sorted({c for run in runs for images in run.iterations.values() for c in images.captions})
    if group is None:
        group = "caption" if len(captions) > 1 else "none"
        smallest = min(
            (min(Counter(images.captions).values()), run.name, index)
            for run in runs
            for index, images in run.iterations.items()
        )
        if group == "caption" and smallest[0] < MIN_GROUP_SIZE:
            group = "none"
            warn(
                f"{smallest[1]} iteration {smallest[2]} has a caption with only {smallest[0]} image(s); "
                f"traits are pooled over captions (--group none), since per-caption statistics need at least "
                f"{MIN_GROUP_SIZE} images per caption"
            )
    grouped = group == "caption"

    embedded = _embed_all(runs, model, warn)
    reference_name, reference_features, reference_captions = _reference_population(runs, embedded)
    # Within captions, the axes are the directions in which images of one caption differ: PCA of the
    # reference's within-caption deviations (grand mean added back, so the map's centre stays the same).
    axes_features = (
        _within_caption(reference_features, reference_captions, what=f"reference population ({reference_name})")
        if grouped
        else reference_features
    )
    trait_axes = fit_axes(axes_features, axes, standardize=model.standardize)
    reference_std = trait_axes.standardise(reference_features)

    rows = []
    for run_index, run in enumerate(runs):
        for population, key, data in _populations(run, embedded):
            rng = np.random.default_rng(np.random.SeedSequence([seed, run_index, key + 1]))
            projected = trait_axes.project(data.features)
            standardised = trait_axes.standardise(data.features)
            found = [
                {"caption": ALL_CAPTIONS, "n_images": len(data.features), **row}
                for row in bootstrap_statistics(
                    projected, standardised, data.alignment, reference_std, n_boot=bootstrap, random_state=rng
                )
            ]
            # The unconditional branch has no caption: its pooled rows are already its p_u.
            if grouped and population != "reference_uncond":
                found += grouped_statistics(
                    projected,
                    standardised,
                    _image_set(run, population, key).captions,
                    n_boot=bootstrap,
                    random_state=rng,
                    what=f"{run.name} {population}" + (f" iteration {key}" if key >= 0 else ""),
                )
            for row in found:
                rows.append(
                    {
                        **_run_columns(run),
                        "population": population,
                        "iteration": key,
                        "embedder": model.name,
                        "reference": reference_name,
                        **row,
                    }
                )
    statistics = pd.DataFrame(rows)

    report = Path(report)
    report.mkdir(parents=True, exist_ok=True)
    record = provenance(
        {
            "runs": [str(r.path) for r in runs],
            "embedder": model.name,
            "embedder_settings": model.settings(),
            "axes": axes,
            "forecast_from": forecast_from,
            "bootstrap": bootstrap,
            "reference": reference_name,
            "group": group,
            "fit_mutation": fit_mutation,
            "fit_means": fit_means,
        },
        seed=seed,
        software="chain validate",
    )
    written = {
        "statistics": [
            write_table(statistics, report / "statistics.csv", provenance=record),
            write_table(statistics, report / "statistics.parquet", provenance=record),
        ]
    }

    trajectories = _trajectories(runs, statistics, grouped=grouped)
    base, base_notes = _base_moments(statistics, grouped=grouped, groups={t.group for t in trajectories})
    fit, forecast, fit_note = _fit(
        trajectories, base, forecast_from, warn, fit_mutation=fit_mutation, fit_means=fit_means
    )
    fit_note = base_notes + fit_note
    if fit is not None:
        written["parameters"] = write_table(fit.parameters, report / "parameters.csv", provenance=record)
        written["predictions"] = write_table(fit.predictions, report / "predicted_vs_measured.csv", provenance=record)
        written["strength_plot"] = plot_strength(fit.parameters, path=report / "strength.png")
    if forecast is not None:
        written["forecast"] = write_table(forecast.predictions, report / "forecast.csv", provenance=record)
    write_json(
        report / "fit.json",
        {
            "fit": None if fit is None else fit.goodness,
            "forecast": None if forecast is None else forecast.goodness,
            "note": fit_note,
            "group": group,
            "provenance": record,
        },
    )
    labels = statistics.drop_duplicates("run").set_index("run")["label"].to_dict()
    predictions = fit.predictions if fit is not None else None
    for quantity in ("var", "mean"):
        written[f"{quantity}_plot"] = plot_trajectories(
            statistics, predictions, quantity=quantity, path=report / f"{quantity}.png", embedder=model.name
        )
    if forecast is not None:
        written["forecast_plot"] = plot_trajectories(
            statistics,
            forecast.predictions,
            quantity="var",
            path=report / "forecast_var.png",
            embedder=model.name,
            forecast_from=forecast_from,
        )
    written["summary_plot"] = plot_summary(statistics, path=report / "summary.png", embedder=model.name)
    written["grids"] = [sample_grid(run.iterations, path=report / f"samples_{run.name}.png") for run in runs]
    written["report"] = _write_markdown(
        report / "report.md",
        runs=runs,
        labels=labels,
        model=model,
        statistics=statistics,
        trait_axes=trait_axes,
        reference_name=reference_name,
        fit=fit,
        forecast=forecast,
        fit_note=fit_note,
        forecast_from=forecast_from,
        group=group,
        captions=captions,
    )
    return {
        "group": group,
        "written": written,
        "fit": None if fit is None else fit.goodness,
        "forecast": None if forecast is None else forecast.goodness,
    }


def _embed_all(runs: list[Run], model, warn) -> dict:
    """Embeddings of every image set, keyed by (run name, population, iteration), with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    jobs = []
    for run in runs:
        for index, images in sorted(run.iterations.items()):
            jobs.append(((run.name, "generated", index), images))
        for kind, images in run.reference.items():
            jobs.append(((run.name, f"reference_{kind}", -1), images))
        if run.real is not None:
            jobs.append(((run.name, "real", -1), run.real))
    total = sum(len(images) for _, images in jobs)
    out = {}
    sizes = set()
    columns = (
        TextColumn("[bold]embedding ({task.fields[what]})"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task("embed", total=total, what=model.name)
        for key, images in jobs:
            progress.update(task, what=f"{model.name}: {key[0]} {key[1]} {key[2] if key[2] >= 0 else ''}".strip())
            done = embed_image_set(
                images,
                model,
                cache_dir=_cache_dir(images),
                key=images.path.name,
                advance=lambda n: progress.advance(task, n),
            )
            folder_sizes = set(done.sizes)
            if len(folder_sizes) > 1:
                warn(
                    f"{images.path}: mixed image sizes {sorted(folder_sizes)[:4]}; each is embedded as is "
                    f"(the neural embedders resize; image statistics such as sharpness depend on the size)"
                )
            sizes |= folder_sizes
            out[key] = done
    if len(sizes) > 1 and not any(len(set(d.sizes)) > 1 for d in out.values()):
        warn(f"image sizes differ between folders: {sorted(sizes)[:4]}; size-dependent statistics may shift")
    return out


def _cache_dir(images: ImageSet) -> Path:
    return images.path.parent / CACHE_FOLDER


def _populations(run: Run, embedded: dict):
    for (name, population, key), data in embedded.items():
        if name == run.name:
            yield population, key, data


def _image_set(run: Run, population: str, key: int) -> ImageSet:
    if population == "generated":
        return run.iterations[key]
    return run.real if population == "real" else run.reference[population.removeprefix("reference_")]


def _reference_population(runs: list[Run], embedded: dict) -> tuple[str, np.ndarray, list[str]]:
    """Name, features and captions of the reference population."""
    for population, label in (("real", "real data"), ("reference_cond", "base model, CFG 1")):
        for run in runs:
            if (run.name, population, -1) in embedded:
                features = embedded[(run.name, population, -1)].features
                return f"{label} ({run.name})", features, _image_set(run, population, -1).captions
    first = runs[0]
    index = min(first.iterations)
    features = embedded[(first.name, "generated", index)].features
    return f"iteration {index} of {first.name}", features, first.iterations[index].captions


def _within_caption(features: np.ndarray, captions, *, what: str) -> np.ndarray:
    """``features`` with each caption's mean replaced by the grand mean: only within-caption differences remain."""
    out = np.array(features, dtype=float)
    for index in group_indices(captions, what=what).values():
        out[index] -= out[index].mean(axis=0)
    return out + np.asarray(features, dtype=float).mean(axis=0)


def _run_columns(run: Run) -> dict:
    params = run.params
    return {
        "run": run.name,
        "label": run.label(),
        "cfg": run.cfg,
        "schedule": str(params.get("schedule", "constant")),
        "drop": float(params.get("drop", 0.0) or 0.0),
        "real_fraction": float(params.get("real_fraction", 0.0) or 0.0),
        "finetune": str(params.get("finetune", "base")),
    }


def _trajectories(runs: list[Run], statistics: pd.DataFrame, *, grouped: bool) -> list[Trajectory]:
    """One trajectory per run, or per run and caption when ``grouped``."""
    generated = statistics[statistics["population"] == "generated"]
    generated = generated[~generated["caption"].isin([WITHIN_CAPTIONS] + ([ALL_CAPTIONS] if grouped else []))]
    out = []
    for run in runs:
        columns = _run_columns(run)
        for caption, rows in generated[generated["run"] == run.name].groupby("caption", sort=True):
            table = {
                name: rows[rows["statistic"] == name].pivot(index="iteration", columns="axis", values="value")
                for name in ("mean", "var")
            }
            out.append(
                Trajectory(
                    run=run.name,
                    setting=f"cfg={columns['cfg']:g} {columns['schedule']}",
                    cfg=columns["cfg"],
                    iterations=table["mean"].index.to_numpy(),
                    mean=table["mean"].to_numpy(),
                    var=table["var"].to_numpy(),
                    population=int(rows["n_images"].min()),
                    drop=columns["drop"],
                    real_fraction=columns["real_fraction"],
                    finetune=columns["finetune"],
                    group=caption if grouped else "",
                )
            )
    return out


def _base_moments(statistics: pd.DataFrame, *, grouped: bool, groups: set[str]) -> tuple[BaseMoments, list[str]]:
    """Measured base moments (per caption for cond and real data when ``grouped``) and notes on what is missing."""
    notes = []

    def moments(population, caption=ALL_CAPTIONS):
        rows = statistics[statistics["population"] == population]
        if rows.empty:
            return None
        first = rows[(rows["run"] == rows["run"].iloc[0]) & (rows["caption"] == caption)]
        if first.empty:
            return None
        values = {
            name: first[first["statistic"] == name].sort_values("axis")["value"].to_numpy() for name in ("mean", "var")
        }
        return values["mean"], values["var"]

    def per_caption(population):
        if not grouped or moments(population) is None:
            return moments(population)
        found = {caption: moments(population, caption) for caption in groups}
        missing = sorted(caption for caption, pair in found.items() if pair is None)
        if missing:
            notes.append(
                f"{population} has no images of caption {missing[0]!r}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                + "; its per-caption moments are not used"
            )
            return None
        return found

    base = BaseMoments(cond=per_caption("reference_cond"), uncond=moments("reference_uncond"), data=per_caption("real"))
    return base, notes


def _fit(trajectories, base, forecast_from, warn, *, fit_mutation, fit_means):
    notes = []
    if base.uncond is None:
        notes.append(
            "no unconditional reference generations: p_u is fitted per axis (nuisance), which leaves "
            "w_eff weakly identified; add RUN/reference/uncond for a sharper fit"
        )
    if base.cond is None and base.data is None:
        notes.append("no real data or CFG-1 reference: p_c (= the data) is fitted per axis (nuisance)")
    if any(not np.isfinite(t.cfg) for t in trajectories):
        notes.append("some run.json has no cfg; its w_eff is reported without a CFG scale")
    fit = forecast = None
    try:
        fit = fit_theory(trajectories, base=base, fit_mutation=fit_mutation, fit_means=fit_means)
    except ChainError as error:
        warn(f"fit skipped: {error}")
        notes.append(f"fit skipped: {error}")
    if forecast_from is not None and fit is not None:
        if all(t.iterations.max() < forecast_from for t in trajectories):
            warn(f"--forecast-from {forecast_from}: no finished iteration at or after it; no forecast")
            notes.append("no forecast: nothing to forecast")
        else:
            try:
                forecast = fit_theory(
                    trajectories, base=base, fit_until=forecast_from, fit_mutation=fit_mutation, fit_means=fit_means
                )
            except ChainError as error:
                warn(f"forecast skipped: {error}")
                notes.append(f"forecast skipped: {error}")
    return fit, forecast, notes


def _write_markdown(
    path: Path,
    *,
    runs,
    labels,
    model,
    statistics,
    trait_axes,
    reference_name,
    fit,
    forecast,
    fit_note,
    forecast_from,
    group,
    captions,
) -> Path:
    lines = [
        "# Validation of the theory against chain runs",
        "",
        f"Embedder: **{model.name}** (`{json.dumps(model.settings())}`). Reference population for the "
        f"trait axes and the Fréchet distance: **{reference_name}**. "
        f"Trait axes: top {trait_axes.k} principal components "
        f"(share of the reference's variance: {', '.join(f'{e:.3f}' for e in trait_axes.explained)}).",
        "",
        *(
            [
                "**The CLIP model has RANDOM weights: this report tests the plumbing only; its numbers mean nothing.**",
                "",
            ]
            if model.settings().get("pretrained") == "random"
            else []
        ),
        (
            f"Traits are measured **within each caption** ({len(captions)} captions, `--group caption`): the axes "
            "are the principal components of the reference's within-caption deviations, `statistics.csv` has one "
            "row set per caption (`caption` column), and the `(within)` rows and `within_*` columns below are the "
            "mean over captions of the within-caption variance (bootstrap resampling images within captions). "
            "The fit is joint over captions: shared w_eff per CFG setting, rho, rho_u and p_u; p_c per caption."
            if group == "caption"
            else f"Traits are pooled over all images of an iteration (`--group none`; {len(captions)} caption(s))."
        ),
        "",
        "The reference sample's own variance on its top principal axes is biased upward (PCA picks the "
        "directions in which that sample happens to vary most), most at small sample sizes; compare iterations "
        "with each other rather than with the reference where that matters.",
        "",
        "## Runs",
        "",
        markdown_table(
            pd.DataFrame(
                [
                    {
                        "run": run.name,
                        "settings": labels.get(run.name, run.name),
                        "finished iterations": ", ".join(map(str, sorted(run.iterations))),
                        "skipped": ", ".join(run.skipped) or "–",
                        "reference points": ", ".join(sorted(run.reference)) or "–",
                    }
                    for run in runs
                ]
            )
        ),
        "",
        f"## Statistics per iteration ({model.name} embedding)",
        "",
        "Point estimates with 95% bootstrap intervals in [`statistics.csv`](statistics.csv) "
        "([parquet](statistics.parquet)); total variance is in the standardised feature space.",
        "",
        markdown_table(_wide(statistics)),
        "",
        "![variance per iteration](var.png)",
        "",
        "![mean per iteration](mean.png)",
        "",
        "![total variance and Fréchet distance](summary.png)",
        "",
        "## Theory fitted to the trajectories",
        "",
    ]
    if group == "none" and len(captions) > 1:
        fit_note = [
            *fit_note,
            f"the traits are pooled over {len(captions)} captions, but CFG selects within each caption: pooled over "
            f"captions p_c is close to p_u, so the tilt model can miss the mean shifts that CFG causes per caption "
            f"(`--group caption` fits within captions)",
        ]
    lines += [f"- {note}" for note in fit_note]
    if fit is not None:
        g = fit.goodness
        lines += [
            "",
            *(
                ["**The optimiser did not converge** (see `fit.json`); the parameters below are indicative only.", ""]
                if not g["success"]
                else []
            ),
            "Tilt-sampler chain recursion, least squares on standardised "
            + ("mean and log-variance" if fit.predictions["split"].ne("not fitted").all() else "log-variance (only)")
            + " residuals: "
            f"χ² = {g['chi2']:.4g} on {g['dof']} degrees of freedom (reduced {g['reduced_chi2']:.3g}), "
            f"RMS z = {g['fit_rms_z']:.3g}, RMSE of log variance {g['fit_rmse_log_var']:.3g}, of the mean "
            f"{g['fit_rmse_mean']:.3g}; optimiser: {g['message']}",
            "",
            markdown_table(
                fit.parameters.assign(axis=fit.parameters["axis"].map(lambda a: "–" if a < 0 else str(a)))[
                    ["parameter", "setting", "axis", "cfg", "estimate", "stderr"]
                ]
            ),
            "",
            "Fitted parameters: [`parameters.csv`](parameters.csv); predicted against measured per "
            "iteration: "
            "[`predicted_vs_measured.csv`](predicted_vs_measured.csv).",
            "",
            "![fitted selection strength against CFG](strength.png)",
        ]
    if forecast is not None:
        g = forecast.goodness
        lines += [
            "",
            f"## Forecast from the first {forecast_from} iterations",
            "",
            f"Fitted on iterations < {forecast_from}, predicted the rest: RMSE of log variance "
            f"{g['forecast_rmse_log_var']:.3g} (in-sample {g['fit_rmse_log_var']:.3g}), of the mean "
            f"{g['forecast_rmse_mean']:.3g}, RMS z {g['forecast_rms_z']:.3g}. "
            "Table: [`forecast.csv`](forecast.csv).",
            "",
            "![forecast](forecast_var.png)",
        ]
    lines += ["", "## Sample images (one row per iteration)", ""]
    lines += [f"- {run.name}: ![samples {run.name}](samples_{run.name}.png)" for run in runs]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return path


def _wide(statistics: pd.DataFrame) -> pd.DataFrame:
    """One row per run and iteration: total variance, Fréchet distance, alignment, first axes' variance.

    Pooled over captions; with per-caption statistics also their within-caption summary (``within_`` columns).
    """
    generated = statistics[statistics["population"] != "generated"].assign(iteration=-1)
    rows = pd.concat([statistics[statistics["population"] == "generated"], generated])
    rows = rows[rows["caption"].isin([ALL_CAPTIONS, WITHIN_CAPTIONS])]
    column = np.where(rows["axis"] >= 0, rows["statistic"] + "_" + rows["axis"].astype(str), rows["statistic"])
    rows = rows.assign(column=np.where(rows["caption"] == WITHIN_CAPTIONS, "within_" + column, column))
    pooled = ["total_var", "frechet", "alignment"] + [f"var_{a}" for a in range(3)]
    keep = pooled + [f"within_{c}" for c in pooled if c.startswith(("var", "total"))]
    rows = rows[rows["column"].isin(keep)]
    wide = rows.pivot_table(
        index=["run", "population", "iteration"], columns="column", values="value", sort=False
    ).reset_index()
    wide["iteration"] = wide["iteration"].map(lambda i: "–" if i < 0 else str(i))
    return wide[["run", "population", "iteration"] + [c for c in keep if c in wide.columns]]


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

    console = Console(stderr=True)

    def warn(message):
        console.print(f"chain: warning: {message}", highlight=False, markup=False, soft_wrap=True)

    # Library warnings are collected and the user-facing ones (cache, weights) printed as one line each.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
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
            make_reference=make_reference,
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
