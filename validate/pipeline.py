"""The stages of ``chain validate``: read runs, features, statistics, fit, forecast, decomposition, diversity; then
the report.

Pipeline: every option checked first (:class:`validate.parameters.ValidateParameters`) → read the run
directories (:mod:`validate.runs`) → the features stage
(:mod:`validate.features`: every image set embedded, the trait axes fixed on the reference
population, every population standardised and projected, the reference's diversity geometry; all
once) → statistics per population with bootstrap intervals → the one-step-ahead fit of the
theory's transition and the forecast (:mod:`validate.fit_stage`) → the per-iteration
decomposition into selection and response from ``RUN/iter-NNN/samples``
(:mod:`validate.decomposition`) → precision, recall, density, coverage and Vendi of every
generated set (:mod:`validate.diversity`) → tables, plots and ``report.md``
(:func:`validate.report.write_report`, replacing an older report of the folder). :func:`validate_runs` runs it
all; the command line (:mod:`commands.chain_validate`) only parses options and draws progress.

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from qtm.errors import QTMError
from qtm.io import locked, remove_stale_parts
from qtm.provenance import provenance
from qtm.random import derive_seed
from qtm.rundir import REPLICATE_PREFIX, Run, sampled_at_cfg1
from validate.axes import TraitAxes
from validate.decomposition import RunTraits, TraitSet, decompose, finetune_noise
from validate.diversity import compare_with_reference
from validate.embedder import Embedder
from validate.embedders import get_embedder
from validate.errors import ValidateError
from validate.features import Features, features_stage
from validate.fit_stage import SETUP_KEYS, fit_stage, predict_stage
from validate.optimiser import FitResult
from validate.parameters import ValidateParameters
from validate.prediction import Prediction
from validate.report import write_report
from validate.report_folder import check_report_folder, remove_report
from validate.runs import default_group, read_runs, run_columns
from validate.selection import SelectionCurve, selection_stage
from validate.selection_fit import fit_selection
from validate.statistics import ALL_CAPTIONS, bootstrap_statistics, grouped_statistics

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
    selection: SelectionCurve | None = None
    prediction: Prediction | None = None
    plots: bool = True


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
    selection_curve=None,
    predict=None,
    predict_from: int = 1,
    conformal: bool = False,
    guidance: str | None = None,
    states: str | None = None,
    calibration=None,
    plots: bool = True,
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
        Output folder (created): empty, or holding an older report, which the new one replaces (a folder holding
        other files is refused, :func:`validate.report_folder.check_report_folder`).
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
    selection_curve : str or sequence of float, optional
        The CFG values of the selection curve (:mod:`validate.selection`; ``chain validate --selection-curve``
        generates its samples into ``RUN/selection``); None: no curve.
    guidance : {"per-setting", "shared"}, optional
        The fit's and the forecast's model of selection (:class:`validate.transition.TransitionModel`): a free
        ``w_eff`` per CFG setting, or one model for every setting. Default: per-setting, and shared with
        ``predict`` (whose prediction then reuses the fit; it always uses the shared model).
    states : {"measured", "filtered"}, optional
        Each transition's source state as measured, or filtered by the earlier transitions
        (:mod:`validate.state_filter`), for the fit, the forecast and the prediction. Default: filtered (with
        ``calibration``, the state its fit used).
    predict : list of path-like, optional
        Held-out run directories: the shared model (one for every setting) is fitted on ``run_dirs`` and
        predicts each held-out run's iterations from its iteration 0 and its settings
        (:mod:`validate.prediction`); the report gains the prediction, its skill against baselines and the
        fit's ``calibration.json`` (``qtm simulate --calibration``). Held-out runs are measured, never fitted,
        decomposed or prepared.
    predict_from : int
        With ``predict``: the first predicted iteration K; each held-out run is predicted from its measured
        iteration K - 1 (default 1: from iteration 0), its earlier iterations giving the trend baseline.
    calibration : path-like, "shipped" or qtm.calibration.Calibration, optional
        With ``forecast_from``: the forecast's parameters and process noise are this calibration's (a shared fit
        on other runs of the same data set and embedder, ``calibration.json`` of an earlier validation, or the
        package's digits calibration) instead of a fit on iterations ``< forecast_from``.
    conformal : bool
        With ``predict``: also calibrate its intervals out of sample (:mod:`validate.conformal`; one more fit per
        training setting).
    plots : bool
        Draw the report's plots (PNG). Without them the report holds the same tables and text and takes a sixth
        of the time to write (12 digit study runs: 1.2-1.5 s instead of 8.3-8.5 s); for scripted sweeps and
        folds whose numbers are read, not looked at.
    group : {"caption", "none"}, optional
        ``caption``: traits within each caption and a joint per-caption fit; ``none``:
        pooled over captions. Default: ``caption`` when the runs have several captions and
        every caption at least 3 images per iteration (else ``none``, with a warning).
    prepare : callable, optional
        ``prepare(run_dir)`` is called for every run directory once the options are
        checked and before it is read (``chain validate --make-reference`` generates the
        base model's missing reference folders here).
    progress : callable, optional
        ``progress(done, total, what)`` while embedding (images embedded so far, of all, and which image set is
        being embedded) and while ``conformal`` fits (training settings predicted so far, of all).
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
    checked = ValidateParameters(
        report=report, axes=axes, forecast_from=forecast_from, bootstrap=bootstrap, seed=seed, guidance=guidance,
        states=states, group=group, predict=tuple(predict or ()), predict_from=predict_from, conformal=conformal,
        selection_curve=selection_curve, real=real, reference=reference,
        batch_size=(embedder_options or {}).get("batch_size", 16), decompose=decompose_runs, plots=plots,
        calibration=calibration, embedder=embedder,
    ).check(run_dirs)
    axes, forecast_from, bootstrap, guidance, cfgs = (checked.axes, checked.forecast_from, checked.bootstrap,
                                                      checked.guidance, checked.selection_curve)
    held_out_dirs = list(checked.predict)
    model = get_embedder(embedder, **(embedder_options or {}))
    if prepare is not None:
        for path in run_dirs:
            prepare(path)
    every_run = read_runs([*run_dirs, *held_out_dirs], reference=reference, real=real, warn=warn)
    held_out_names = {Path(path).name for path in held_out_dirs}
    runs = [run for run in every_run if run.name not in held_out_names]
    held_out = [run for run in every_run if run.name in held_out_names]
    if held_out_dirs and not runs:
        raise ValidateError("--predict needs training runs with a finished iteration; none has one")
    captions = sorted({c for run in runs for images in run.iterations.values() for c in images.captions})
    group = group if group is not None else default_group(runs, captions, warn)
    grouped = group == "caption"

    features = features_stage(
        every_run, model, axes=axes, grouped=grouped, samples=decompose_runs, warn=warn, progress=progress
    )
    reference_name = features.reference_name
    statistics = _statistics(every_run, features, model, bootstrap, seed, grouped=grouped)
    record = provenance(
        {
            "runs": [str(r.path) for r in runs],
            **({"predict": [str(r.path) for r in held_out], "predict_from": checked.predict_from,
                "conformal": checked.conformal} if held_out else {}),
            "embedder": model.name,
            "embedder_settings": model.settings(),
            "axes": axes,
            "forecast_from": forecast_from,
            **({} if checked.calibration is None else {"calibration": checked.calibration.source or "in memory"}),
            "guidance": guidance,
            "states": checked.states,
            # What a calibration.json of this validation was fitted on: --calibration refuses runs of another setup.
            "setup": {key: runs[0].params.get(key) for key in SETUP_KEYS},
            "bootstrap": bootstrap,
            "reference": reference_name,
            "group": group,
            "decompose": decompose_runs,
            "plots": checked.plots,
            **({} if cfgs is None else {"selection_curve": list(cfgs)}),
        },
        seed=seed,
        software="chain validate",
    )
    fit, forecast, fit_notes = fit_stage(runs, statistics, grouped=grouped, forecast_from=forecast_from, warn=warn,
                                         guidance=guidance, calibration=checked.calibration, states=checked.states)
    prediction = None
    if held_out:
        prediction, prediction_notes = predict_stage(runs, held_out, statistics, grouped=grouped, warn=warn, fit=fit,
                                                     conformal=checked.conformal, progress=progress,
                                                     predict_from=checked.predict_from, states=checked.states)
        fit_notes += prediction_notes
    decomposition, decomposition_notes = (
        _decomposition(runs, features, bootstrap=bootstrap, seed=seed) if decompose_runs else (None, [])
    )
    diversity, diversity_notes = _diversity(runs, features, bootstrap=bootstrap, seed=seed, grouped=grouped)
    selection = None
    if cfgs is not None:
        selection = fit_selection(selection_stage(runs, features, model, cfgs=cfgs, n_boot=bootstrap, seed=seed,
                                                  progress=progress))
    validation = Validation(
        runs=runs,
        embedder=model,
        group=group,
        captions=captions,
        reference_name=reference_name,
        trait_axes=features.trait_axes,
        statistics=statistics,
        fit=fit,
        forecast=forecast,
        notes=fit_notes + decomposition_notes + diversity_notes + (selection.notes if selection else []),
        forecast_from=forecast_from,
        provenance=record,
        decomposition=decomposition,
        diversity=diversity,
        selection=selection,
        prediction=prediction,
        plots=checked.plots,
    )
    return {
        "group": group,
        "written": _write_report(report, validation),
        "fit": None if fit is None else fit.goodness,
        "forecast": None if forecast is None else forecast.goodness,
        "prediction": None if prediction is None else prediction.goodness,
        "validation": validation,
    }


def _write_report(report, validation: Validation) -> dict:
    """Write the report holding its folder's lock, first removing what a killed validation left half-written and
    the previous validation's files: an interrupted rerun leaves an unfinished report, never a mix of two."""
    with locked(report, what="chain validate"):
        remove_stale_parts(report)
        check_report_folder(report)  # again: the folder may have changed while the runs were measured
        remove_report(report)
        return write_report(report, validation)


