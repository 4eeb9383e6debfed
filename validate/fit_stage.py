"""The fit stage: the statistics table's trajectories and base moments, the one-step fit and the forecast.

Each run (per caption when grouped) becomes a :class:`validate.transition.Trajectory` of its
generated sets' moments; the base model's branches and the real data give the
:class:`validate.transition.BaseMoments`; then :func:`validate.optimiser.fit_theory` fits all
iterations and :func:`validate.forecast.forecast` forecasts from ``--forecast-from``;
:func:`predict_stage` fits the shared model on the training runs and predicts the ``--predict`` runs
(:mod:`validate.prediction`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from qtm.calibration import Calibration, read_calibration, shipped_calibration
from qtm.rundir import Run, iteration_folder, iteration_status, read_parameters
from validate.calibration import calibration_of, check_shared_model
from validate.errors import ValidateError
from validate.forecast import forecast
from validate.optimiser import FitResult, fit_theory
from validate.prediction import Prediction, predict
from validate.runs import run_columns
from validate.statistics import ALL_CAPTIONS, WITHIN_CAPTIONS
from validate.transition import BaseMoments, Trajectory


def fit_stage(
    runs: list[Run], statistics: pd.DataFrame, *, grouped: bool, forecast_from: int | None, warn,
    guidance: str = "per-setting", calibration: Calibration | None = None, states: str = "measured",
) -> tuple[FitResult | None, FitResult | None, list[str]]:
    """The fit on all iterations and the forecast from ``forecast_from`` (None: none), with the notes on them.

    ``guidance`` and ``states``: :class:`validate.transition.TransitionModel`'s, for both; ``calibration``: the
    forecast's parameters, taken from it instead of fitted (:func:`validate.forecast.forecast`).
    """
    collapse_notes = []
    trajectories = _trajectories(runs, statistics, grouped=grouped, notes=collapse_notes)
    for note in collapse_notes:
        warn(note)
    base, base_notes = _base_moments(statistics, grouped=grouped, groups={t.group for t in trajectories})
    fit, predicted, fit_notes = _fit(trajectories, base, forecast_from, warn, guidance, calibration, states)
    return fit, predicted, collapse_notes + base_notes + fit_notes


def _trajectories(runs: list[Run], statistics: pd.DataFrame, *, grouped: bool, notes=None) -> list[Trajectory]:
    """One trajectory per run, or per run and caption when ``grouped``.

    A caption whose images are all identical at some iteration (no positive variance on an axis: a total collapse,
    whose ln var the model has no value for) is followed up to the iteration before; ``notes`` gains a line.
    """
    generated = statistics[statistics["population"] == "generated"]
    generated = generated[~generated["caption"].isin([WITHIN_CAPTIONS] + ([ALL_CAPTIONS] if grouped else []))]
    # One pivot of every run and caption at once (a pivot per run, caption and statistic cost a second).
    generated = generated[generated["statistic"].isin(("mean", "var", "kurtosis"))]
    wide = generated.pivot(index=["run", "caption", "iteration"], columns=["statistic", "axis"], values="value")
    sizes = generated.groupby(["run", "caption"])["n_images"].min()
    axes = generated.groupby(["run", "caption", "statistic"])["axis"].unique()
    out = []
    for run in runs:
        columns = run_columns(run)
        if run.name not in sizes.index.get_level_values("run"):
            continue
        for caption in sorted(sizes.loc[run.name].index):
            rows = wide.loc[(run.name, caption)]
            table = {name: rows[name][sorted(axes.loc[(run.name, caption, name)])]
                     for name in ("mean", "var", "kurtosis")}
            degenerate = ~(np.isfinite(table["var"].to_numpy()) & (table["var"].to_numpy() > 0)).all(axis=1)
            if degenerate.any():
                first = int(table["var"].index[np.argmax(degenerate)])
                if notes is not None:
                    notes.append(f"{run.name}{f', caption {caption!r}' if grouped else ''}: no positive trait variance "
                                 f"at iteration {first} (identical images: a total collapse, which ln var cannot "
                                 "follow); its later iterations are left out of the fit, the forecasts and the "
                                 "run-level scores")
                table = {name: values[values.index < first] for name, values in table.items()}
                if table["mean"].empty:
                    continue
            out.append(
                Trajectory(
                    run=run.name,
                    setting=f"cfg={columns['cfg']:g} {columns['schedule']}",
                    cfg=columns["cfg"],
                    iterations=table["mean"].index.to_numpy(),
                    mean=table["mean"].to_numpy(),
                    var=table["var"].to_numpy(),
                    kurtosis=table["kurtosis"].to_numpy(),
                    population=int(sizes.loc[(run.name, caption)]),
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


def _fit(trajectories, base, forecast_from, warn, guidance, calibration, states):
    """The one-step-ahead fit on all iterations, and the forecast from ``forecast_from`` when asked for."""
    notes = []
    if any(not np.isfinite(t.cfg) for t in trajectories):
        notes.append("some run.json has no cfg; its w_eff is reported without a CFG scale")
    fit = predicted = None
    try:
        fit = fit_theory(trajectories, base=base, guidance=guidance, states=states)
        if guidance == "shared":
            fit.calibration = calibration_of(fit, trajectories, base=base)
    except ValidateError as error:
        warn(f"fit skipped: {error}")
        notes.append(f"fit skipped: {error}")
    trained = set(calibration.provenance.get("training_runs", [])) if calibration is not None else set()
    shared_names = sorted({t.run for t in trajectories} & trained)
    if shared_names:
        note = (f"{', '.join(shared_names)}: named as one of the calibration's training runs; if it is that run, its "
                "forecast is in sample")
        warn(note)
        notes.append(note)
    # A calibrated forecast fits nothing, so it does not need the fit to have succeeded.
    if forecast_from is not None and (fit is not None or calibration is not None):
        try:
            predicted = forecast(trajectories, base=base, forecast_from=forecast_from, guidance=guidance,
                                 calibration=calibration, states=states)
        except ValidateError as error:
            warn(f"forecast skipped: {error}")
            notes.append(f"forecast skipped: {error}")
    return fit, predicted, notes


#: run.json settings that decide the base model and the data: a held-out run must share them with the training runs.
SETUP_KEYS = ("data", "backend", "preset", "model")


def check_held_out(train_dirs, held_out_dirs, *, predict_from: int = 1) -> None:
    """Refuse, before any work, ``--predict`` runs of another setup or without a finished iteration
    ``predict_from - 1`` (where the prediction starts).

    Raises
    ------
    ValidateError
        With one line naming the first problem.
    """
    train = {str(Path(p).resolve()) for p in train_dirs}
    setup = {key: read_parameters(train_dirs[0]).get(key) for key in SETUP_KEYS}
    for path in held_out_dirs:
        if str(Path(path).resolve()) in train:
            raise ValidateError(f"--predict {path}: the run is also a training run; hold out runs the fit never sees")
        params = read_parameters(path)
        differ = [key for key in SETUP_KEYS if params.get(key) != setup[key]]
        if differ:
            key = differ[0]
            raise ValidateError(
                f"--predict {path}: {key} {params.get(key)!r} differs from the training runs' {setup[key]!r}; "
                "predict runs of the same data set, backend and base model"
            )
        start = predict_from - 1
        if iteration_status(iteration_folder(path, start)) != "complete":
            raise ValidateError(f"--predict {path}: iteration {start} is not finished; a prediction starts from it"
                                + ("" if start == 0 else f" (--predict-from {predict_from})"))


#: ``--calibration``'s word for the calibration shipped in the package (the digits study's).
SHIPPED_CALIBRATION = "shipped"


def check_calibration(path, run_dirs, *, embedder: str | None) -> Calibration:
    """Read ``--calibration`` (a file, :data:`SHIPPED_CALIBRATION`, or a Calibration already read) and refuse it,
    before any work, for runs it was not fitted on: another embedder, or another data set, backend or base model
    than its training runs'.

    Raises
    ------
    qtm.errors.QTMError
        One line: the file's own problems (:func:`qtm.calibration.read_calibration`), a calibration the shared
        model cannot run (:func:`validate.calibration.check_shared_model`), one that does not record what it was
        fitted on (written before it did), or a mismatch.
    """
    if isinstance(path, Calibration):
        calibration, where = path, "the calibration"
    elif str(path) == SHIPPED_CALIBRATION:
        calibration, where = shipped_calibration(), "the shipped calibration"
    else:
        calibration, where = read_calibration(path, label="--calibration"), f"--calibration {str(path)!r}"
    check_shared_model(calibration, where=where)
    fitted = calibration.provenance.get("validation", {}).get("parameters", {})
    if "setup" not in fitted or "embedder" not in fitted:
        raise ValidateError(f"{where} does not record the embedder and the runs it was fitted on; write it again "
                            "with chain validate --guidance shared")
    if embedder is not None and fitted["embedder"] != embedder:
        raise ValidateError(f"{where} was fitted on {fitted['embedder']} traits, not {embedder}; validate with "
                            f"--embedder {fitted['embedder']}, or give a calibration fitted on {embedder} traits")
    for run_dir in run_dirs:
        params = read_parameters(run_dir)
        differ = [key for key in SETUP_KEYS if params.get(key) != fitted["setup"].get(key)]
        if differ:
            key = differ[0]
            raise ValidateError(f"{run_dir}: {key} {params.get(key)!r} differs from {where}'s runs' "
                                f"{fitted['setup'].get(key)!r}; forecast runs of the same data set, backend and base "
                                "model with it")
    return calibration


def predict_stage(
    train: list[Run], held_out: list[Run], statistics: pd.DataFrame, *, grouped: bool, warn,
    fit: FitResult | None = None, conformal: bool = False, progress=None, predict_from: int = 1,
    states: str = "measured",
) -> tuple[Prediction, list[str]]:
    """The shared model fitted on ``train`` and its prediction of ``held_out`` from their iteration
    ``predict_from - 1``; ``fit``: :func:`fit_stage`'s fit of the same runs, reused when it is the shared model;
    ``conformal``: also calibrate the intervals (:mod:`validate.conformal`), telling ``progress(done, total,
    what)`` after each of its fits. A caption followed only up to its total collapse is told to ``warn`` too, as
    :func:`fit_stage` does."""
    # The fit of the same runs holds their trajectories (building them again cost a quarter of the prediction).
    fitted = fit is not None and fit.posterior is not None
    collapse_notes = []
    trajectories = (fit.posterior[0].data.trajectories if fitted
                    else _trajectories(train, statistics, grouped=grouped, notes=collapse_notes))
    targets = _trajectories(held_out, statistics, grouped=grouped, notes=collapse_notes)
    for note in collapse_notes:
        warn(note)
    groups = {t.group for t in trajectories + targets}
    base, notes = _base_moments(statistics, grouped=grouped, groups=groups)
    notes = collapse_notes + notes
    prediction = predict(trajectories, targets, base=base, fit=fit, calibrate_intervals=conformal, progress=progress,
                         predict_from=predict_from, states=states)
    return prediction, notes
