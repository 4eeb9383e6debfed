"""The report parts of ``--predict``: the prediction's figure, its skill tables and the fit as a calibration file.

``prediction.csv`` (written by :func:`validate.report.write_report`) holds every predicted value (per held-out
run, caption, iteration, axis and quantity: the median, 90 % interval, coverage and CRPS); ``prediction.png``
draws each held-out run's run-level within-caption variance, measured, predicted (median, interval and
conformal interval where bounded) and the baselines';
``calibration.json`` is the shared fit for ``qtm simulate --calibration`` (:mod:`qtm.calibration`), with the
validation's provenance (also without ``--predict`` when the fit is the shared model, ``--guidance shared``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from qtm.calibration import write_calibration
from validate.plotting import axes_grid, legend_below, save_figure
from validate.skill import RUN_LEVEL

BASELINE_STYLE = {"persistence": ":", "trend": "x-", "nearest": "--", "interpolation": "-."}


def write_calibration_file(folder, validation) -> Path | None:
    """``calibration.json``: the shared fit on the training runs (the prediction's, else the main fit's when it is
    the shared model), with the validation's provenance; None where there is no shared fit."""
    prediction, fit = validation.prediction, validation.fit
    calibration = prediction.calibration if prediction is not None else getattr(fit, "calibration", None)
    if calibration is None:
        return None
    calibration = dataclasses.replace(
        calibration, provenance={**calibration.provenance, "validation": validation.provenance}
    )
    return write_calibration(Path(folder) / "calibration.json", calibration)


def plot_prediction(prediction, path: Path) -> Path:
    """Each held-out run's measured run-level variance, the theory's median and intervals and the baselines."""
    run_level = prediction.skill[prediction.skill["caption"] == RUN_LEVEL]
    runs = sorted(set(run_level["run"]))
    origin = prediction.goodness["predict_from"] - 1
    plot, panels = axes_grid(len(runs), "held-out runs: run-level within-caption variance, predicted from "
                             f"iteration {origin}")
    for panel, run in zip(panels, runs, strict=False):
        rows = run_level[run_level["run"] == run].sort_values("iteration")
        theory = rows[rows["method"] == "theory"]
        start = _start(prediction, run)
        iterations = np.concatenate([[origin], theory["iteration"]])
        measured = np.exp(np.concatenate([[start], theory["measured"]]))
        panel.plot(iterations, measured, "o-", color="black", label="measured")
        panel.fill_between(theory["iteration"], np.exp(theory["lo"]), np.exp(theory["hi"]), color="tab:blue",
                           alpha=0.25, label="theory 90 %")
        if "conformal_lo" in theory:
            finite = np.isfinite(theory["conformal_lo"]) & np.isfinite(theory["conformal_hi"])
            panel.fill_between(theory["iteration"][finite], np.exp(theory["conformal_lo"][finite]),
                               np.exp(theory["conformal_hi"][finite]), facecolor="none", edgecolor="tab:blue",
                               hatch="///", linewidth=0, label="conformal 90 %")
        panel.plot(theory["iteration"], np.exp(theory["predicted"]), color="tab:blue", label="theory median")
        for method, style in BASELINE_STYLE.items():
            points = rows[rows["method"] == method]
            if len(points):
                panel.plot(points["iteration"], np.exp(points["predicted"]), style, color="grey", label=method)
        panel.set_yscale("log")
        panel.set_title(run, fontsize=8)
        panel.set_xlabel("iteration")
    # One legend for the figure: the panels share their entries (a baseline missing from one panel shows in another).
    entries = {label: handle for panel in panels[: len(runs)]
               for handle, label in zip(*panel.get_legend_handles_labels(), strict=True)}
    legend_below(plot, list(entries.values()), list(entries), ncols=len(entries), fontsize=8)
    return save_figure(plot, path)


def _start(prediction, run: str) -> float:
    """ln of the held-out run's measured run-level variance where the prediction starts (its persistence)."""
    rows = prediction.skill
    first = rows[(rows["run"] == run) & (rows["caption"] == RUN_LEVEL) & (rows["method"] == "persistence")]
    return float(first["predicted"].iloc[0]) if len(first) else float("nan")


def skill_tables(validation) -> pd.DataFrame | None:
    """The skill rows of the forecast and of the prediction, one table with a ``task`` column; None: neither."""
    parts = [
        result.skill.assign(task=task)
        for task, result in (("forecast", validation.forecast), ("predict", validation.prediction))
        if result is not None and result.skill is not None
    ]
    return pd.concat(parts, ignore_index=True) if parts else None