def _statistics(runs: list[Run], features: Features, model, bootstrap, seed, *, grouped) -> pd.DataFrame:
    """Statistics of every population with bootstrap intervals; per caption too when ``grouped``."""
    rows = []
    for run_index, run in enumerate(runs):
        for population, key, data in features.of_run(run):
            # Seeded by position (run, population), not by order of work.
            rng = np.random.default_rng(derive_seed(seed, BOOTSTRAP_TAG, run_index, key + 1))
            found = [
                {"caption": ALL_CAPTIONS, "n_images": len(data.standardised), **row}
                for row in bootstrap_statistics(
                    data.projected, data.standardised, data.alignment, features.reference, n_boot=bootstrap,
                    random_state=rng,
                )
            ]
            # The unconditional branch has no caption: its pooled rows are already its p_u.
            if grouped and population != "reference_uncond":
                found += grouped_statistics(
                    data.projected,
                    data.standardised,
                    data.images.captions,
                    n_boot=bootstrap,
                    random_state=rng,
                    what=f"{run.name} {population}" + (f" iteration {key}" if key >= 0 else ""),
                )
            for row in found:
                rows.append(
                    {
                        **run_columns(run),
                        "population": population,
                        "iteration": key,
                        "embedder": model.name,
                        "reference": features.reference_name,
                        **row,
                    }
                )
    return pd.DataFrame(rows)


