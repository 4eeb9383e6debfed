"""What a validation is asked to do: :class:`ValidateParameters`, the options of ``chain validate``, checked once.

:meth:`ValidateParameters.check` is the edge, as :meth:`chain.run_parameters.RunParameters.resolve` is for
``chain run``: it checks every value, every combination and every path before any work (no image generated or
embedded for a request that cannot be met) and returns the parameters with their defaults filled in.
:func:`validate.pipeline.validate_runs` calls it first; the command line calls it before it generates anything
(the generation counts ``decompose_per_caption``, ``finetune_noise`` and ``selection_per_caption`` are the
command's). The torch device is probed by the command (it needs torch, which this package does not import).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from qtm.io import check_output_dir
from qtm.rundir import iteration_folders
from qtm.validation import check_int
from validate.calibration import fitted_states
from validate.errors import ValidateError
from validate.fit_stage import check_calibration, check_held_out
from validate.report_folder import check_report_folder
from validate.runs import GROUPS
from validate.selection import parse_cfgs
from validate.state_filter import DEFAULT_STATES, check_states
from validate.transition import GUIDANCE_MODELS

#: Upper bounds of the counts. Each refinetune of --finetune-noise is a finetuning of its own (a CPU-hour for the sd
#: backend); the per-caption counts multiply by the captions, the iterations and (for the curve) the CFG values;
#: bootstrap intervals at 95 % are settled long before 10,000 resamples.
MAX_FINETUNE_NOISE = 100
MAX_PER_CAPTION = 1000
MAX_BOOTSTRAP = 10_000
#: Images per caption a per-caption variance needs (the selection curve's and the decomposition's counts).
MIN_PER_CAPTION = 3


@dataclasses.dataclass(frozen=True)
class ValidateParameters:
    """The options of a validation (``chain validate``); :meth:`check` refuses a bad one in one line.

    ``None`` means the default: ``guidance`` per-setting (shared with ``predict``), ``states`` "filtered" (the
    calibration's fit's with ``calibration``: :mod:`validate.state_filter`), ``group`` from the
    runs' captions, no forecast, no selection curve, no generation (``decompose_per_caption``),
    ``selection_per_caption`` a third of ``decompose_per_caption`` (at least 3). ``conformal`` (only with
    ``predict``) calibrates the prediction's intervals (:mod:`validate.conformal`); ``predict_from`` (only with
    ``predict``) is the first predicted iteration. ``plots=False`` writes the
    report without its plots (every value is in its tables). ``calibration`` (only with ``forecast_from``: a
    path, ``"shipped"`` or a :class:`qtm.calibration.Calibration`) gives the forecast its parameters, checked
    against the runs and ``embedder`` (:func:`validate.fit_stage.check_calibration`); checked, it is the
    Calibration.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> ValidateParameters(report=folder / "report").check([folder]).guidance
    'per-setting'
    >>> ValidateParameters(report=folder / "report", finetune_noise=1000000).check([folder])
    Traceback (most recent call last):
    ...
    validate.errors.ValidateError: --finetune-noise must be <= 100, got 1000000
    """

    report: Path
    axes: int = 3
    forecast_from: int | None = None
    bootstrap: int = 200
    seed: int = 0
    guidance: str | None = None
    states: str | None = None
    group: str | None = None
    predict: tuple = ()
    predict_from: int = 1
    conformal: bool = False
    selection_curve: object = None
    real: Path | None = None
    reference: Path | None = None
    batch_size: int = 16
    decompose: bool = True
    decompose_per_caption: int | None = None
    finetune_noise: int = 0
    selection_per_caption: int | None = None
    plots: bool = True
    calibration: object = None
    embedder: str | None = None

    def check(self, run_dirs) -> ValidateParameters:
        """Check every option against the others and the run directories ``run_dirs``; fill in the defaults.

        Raises
        ------
        qtm.errors.QTMError
            One line naming the option (a :class:`validate.errors.ValidateError` or qtm's check).
        """
        if not run_dirs:
            raise ValidateError("give at least one run directory")
        counts = {
            "axes": check_int(self.axes, "--axes", minimum=1),
            "bootstrap": _bounded(self.bootstrap, "--bootstrap", minimum=0, maximum=MAX_BOOTSTRAP),
            "seed": check_int(self.seed, "--seed", minimum=0),
            "batch_size": check_int(self.batch_size, "--batch-size", minimum=1),
            "finetune_noise": _bounded(self.finetune_noise, "--finetune-noise", minimum=0,
                                       maximum=MAX_FINETUNE_NOISE),
        }
        per_caption = self.decompose_per_caption
        if per_caption is not None:
            per_caption = _bounded(per_caption, "--decompose-per-caption", minimum=MIN_PER_CAPTION,
                                   maximum=MAX_PER_CAPTION)
        paired = self.selection_per_caption
        if paired is not None:
            paired = _bounded(paired, "--selection-per-caption", minimum=MIN_PER_CAPTION,
                              maximum=per_caption or MAX_PER_CAPTION,
                              why=" (the --decompose-per-caption CFG-1 samples it pairs with)" if per_caption else "")
        elif per_caption is not None:
            paired = max(MIN_PER_CAPTION, per_caption // 3)
        cfgs = None if self.selection_curve is None else parse_cfgs(self.selection_curve)
        if not self.decompose:
            if cfgs is not None:
                raise ValidateError("--selection-curve pairs its samples with the decomposition's; leave out "
                                    "--no-decompose")
            if counts["finetune_noise"]:
                raise ValidateError("--finetune-noise is part of the decomposition; leave out --no-decompose")
        guidance = self.guidance if self.guidance is not None else ("shared" if self.predict else "per-setting")
        if guidance not in GUIDANCE_MODELS:
            raise ValidateError(f"--guidance {guidance!r} is not one of: {', '.join(GUIDANCE_MODELS)}")
        if self.states is not None:
            check_states(self.states)
        if self.group is not None and self.group not in GROUPS:
            raise ValidateError(f"--group {self.group!r} is not one of: {', '.join(GROUPS)}")
        forecast_from = self.forecast_from
        if forecast_from is not None:
            forecast_from = _check_forecast_from(forecast_from, run_dirs)
        calibration, fitted = self.calibration, DEFAULT_STATES
        if calibration is not None:
            if forecast_from is None:
                raise ValidateError("--calibration gives the forecast its model; add --forecast-from K")
            calibration = check_calibration(calibration, run_dirs, embedder=self.embedder)
            fitted = fitted_states(calibration)
            if self.states not in (None, fitted):
                raise ValidateError(f"--states {self.states}: the calibration was fitted with {fitted} states, and its "
                                    "forecast starts alike; leave out --states")
        states = self.states or fitted
        check_report_folder(self.report)
        check_output_dir(self.report, flag="--report")
        for flag, folder in (("--real", self.real), ("--reference", self.reference)):
            if folder is not None and not Path(folder).is_dir():
                what = "is not a folder" if Path(folder).exists() else "does not exist"
                raise ValidateError(f"{flag} {str(folder)!r} {what}; give a folder of images")
        predict_from = check_int(self.predict_from, "--predict-from", minimum=1)
        if self.predict:
            check_held_out(run_dirs, list(self.predict), predict_from=predict_from)
        elif self.conformal or predict_from != 1:
            flag = "--conformal calibrates the intervals" if self.conformal else "--predict-from starts the prediction"
            raise ValidateError(f"{flag} of --predict; add --predict HELD_OUT_RUNS")
        return dataclasses.replace(
            self, **counts, guidance=guidance, states=states, forecast_from=forecast_from, selection_curve=cfgs,
            decompose_per_caption=per_caption, selection_per_caption=paired, predict=tuple(self.predict),
            predict_from=predict_from, calibration=calibration,
            plots=bool(self.plots),
        )


def _bounded(value, flag: str, *, minimum: int, maximum: int, why: str = "") -> int:
    """``value`` as a whole number from ``minimum`` to ``maximum``, else a one-line error naming ``flag``."""
    value = check_int(value, flag, minimum=minimum)
    if value > maximum:
        raise ValidateError(f"{flag} must be <= {maximum}{why}, got {value}")
    return value


def _check_forecast_from(forecast_from, run_dirs) -> int:
    """``--forecast-from K``: the fit takes iterations < K and the forecast the rest, so 1 <= K <= a run's last.

    Counted from the iteration folders, finished or not (cheap; an unfinished one is the forecast's note).
    """
    forecast_from = check_int(forecast_from, "--forecast-from", minimum=1)
    last = max((max(iteration_folders(path), default=-1) for path in map(Path, run_dirs) if path.is_dir()),
               default=None)
    if last is None:  # no run directory exists: reading them says which
        return forecast_from
    if forecast_from > last:
        if last < 1:
            raise ValidateError(f"--forecast-from {forecast_from}: the runs have no iteration after 0 to forecast")
        raise ValidateError(f"--forecast-from {forecast_from}: the runs' last iteration is {last}; give 1 to {last} "
                            "(the fit takes the iterations before it, the forecast the rest)")
    return forecast_from
