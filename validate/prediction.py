"""Predict held-out chains from a fit on other chains: ``chain validate TRAIN... --predict HELD_OUT...``.

The fit on the training runs is the one model for every setting
(:class:`validate.transition.TransitionModel` with ``guidance="shared"``): no parameter belongs
to a CFG setting, so the fitted vector applies to any held-out run. Each held-out run is
predicted from its measured iteration 0 and its run.json settings only (CFG, schedule, drop,
sampler, steps): the transition is iterated from iteration 0 with parameters drawn from the
fit's approximate posterior and process noise at every step (:func:`validate.forecast.simulate_runs`),
which gives a 90 % interval for every later iteration. None of a held-out run's later
iterations enters the fit. With ``predict_from=K`` (``--predict-from``) the held-out runs' iterations
``< K`` are seen and the prediction starts from the measured iteration ``K - 1``: a forecast of a chain
that has begun, with the fit on other chains (iterations ``< K`` of the held-out runs still do not enter
the fit).

The prediction is scored against baselines that see the same information
(:func:`prediction_baselines`): **persistence** of the held-out iteration ``K - 1``; the **nearest**
training setting's mean trajectory, shifted to start at it; the **interpolation** in CFG between the
training settings that bracket the held-out CFG (same schedule and drop), shifted the same way; and,
from ``K = 2`` on, the held-out run's own log-linear **trend** through iterations ``< K``.

With ``calibrate_intervals`` (``--conformal``) and two or more training settings the intervals are also
calibrated out of sample (:mod:`validate.conformal`): every training setting is predicted from a fit on the
others, and the held-out intervals are stretched until they would have covered ``level`` of those predictions'
values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from qtm.calibration import Calibration
from qtm.random import check_random_state
from validate.calibration import calibration_of
from validate.conformal import stretch_intervals
from validate.errors import ValidateError
from validate.forecast import FORECAST_DRAWS, FORECAST_LEVEL, parameter_draws, simulate_runs
from validate.optimiser import FitResult, fit_tables, optimise
from validate.skill import persistence_and_trend, series, skill_table, skill_verdict
from validate.transition import BaseMoments, Trajectory, TransitionModel, Transitions

BASELINES = ("persistence", "trend", "nearest", "interpolation")


@dataclass
class Prediction:
    """The shared-model fit on the training runs and its prediction of the held-out runs.

    ``rows``: per held-out run, caption, iteration (>= 1), axis and quantity, the draws' median,
    90 % interval, coverage and CRPS (with ``calibrate_intervals`` also the conformal interval and its
    coverage); ``summary``: per held-out run and iteration the run-level within-caption variance predicted and
    measured; ``skill``: :func:`validate.skill.skill_table` with the baselines of :data:`BASELINES`;
    ``goodness``: coverage, the skill verdict and the conformal calibration's summary.
    """

    fit: FitResult
    rows: pd.DataFrame
    summary: list
    skill: pd.DataFrame
    goodness: dict
    calibration: Calibration


def setting_key(trajectory: Trajectory) -> tuple[float, str, float]:
    """What decides a run's selection and inheritance in the shared model: (cfg, schedule, drop)."""
    return float(trajectory.cfg), trajectory.schedule, float(trajectory.drop)


