"""The stages of ``chain validate``: read runs, embed, statistics, fit, forecast; then the report.

Pipeline: read the run directories (finished iterations only, :mod:`qtm.rundir`) →
embed every image set with the chosen embedder (cached) → fix PCA trait axes on the
reference population → statistics per iteration with bootstrap intervals → the one-step-ahead
fit of the theory's transition and the forecast (:mod:`validate.fitting`) → the per-iteration
decomposition into selection and response from ``RUN/iter-NNN/samples``
(:mod:`validate.decomposition`) → tables, plots and ``report.md``
(:func:`validate.report.write_report`). :func:`validate_runs` runs it all; the
command line (:mod:`validate.cli_validate`) only parses options and draws progress.

The reference population (axes, Fréchet distance) is the real data when a run has
it (``RUN/real`` or ``--real``), else the base model's CFG-1 generations
(``RUN/reference/cond`` or ``--reference DIR/cond``), else iteration 0 of the first
run given; the report says which.

With ``--group caption`` (the default when the runs have several captions) the
traits are measured within each caption, as the theory means them: CFG selects
within a caption, a concept with its own p_c. The axes are then the principal
components of the reference's within-caption deviations, every population gets
per-caption rows (``caption`` column) and a within-caption summary, and the fit is
joint over captions (shared ``w_eff``, ``rho``, ``rho_u``, ``rho_v``, ``mu`` and p_u; per-caption p_c).
``--group none`` pools all images of an iteration, as before.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from qtm.errors import QTMError
from qtm.io import locked, remove_stale_parts
from qtm.provenance import provenance
from qtm.random import derive_seed
from qtm.rundir import REPLICATE_PREFIX, ImageSet, Run, read_run, read_samples, sampled_at_cfg1
from qtm.validation import check_int
from validate.axes import TraitAxes, fit_axes
from validate.cache import embed_image_set
from validate.decomposition import RunTraits, TraitSet, decompose, finetune_noise
from validate.diversity import diversity_metrics
from validate.embedders import Embedder, get_embedder
from validate.errors import ValidateError
from validate.fitting import BaseMoments, FitResult, Trajectory, fit_theory, forecast
from validate.report import write_report
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
#: The stream tag of the decomposition's bootstrap (qtm.random.derive_seed).
DECOMPOSITION_TAG = 0xDEC2
#: The stream tags of the bootstrap resamples of the statistics and of the diversity metrics (qtm.random.derive_seed).
BOOTSTRAP_TAG = 0xB007
DIVERSITY_TAG = 0xD1CE


@dataclass
class Validation:
    """What :func:`validate_runs` measured and fitted: everything the report shows.

    ``statistics`` has one row per run, population, iteration, caption, statistic and
    axis; ``fit`` and ``forecast`` are None where they were not made (``notes`` say why).
    """

    runs: list[Run]
    embedder: Embedder
    group: str
    captions: list[str]
    reference_name: str
    trait_axes: TraitAxes
    statistics: pd.DataFrame
    fit: FitResult | None
    forecast: FitResult | None
    notes: list[str]
    forecast_from: int | None
    provenance: dict
    decomposition: pd.DataFrame | None = None
    diversity: pd.DataFrame | None = None


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
    group: str | None = None,
    decompose_runs: bool = True,
    prepare: Callable[[Path], object] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    warn: Callable[[str], None] | None = None,
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
    decompose_runs : bool
        Measure selection, response and inheritance per iteration (:mod:`validate.decomposition`)
        from the samples in ``RUN/iter-NNN/samples`` (``chain validate --decompose`` generates them).
    group : {"caption", "none"}, optional
        ``caption``: traits within each caption and a joint per-caption fit; ``none``:
        pooled over captions. Default: ``caption`` when the runs have several captions and
        every caption at least 3 images per iteration (else ``none``, with a warning).
    prepare : callable, optional
        ``prepare(run_dir)`` is called for every run directory once the options are
        checked and before it is read (``chain validate --make-reference`` generates the
        base model's missing reference folders here).
    progress : callable, optional
        ``progress(done, total, what)`` while embedding: images embedded so far, of all,
        and which image set is being embedded.
    warn : callable, optional
        Receives each warning as one line (default: :func:`warnings.warn`).

    Returns
    -------
    dict
        ``group``, ``written`` (paths of what was written), ``fit`` and ``forecast``
        (their goodness, or None) and ``validation`` (the :class:`Validation`).

    Examples
    --------
    >>> validate_runs([], report="/tmp/unused")
    Traceback (most recent call last):
    ...
    validate.errors.ValidateError: give at least one run directory
    """
    warn = warn if warn is not None else (lambda message: warnings.warn(message, stacklevel=2))
    if not run_dirs:
        raise ValidateError("give at least one run directory")
    axes = check_int(axes, "--axes", minimum=1)
    bootstrap = check_int(bootstrap, "--bootstrap", minimum=0)
    if forecast_from is not None:
        forecast_from = check_int(forecast_from, "--forecast-from", minimum=1)
    if group is not None and group not in GROUPS:
        raise ValidateError(f"--group {group!r} is not one of: {', '.join(GROUPS)}")
    if Path(report).exists() and not Path(report).is_dir():
        raise ValidateError(f"--report {str(report)!r} is a file; give a folder for the report")
    for flag, folder in (("--real", real), ("--reference", reference)):
        if folder is not None and not Path(folder).is_dir():
            what = "is not a folder" if Path(folder).exists() else "does not exist"
            raise ValidateError(f"{flag} {str(folder)!r} {what}; give a folder of images")
    model = get_embedder(embedder, **(embedder_options or {}))
    if prepare is not None:
        for path in run_dirs:
            prepare(path)
    runs = read_runs(run_dirs, reference=reference, real=real, warn=warn)
    captions = sorted({c for run in runs for images in run.iterations.values() for c in images.captions})
    group = group if group is not None else _default_group(runs, captions, warn)
    grouped = group == "caption"

    embedded = embed_runs(runs, model, warn=warn, progress=progress)
    reference_name, reference_features, reference_captions = _reference_population(runs, embedded)
    # Within captions, the axes are the directions in which images of one caption differ: PCA of the
    # reference's within-caption deviations (grand mean added back, so the map's centre stays the same).
    axes_features = (
        _within_caption(reference_features, reference_captions, what=f"reference population ({reference_name})")
        if grouped
        else reference_features
    )
    trait_axes = fit_axes(axes_features, axes, standardize=model.standardize)
    statistics = _statistics(
        runs, embedded, trait_axes, reference_features, reference_name, model, bootstrap, seed, grouped=grouped
    )
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
            "decompose": decompose_runs,
        },
        seed=seed,
        software="chain validate",
    )
    trajectories = _trajectories(runs, statistics, grouped=grouped)
    base, base_notes = _base_moments(statistics, grouped=grouped, groups={t.group for t in trajectories})
    fit, forecast, fit_notes = _fit(trajectories, base, forecast_from, warn)
    decomposition, decomposition_notes = (
        _decomposition(runs, embedded, model, trait_axes, bootstrap=bootstrap, seed=seed)
        if decompose_runs
        else (None, [])
    )
    diversity, diversity_notes = _diversity(
        runs, embedded, trait_axes, reference_features, reference_captions, bootstrap=bootstrap, seed=seed,
        grouped=grouped,
    )
    validation = Validation(
        runs=runs,
        embedder=model,
        group=group,
        captions=captions,
        reference_name=reference_name,
        trait_axes=trait_axes,
        statistics=statistics,
        fit=fit,
        forecast=forecast,
        notes=base_notes + fit_notes + decomposition_notes + diversity_notes,
        forecast_from=forecast_from,
        provenance=record,
        decomposition=decomposition,
        diversity=diversity,
    )
    return {
        "group": group,
        "written": _write_report(report, validation),
        "fit": None if fit is None else fit.goodness,
        "forecast": None if forecast is None else forecast.goodness,
        "validation": validation,
    }