def _diversity(runs: list[Run], features: Features, *, bootstrap, seed, grouped):
    """Precision, recall, density, coverage and Vendi of every generated set against the reference population.

    Features are the embedder's, standardised as the trait axes standardise them (so that no
    feature's scale decides the neighbourhoods); per caption when ``grouped``. A set whose
    captions have too few images for the kNN balls gets a note instead of rows.
    """
    rows, notes = [], []
    for run_index, run in enumerate(runs):
        for index, images in sorted(run.iterations.items()):
            generated = features.populations[(run.name, "generated", index)].standardised
            if features.diversity is None:  # the reference's own captions refused it
                notes.append(f"{run.name} iteration {index}: no diversity metrics ({features.diversity_error})")
                continue
            try:
                found = compare_with_reference(
                    features.diversity, generated, captions=list(images.captions) if grouped else None,
                    bootstrap=bootstrap, random_state=derive_seed(seed, DIVERSITY_TAG, run_index, index),
                )
            except QTMError as error:
                notes.append(f"{run.name} iteration {index}: no diversity metrics ({error})")
                continue
            rows += [{**run_columns(run), "iteration": index, **row} for row in found]
    return (pd.DataFrame(rows) if rows else None), notes


def _decomposition(runs: list[Run], features: Features, *, bootstrap, seed) -> tuple[pd.DataFrame, list]:
    """The decomposition table of every run with CFG-1 samples (and finetuning-seed noise where replicates exist)."""
    notes, tables = [], []
    rng = np.random.default_rng(derive_seed(seed, DECOMPOSITION_TAG))

    def trait_set(data):
        return TraitSet(data.projected, data.images.captions)

    for run in runs:
        sets = {(kind, t): trait_set(data) for (name, kind, t), data in features.samples.items() if name == run.name}
        guided = {t: trait_set(features.populations[(run.name, "generated", t)]) for t in run.iterations}
        at_cfg1 = sampled_at_cfg1(run.params)
        cfg1 = guided if at_cfg1 else {t: s for (kind, t), s in sets.items() if kind == "cfg1"}
        if not cfg1:
            notes.append(f"{run.name}: no CFG-1 samples of its models; not decomposed (`chain validate --decompose`)")
            continue

        def population(name, run=run):
            data = features.populations.get((run.name, name, -1))
            return None if data is None else trait_set(data)

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