def predict(
    train: list[Trajectory],
    held_out: list[Trajectory],
    *,
    base: BaseMoments,
    draws: int = FORECAST_DRAWS,
    level: float = FORECAST_LEVEL,
    random_state=0,
    fit: FitResult | None = None,
    calibrate_intervals: bool = False,
    progress=None,
    predict_from: int = 1,
    states: str = "measured",
) -> Prediction:
    """Fit the shared model on ``train`` and predict every iteration >= ``predict_from`` of the ``held_out`` runs.

    Parameters
    ----------
    train, held_out : list of Trajectory
        Per run and caption; the held-out runs need their iteration ``predict_from - 1``, and only their
        iterations before ``predict_from`` are used to predict.
    base : BaseMoments
        The base model's branches and the real data, common to both sets.
    draws : int
        Parameter draws (each one simulated chain per run).
    level : float
        Level of the prediction intervals.
    random_state : int or numpy.random.Generator
    fit : FitResult, optional
        The shared model already fitted on ``train`` (``fit_theory(train, base=base, guidance="shared")``): used
        instead of fitting it again.
    calibrate_intervals : bool
        Also give conformal intervals (:mod:`validate.conformal`), calibrated on every training setting
        predicted from a fit on the other ones (one more fit per training setting; needs two settings).
    progress : callable, optional
        ``progress(done, total, what)`` after each of the calibration's fits.
    predict_from : int
        The first predicted iteration K (>= 1): the prediction starts from the measured iteration K - 1.
    states : {"measured", "filtered"}
        The fit's source states (:mod:`validate.state_filter`; ``fit``'s own where it is given); filtered, the
        prediction starts from the held-out runs' filtered iteration K - 1.

    Returns
    -------
    Prediction

    Examples
    --------
    >>> base = BaseMoments(cond=(np.zeros(1), np.ones(1)), uncond=(np.zeros(1), np.full(1, 2.0)),
    ...                    data=(np.zeros(1), np.ones(1)))
    >>> def chain(run, cfg, start):
    ...     var = [start]
    ...     for _ in range(4):
    ...         var.append(np.exp(0.6 * np.log(var[-1]) - 0.1 * (cfg - 1)))
    ...     return Trajectory(run=run, setting=f"cfg={cfg}", cfg=cfg, iterations=np.arange(5), mean=np.zeros((5, 1)),
    ...                       var=np.array(var)[:, None], population=2000, sampler="tilt")
    >>> result = predict([chain("a", 1.0, 1.0), chain("b", 3.0, 0.8)], [chain("c", 2.0, 0.9)], base=base, draws=200,
    ...                  calibrate_intervals=True)
    >>> result.goodness["interval_calibration"]["run log_var"]  # 2 scores per iteration: too few for 90 %
    {'stretch': {'1': None, '2': None, '3': None, '4': None}, 'scores': 8, 'coverage': None}
    >>> sorted(set(result.skill["method"]))
    ['interpolation', 'nearest', 'persistence', 'theory']
    >>> [row["iteration"] for row in result.summary]
    [1, 2, 3, 4]
    """
    rng = check_random_state(random_state)
    start = predict_from - 1
    fit, rows, summary, theory = _theory_rows(train, held_out, base=base, draws=draws, level=level, rng=rng, fit=fit,
                                              start=start, states=states)
    skill = skill_table(theory, held_out, base=base,
                        baselines=prediction_baselines(train, held_out, base=base, start=start))
    calibration_note = {}
    if calibrate_intervals:
        scores = setting_scores(train, base=base, draws=draws, level=level, random_state=rng, progress=progress,
                                start=start, states=fit.posterior[0].states)
        if scores is not None:
            is_theory = skill["method"] == "theory"
            stretched, calibration_note = stretch_intervals(skill[is_theory], scores, level)
            skill = pd.concat([stretched, skill[~is_theory]]).sort_index()
            keys = ["run", "group", "iteration", "axis", "quantity"]
            conformal = stretched.rename(columns={"caption": "group"})
            rows = rows.merge(conformal[[*keys, "conformal_lo", "conformal_hi", "conformal_covered"]], how="left",
                              on=keys, validate="one_to_one")
    goodness = {
        "predict_level": level,
        "predict_from": predict_from,
        "predict_caption_coverage": float(rows["covered"].mean()),
        "predict_run_coverage": float(np.mean([s["covered"] for s in summary])),
        "training_runs": sorted({t.run for t in train}),
        "held_out_runs": sorted({t.run for t in held_out}),
        **skill_verdict(skill),
        **({"interval_calibration": calibration_note} if calibrate_intervals else {}),
    }
    calibration = fit.calibration if fit.calibration is not None else calibration_of(fit, train, base=base)
    return Prediction(fit=fit, rows=rows, summary=summary, skill=skill, goodness=goodness, calibration=calibration)


def _theory_rows(train, held_out, *, base, draws, level, rng, fit=None, start=0, states="measured"):
    """The shared fit on ``train`` (``fit`` when it is one) and its draws of the ``held_out`` runs from their
    iteration ``start``: (fit, caption-level rows, run-level summary, the theory rows of
    :func:`validate.skill.skill_table`)."""
    if not held_out:
        raise ValidateError("--predict: no held-out run has a finished iteration")
    for trajectory in held_out:
        if start not in trajectory.iterations:
            raise ValidateError(f"--predict: held-out run {trajectory.run} has no iteration {start} to predict from")
    if all(t.iterations.max() <= start for t in held_out):
        raise ValidateError(f"--predict: the held-out runs end at iteration {start}; nothing to predict")
    if fit is None or fit.posterior is None or fit.posterior[0].guidance != "shared":
        model, best = optimise(train, base, None, guidance="shared", states=states)
        fit = fit_tables(model, best, train)[0]
    model, x, covariance = fit.posterior
    target = TransitionModel(Transitions(held_out, base, None), guidance="shared", states=model.states)
    if target.names != model.names:  # e.g. one caption held out, several in training: no run-level noise term
        raise ValidateError("--predict: the held-out runs' captions differ from the training runs' (one caption "
                            "against several); predict runs of the same data set with the same --group")
    thetas = parameter_draws(model, x, covariance, draws=draws, random_state=rng)
    rows, summary, run_level = simulate_runs(target, thetas, base=base, start=start, level=level, random_state=rng,
                                             point=x)
    if not summary:
        raise ValidateError(f"--predict: no held-out run could be predicted (every caption needs iteration {start})")
    rows = pd.DataFrame(rows)
    theory = pd.concat([pd.DataFrame(run_level), rows.rename(columns={"group": "caption"})], ignore_index=True)
    return fit, rows, summary, theory[list(run_level[0])]