def _write_report(report, validation: Validation) -> dict:
    """Write the report holding its folder's lock, first removing what a killed validation left half-written."""
    with locked(report, what="chain validate"):
        remove_stale_parts(report)
        return write_report(report, validation)


def read_runs(run_dirs, *, reference=None, real=None, warn: Callable[[str], None]) -> list[Run]:
    """The runs of ``run_dirs`` that have a finished iteration; ``warn`` hears of what is left out.

    Examples
    --------
    >>> read_runs(["/nonexistent"], warn=print)
    Traceback (most recent call last):
    ...
    qtm.errors.RunDirectoryError: run directory '/nonexistent' does not exist; give the folder that `chain run` wrote
    """
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
        raise ValidateError("no run directory has a finished iteration; wait for `chain run` to finish one")
    if len({run.name for run in runs}) < len(runs):
        raise ValidateError("two run directories have the same name; give runs with distinct folder names")
    for run in runs:
        for what, images in (
            ("real-data folder", run.real),
            *((f"reference folder ({kind})", images) for kind, images in run.reference.items()),
        ):
            if images is not None and not images.files:
                raise ValidateError(
                    f"the {what} {str(images.path)!r} has no images (png, jpg, webp); give a folder of images"
                )
    differ = [
        f"{key}s {', '.join(sorted(values))}"
        for key in ("data", "backend")
        if len(values := {str(run.params.get(key)) for run in runs}) > 1
    ]
    if differ:
        warn(
            f"the runs were made with different {' and '.join(differ)}; their statistics are compared "
            "and fitted together as if they were one setup"
        )
    return runs