def setting_scores(train: list[Trajectory], *, base: BaseMoments, draws: int, level: float, random_state,
                   progress=None, start: int = 0, states: str = "measured") -> pd.DataFrame | None:
    """Every training setting predicted from its iteration ``start`` by a fit on the other training settings:
    their theory rows (as in :attr:`Prediction.skill`), the conformal calibration's scores; None with fewer than
    two settings. Only the theory's own draws are needed here, not the baselines, the skill table or the
    calibration file."""
    settings = sorted({setting_key(t) for t in train})
    if len(settings) < 2:
        return None
    rng = check_random_state(random_state)
    folds = []
    for done, setting in enumerate(settings):
        if progress is not None:
            cfg, schedule, drop = setting
            progress(done, len(settings), f"conformal calibration (CFG {cfg:g} {schedule} drop {drop:g})")
        others = [t for t in train if setting_key(t) != setting]
        these = [t for t in train if setting_key(t) == setting]
        try:
            folds.append(_theory_rows(others, these, base=base, draws=draws, level=level, rng=rng, start=start,
                                      states=states)[3])
        except ValidateError:  # e.g. this setting's runs end at iteration ``start``: nothing to score
            continue
    if progress is not None:
        progress(len(settings), len(settings), "conformal calibration")
    return pd.concat(folds, ignore_index=True) if folds else None


def prediction_baselines(train: list[Trajectory], held_out: list[Trajectory], *, base: BaseMoments, start: int = 0):
    """The baselines of ``--predict`` from iteration ``start`` for :func:`validate.skill.skill_table` (see the
    module's docstring).

    A training setting's trajectory is the mean over its runs of each iteration's change from iteration ``start``
    (same caption, axis and quantity); a baseline with no training setting to use gives NaN (left out). The trend
    needs two held-out iterations to draw its line through: from iteration 0 there is none.
    """
    by_setting: dict[tuple, dict[str, list[Trajectory]]] = {}
    for trajectory in train:
        by_setting.setdefault(setting_key(trajectory), {}).setdefault(trajectory.run, []).append(trajectory)
    held_key = {t.run: setting_key(t) for t in held_out}

    def change(setting, row):
        """The setting's mean change from iteration ``start`` at the row's iteration, over its runs (NaN: none)."""
        changes = []
        for members in by_setting[setting].values():
            try:
                iterations, values, _ = series(members, {**row, "run": members[0].run}, base=base)
            except StopIteration:  # this training run lacks the caption
                continue
            iterations = list(np.asarray(iterations, int))
            if start in iterations and row["iteration"] in iterations:
                changes.append(values[iterations.index(row["iteration"])] - values[iterations.index(start)])
        return float(np.mean(changes)) if changes else float("nan")

    def points(row, iterations, values):
        own = persistence_and_trend(iterations, values, forecast_from=start + 1, target=row["iteration"])
        origin = own["persistence"]
        cfg, schedule, drop = held_key[row["run"]]
        alike = [s for s in by_setting if s[1:] == (schedule, drop)]
        nearest = min(alike or list(by_setting), key=lambda s: (abs(s[0] - cfg), s[0]))
        below = [s for s in alike if s[0] <= cfg]
        above = [s for s in alike if s[0] >= cfg]
        interpolation = float("nan")
        if below and above:
            low, high = max(below), min(above)
            weight = 0.0 if high[0] == low[0] else (cfg - low[0]) / (high[0] - low[0])
            interpolation = origin + (1 - weight) * change(low, row) + weight * change(high, row)
        points = {"persistence": origin, "nearest": origin + change(nearest, row), "interpolation": interpolation}
        return {**points, "trend": own["trend"]} if start >= 1 else points

    return points