def _default_group(runs: list[Run], captions: list[str], warn) -> str:
    """``caption`` with several captions, unless some iteration has too few images of one caption."""
    if len(captions) <= 1:
        return "none"
    smallest = min(
        (min(Counter(images.captions).values()), run.name, index)
        for run in runs
        for index, images in run.iterations.items()
    )
    if smallest[0] < MIN_GROUP_SIZE:
        warn(
            f"{smallest[1]} iteration {smallest[2]} has a caption with only {smallest[0]} image(s); "
            f"traits are pooled over captions (--group none), since per-caption statistics need at least "
            f"{MIN_GROUP_SIZE} images per caption"
        )
        return "none"
    return "caption"


def embed_runs(runs: list[Run], model: Embedder, *, warn, progress=None) -> dict:
    """Embeddings of every image set, keyed by (run name, population, iteration); -1 for non-iterations.

    ``progress(done, total, what)`` follows the images embedded (see :func:`validate_runs`).
    """
    jobs = []
    for run in runs:
        for index, images in sorted(run.iterations.items()):
            jobs.append(((run.name, "generated", index), images))
        for kind, images in run.reference.items():
            jobs.append(((run.name, f"reference_{kind}", -1), images))
        if run.real is not None:
            jobs.append(((run.name, "real", -1), run.real))
    total = sum(len(images) for _, images in jobs)
    done = 0
    out = {}
    sizes = set()
    for key, images in jobs:
        what = f"{model.name}: {key[0]} {key[1]} {key[2] if key[2] >= 0 else ''}".strip()

        def advance(n, what=what):
            nonlocal done
            done += n
            if progress is not None:
                progress(done, total, what)

        advance(0)
        embedded = embed_image_set(images, model, cache_dir=_cache_dir(images), key=images.path.name, advance=advance)
        folder_sizes = set(embedded.sizes)
        if len(folder_sizes) > 1:
            warn(
                f"{images.path}: mixed image sizes {sorted(folder_sizes)[:4]}; each is embedded as is "
                f"(the neural embedders resize; image statistics such as sharpness depend on the size)"
            )
        sizes |= folder_sizes
        out[key] = embedded
    if len(sizes) > 1 and not any(len(set(d.sizes)) > 1 for d in out.values()):
        warn(f"image sizes differ between folders: {sorted(sizes)[:4]}; size-dependent statistics may shift")
    return out


def _statistics(
    runs, embedded, trait_axes, reference_features, reference_name, model, bootstrap, seed, *, grouped
) -> pd.DataFrame:
    """Statistics of every population with bootstrap intervals; per caption too when ``grouped``."""
    reference_std = trait_axes.standardise(reference_features)
    rows = []
    for run_index, run in enumerate(runs):
        for population, key, data in _populations(run, embedded):
            # Seeded by position (run, population), not by order of work.
            rng = np.random.default_rng(derive_seed(seed, BOOTSTRAP_TAG, run_index, key + 1))
            standardised = trait_axes.standardise(data.features)
            projected = trait_axes.project_standardised(standardised)
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
    return pd.DataFrame(rows)


def _diversity(runs, embedded, trait_axes, reference_features, reference_captions, *, bootstrap, seed, grouped):
    """Precision, recall, density, coverage and Vendi of every generated set against the reference population.

    Features are the embedder's, standardised as the trait axes standardise them (so that no
    feature's scale decides the neighbourhoods); per caption when ``grouped``. A set whose
    captions have too few images for the kNN balls gets a note instead of rows.
    """
    real = trait_axes.standardise(reference_features)
    rows, notes = [], []
    for run_index, run in enumerate(runs):
        for index, images in sorted(run.iterations.items()):
            generated = trait_axes.standardise(embedded[(run.name, "generated", index)].features)
            try:
                found = diversity_metrics(
                    real, generated, real_captions=list(reference_captions) if grouped else None,
                    generated_captions=list(images.captions) if grouped else None, bootstrap=bootstrap,
                    random_state=derive_seed(seed, DIVERSITY_TAG, run_index, index),
                )
            except QTMError as error:
                notes.append(f"{run.name} iteration {index}: no diversity metrics ({error})")
                continue
            rows += [{**_run_columns(run), "iteration": index, **row} for row in found]
    return (pd.DataFrame(rows) if rows else None), notes


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
                for name in ("mean", "var", "kurtosis")
            }
            out.append(
                Trajectory(
                    run=run.name,
                    setting=f"cfg={columns['cfg']:g} {columns['schedule']}",
                    cfg=columns["cfg"],
                    iterations=table["mean"].index.to_numpy(),
                    mean=table["mean"].to_numpy(),
                    var=table["var"].to_numpy(),
                    kurtosis=table["kurtosis"].to_numpy(),
                    population=int(rows["n_images"].min()),
                    schedule=columns["schedule"],
                    sampler=str(run.params.get("sampler", "ddim")),
                    steps=int(run.params.get("steps", 50) or 50),
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


def _fit(trajectories, base, forecast_from, warn):
    """The one-step-ahead fit on all iterations, and the forecast from ``forecast_from`` when asked for."""
    notes = []
    if any(not np.isfinite(t.cfg) for t in trajectories):
        notes.append("some run.json has no cfg; its w_eff is reported without a CFG scale")
    fit = predicted = None
    try:
        fit = fit_theory(trajectories, base=base)
    except ValidateError as error:
        warn(f"fit skipped: {error}")
        notes.append(f"fit skipped: {error}")
    if forecast_from is not None and fit is not None:
        try:
            predicted = forecast(trajectories, base=base, forecast_from=forecast_from)
        except ValidateError as error:
            warn(f"forecast skipped: {error}")
            notes.append(f"forecast skipped: {error}")
    return fit, predicted, notes


def _decomposition(runs, embedded, model, trait_axes, *, bootstrap, seed) -> tuple[pd.DataFrame, list]:
    """The decomposition table of every run with CFG-1 samples (and finetuning-seed noise where replicates exist)."""
    notes, tables = [], []
    rng = np.random.default_rng(derive_seed(seed, DECOMPOSITION_TAG))

    def traits(key):
        data = embedded.get(key)
        return None if data is None else trait_axes.project(data.features)

    def trait_set(images, features):
        return TraitSet(trait_axes.project(features), images.captions)

    for run in runs:
        samples = {t: read_samples(run.path, t) for t in run.iterations}
        sets = {}
        for t, found in samples.items():
            for kind, images in found.items():
                data = embed_image_set(images, model, cache_dir=_cache_dir(images), key=images.path.name)
                sets[(kind, t)] = trait_set(images, data.features)
        guided = {t: TraitSet(traits((run.name, "generated", t)), run.iterations[t].captions) for t in run.iterations}
        at_cfg1 = sampled_at_cfg1(run.params)
        cfg1 = guided if at_cfg1 else {t: s for (kind, t), s in sets.items() if kind == "cfg1"}
        if not cfg1:
            notes.append(f"{run.name}: no CFG-1 samples of its models; not decomposed (`chain validate --decompose`)")
            continue

        def population(name, run=run):
            data = embedded.get((run.name, name, -1))
            return None if data is None else trait_set(_image_set(run, name, -1), data.features)

        traits_of_run = RunTraits(
            run=run.name,
            cfg=run.cfg,
            guided=guided,
            cfg1=cfg1,
            uncond={t: s for (kind, t), s in sets.items() if kind == "uncond"},
            data=population("real"),
            base_cond=population("reference_cond"),
            base_uncond=population("reference_uncond"),
            finetune=str(run.params.get("finetune", "base")),
            real_fraction=float(run.params.get("real_fraction", 0.0) or 0.0),
            guided_is_cfg1=at_cfg1,
        )
        try:
            tables.append(decompose([traits_of_run], n_boot=bootstrap, random_state=rng))
        except ValidateError as error:
            notes.append(f"{run.name}: not decomposed: {error}")
            continue
        for t in run.iterations:
            replicates = [s for (kind, u), s in sets.items() if u == t and kind.startswith(REPLICATE_PREFIX)]
            if replicates and t in cfg1:
                table = finetune_noise(
                    [cfg1[t], *replicates], run=run.name, iteration=t, n_boot=bootstrap, random_state=rng
                )
                tables.append(table.assign(cfg=run.cfg))
    if not tables:
        return None, notes
    return pd.concat(tables, ignore_index=True), notes
