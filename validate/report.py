"""The report folder of ``chain validate``: tables, plots and the one-page ``report.md``.

:func:`write_report` writes everything :func:`validate.pipeline.validate_runs` found;
the page's text is :mod:`validate.report_markdown`'s. Every file is written
atomically (:mod:`qtm.io`), so an interrupted report never leaves a half-written
file under its final name.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from qtm.io import atomic_path, write_json, write_table
from validate.plotting import axes_grid, legend_below, panel_grid, save_figure
from validate.report_markdown import markdown_report
from validate.report_prediction import plot_prediction, skill_tables, write_calibration_file
from validate.selection import STATISTICS, predicted_selection
from validate.statistics import ALL_CAPTIONS, WITHIN_CAPTIONS

#: Trait axes drawn in the trajectory plots (the tables hold all of them).
PLOTTED_AXES = 3
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


def write_report(folder, validation) -> dict:
    """Write the tables, ``fit.json``, the plots (unless ``validation.plots`` is False) and ``report.md`` of a
    validation into ``folder``.

    Parameters
    ----------
    folder : path-like
        The report folder (created; every file in it is replaced atomically).
    validation : validate.pipeline.Validation
        What was measured and fitted.

    Returns
    -------
    dict
        The paths written, by what they hold (``statistics``, ``parameters``, ``report``, ...).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    statistics, fit, forecast = validation.statistics, validation.fit, validation.forecast
    record = validation.provenance
    written = {
        "statistics": [
            write_table(statistics, folder / "statistics.csv", provenance=record),
            write_table(statistics, folder / "statistics.parquet", provenance=record),
        ]
    }
    if fit is not None:
        written["parameters"] = write_table(fit.parameters, folder / "parameters.csv", provenance=record)
        written["predictions"] = write_table(fit.predictions, folder / "predicted_vs_measured.csv", provenance=record)
    if forecast is not None:
        written["forecast"] = write_table(forecast.predictions, folder / "forecast.csv", provenance=record)
    if validation.prediction is not None:
        written["prediction"] = write_table(validation.prediction.rows, folder / "prediction.csv", provenance=record)
    calibration = write_calibration_file(folder, validation)
    if calibration is not None:
        written["calibration"] = calibration
    skill = skill_tables(validation)
    if skill is not None:
        written["skill"] = write_table(skill, folder / "skill.csv", provenance=record)
    decomposition = validation.decomposition
    if decomposition is not None and len(decomposition):
        written["decomposition"] = write_table(decomposition, folder / "decomposition.csv", provenance=record)
    diversity = validation.diversity
    if diversity is not None and len(diversity):
        written["diversity"] = write_table(diversity, folder / "diversity.csv", provenance=record)
    selection = validation.selection
    if selection is not None and len(selection.table):
        written["selection_curve"] = write_table(selection.table, folder / "selection_curve.csv", provenance=record)
    write_json(folder / "fit.json", _json_safe(fit_summary(validation)))
    written["fit_json"] = folder / "fit.json"
    if validation.plots:
        written.update(_plots(folder, validation))
    written["grids"] = [sample_grid(run.iterations, path=folder / f"samples_{run.name}.png") for run in validation.runs]
    with atomic_path(folder / "report.md") as tmp:
        tmp.write_text(markdown_report(validation))
    written["report"] = folder / "report.md"
    return written


def _plots(folder: Path, validation) -> dict:
    """Every plot of the report, by name: of the statistics, the fit, the forecast and whatever else was made.

    The trajectories show the runs the theory was fitted to; the held-out runs of ``--predict`` are drawn in the
    prediction's own figure (a panel costs about 0.2 s to draw).
    """
    statistics, fit, forecast, embedder = (validation.statistics, validation.fit, validation.forecast,
                                           validation.embedder.name)
    predictions = fit.predictions if fit is not None else None
    if validation.prediction is not None:
        statistics = statistics[~statistics["run"].isin(validation.prediction.goodness["held_out_runs"])]
    written = {
        f"{quantity}_plot": plot_trajectories(
            statistics, predictions, quantity=quantity, path=folder / f"{quantity}.png", embedder=embedder
        )
        for quantity in ("var", "mean")
    }
    if fit is not None:
        written["strength_plot"] = plot_strength(fit.parameters, path=folder / "strength.png")
    if validation.prediction is not None:
        written["prediction_plot"] = plot_prediction(validation.prediction, folder / "prediction.png")
    if validation.decomposition is not None and len(validation.decomposition):
        written["breeders_plot"] = plot_breeders(validation.decomposition, path=folder / "breeders.png")
    if validation.diversity is not None and len(validation.diversity):
        written["diversity_plot"] = plot_diversity(validation.diversity, path=folder / "diversity.png")
    selection = validation.selection
    if selection is not None and len(selection.table):
        written["selection_plot"] = plot_selection_curve(selection, path=folder / "selection_curve.png")
        written["selection_agreement_plot"] = plot_selection_agreement(selection,
                                                                       path=folder / "selection_agreement.png")
    if forecast is not None:
        written["forecast_plot"] = plot_trajectories(
            statistics,
            forecast.predictions,
            quantity="var",
            path=folder / "forecast_var.png",
            embedder=embedder,
            forecast_from=validation.forecast_from,
        )
    written["summary_plot"] = plot_summary(statistics, path=folder / "summary.png", embedder=embedder)
    return written


def fit_summary(validation) -> dict:
    """What ``fit.json`` holds: the fit's reduced χ², parameters with intervals and goodness; the forecast's.

    ``forecast.held_out`` has one entry per held-out run and iteration: the run-level
    within-caption variance (summed over the trait axes) predicted, its interval (``lo``,
    ``hi``), the measured one, the relative error, whether it is covered, and the share of
    the per-caption values covered (``caption_coverage``); ``prediction`` (``--predict``) the same per held-out
    run and iteration from iteration 0, with the shared fit's parameters and goodness.
    """
    fit, forecast, prediction = validation.fit, validation.forecast, validation.prediction

    def parameters(result):
        return result.parameters.drop(columns=["cfg"]).to_dict(orient="records")

    return {
        "reduced_chi2": None if fit is None else fit.goodness["reduced_chi2"],
        "parameters": None if fit is None else parameters(fit),
        "fit": None if fit is None else fit.goodness,
        "forecast": None
        if forecast is None
        else {**forecast.goodness, "parameters": parameters(forecast), "held_out": forecast.forecast},
        "prediction": None
        if prediction is None
        else {**prediction.goodness, "fit": prediction.fit.goodness, "parameters": parameters(prediction.fit),
              "held_out": prediction.summary},
        "note": validation.notes,
        "group": validation.group,
        "provenance": validation.provenance,
    }


def _json_safe(value):
    """``value`` with every non-finite float as None (standard JSON has no NaN or Infinity)."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def plot_breeders(decomposition: pd.DataFrame, *, path) -> Path:
    """The breeder's-equation figure: response R against selection differential S, per caption and axis.

    One panel for the means and one for the log variances; one colour per run (its CFG
    setting in the legend), one point per caption, axis and iteration. The dotted line is
    R = S (full heritability), the dashed one R = 0.
    """
    path = Path(path)
    figure, panels = axes_grid(2, "breeder's equation: response R_t against selection S_t")
    for panel, quantity in zip(panels, ("mean", "log_var"), strict=True):
        rows = decomposition[decomposition["caption"].ne(ALL_CAPTIONS) & (decomposition["axis"] >= 0)]
        chosen = rows[rows["quantity"].isin([f"S_{quantity}", f"R_{quantity}"])]
        wide = chosen.pivot_table(
            index=["run", "cfg", "caption", "axis", "iteration"], columns="quantity", values="value"
        ).reset_index()
        if {f"S_{quantity}", f"R_{quantity}"} <= set(wide.columns):
            for (run, cfg), points in wide.groupby(["run", "cfg"], sort=False):
                panel.scatter(
                    points[f"S_{quantity}"], points[f"R_{quantity}"], s=10, alpha=0.6, label=f"{run} (cfg {cfg:g})"
                )
            values = wide[[f"S_{quantity}", f"R_{quantity}"]].to_numpy(dtype=float)
            top = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
            panel.plot([-top, top], [-top, top], ":", color="grey", lw=0.8)
            panel.axhline(0, color="grey", lw=0.8, ls="--")
            panel.legend(fontsize=7)
        panel.set_xlabel(f"S ({quantity}: guided − CFG 1, model t)")
        panel.set_ylabel(f"R ({quantity}: model t+1 − model t, CFG 1)")
    save_figure(figure, path)
    return path


#: The diversity and fidelity metrics, in the order the figure shows them.
DIVERSITY_STATISTICS = ("precision", "recall", "density", "coverage", "vendi")


def plot_diversity(diversity: pd.DataFrame, *, path) -> Path:
    """Precision, recall, density, coverage and Vendi score per iteration, one line per run, with intervals.

    The within-caption summary when the metrics were measured per caption, else the pooled
    comparison. Recall and coverage fall when diversity collapses; precision and density
    measure fidelity to the reference population.
    """
    path = Path(path)
    within = diversity[diversity["caption"] == WITHIN_CAPTIONS]
    rows = within if len(within) else diversity[diversity["caption"] == ALL_CAPTIONS]
    figure, panels = axes_grid(len(DIVERSITY_STATISTICS), "diversity and fidelity per iteration")
    for panel, statistic in zip(panels[: len(DIVERSITY_STATISTICS)], DIVERSITY_STATISTICS, strict=True):
        chosen = rows[rows["statistic"] == statistic]
        for run, points in chosen.groupby("run", sort=False):
            points = points.sort_values("iteration")
            # A percentile interval need not contain the estimate (Vendi falls under resampling): clip at 0.
            spread = np.clip([points["value"] - points["ci_low"], points["ci_high"] - points["value"]], 0, None)
            panel.errorbar(points["iteration"], points["value"], yerr=spread, marker="o", ms=3, capsize=2, label=run)
        panel.set_title(statistic, fontsize=9)
        panel.set_xlabel("iteration")
    _runs_legend(figure, panels[0])
    save_figure(figure, path)
    return path


#: How the selection figures name the two statistics.
SELECTION_LABELS = {"mean": "S on the mean (trait units)", "log_var": "S on ln var"}


def plot_selection_curve(curve, *, path) -> Path:
    """The selection curve: measured S(w) (points, 95 % intervals) and the exact law (lines), per model.

    One row of panels per statistic, one column per trait axis (the first three); values averaged over captions.
    Solid lines are the law with no free parameter, dashed ones the law with the correction chosen on w <= 3
    (where one was used), crosses on dotted lines the law with p_u the captions' mixture (at the measured w);
    w = 1 is S = 0 by definition.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    table = curve.table[curve.table["caption"] == WITHIN_CAPTIONS]
    per_caption = curve.table[curve.table["caption"] != WITHIN_CAPTIONS]
    axes = sorted(table["axis"].unique())[:PLOTTED_AXES]
    figure, panels = panel_grid(2, len(axes), "selection differential S(w) = stat(w) − stat(1): measured (points) "
                                "and the exact sampler law (lines); mean over captions")
    grid = np.linspace(1.0, max(curve.cfgs), 40)
    models = list(dict.fromkeys(zip(table["run"], table["iteration"], strict=True)))
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(len(models), 1)))
    correction = (curve.correction or {}).get("correction", "none")
    for row, statistic in enumerate(STATISTICS):
        for column, axis in enumerate(axes):
            panel = panels[row, column]
            for colour, (run, t) in zip(colours, models, strict=True):
                label = f"{run}: {'base' if t < 0 else f'iteration {t}'}"
                part = table[(table["run"] == run) & (table["iteration"] == t) & (table["axis"] == axis)]
                value = part[f"S_{statistic}"].to_numpy()
                spread = np.clip([value - part[f"S_{statistic}_lo"], part[f"S_{statistic}_hi"] - value], 0, None)
                panel.errorbar(part["w"], value, yerr=np.nan_to_num(spread), fmt="o", ms=4, capsize=2,
                               color=colour, label=label)
                if f"mixture_S_{statistic}" in part:
                    panel.plot(part["w"], part[f"mixture_S_{statistic}"], "x:", ms=5, color=colour, lw=1.0)
                inputs = per_caption[(per_caption["run"] == run) & (per_caption["iteration"] == t)
                                     & (per_caption["axis"] == axis) & (per_caption["w"] == curve.cfgs[0])]
                model = [inputs[c].to_numpy(dtype=float) for c in ("cond_mean", "cond_var", "uncond_mean",
                                                                     "uncond_var")]
                law = curve.laws[run]
                predicted = predicted_selection(*model, grid, law=law)[row].mean(axis=0)
                panel.plot(grid, predicted, "-", color=colour, lw=1.2)
                if correction != "none":
                    corrected = _corrected_line(model, grid, law, curve.correction, row)
                    panel.plot(grid, corrected, "--", color=colour, lw=1.0)
            panel.axhline(0, color="grey", lw=0.6)
            panel.axvspan(min(curve.cfgs) - 0.2, 3.0 + 0.2, color="0.93", zorder=-1)
            panel.set_title(f"axis {axis}", fontsize=9)
            panel.set_xlabel("peak CFG w (shaded: w ≤ 3, the correction's range)")
            panel.set_ylabel(SELECTION_LABELS[statistic])
    title = "solid: law; dashed: corrected" if correction != "none" else "lines: law"
    panels[0, 0].legend(fontsize=7, title=f"{title}; x: mixture p_u", title_fontsize=7)
    save_figure(figure, path)
    return path


def _corrected_line(model, grid, law, correction: dict, row: int) -> np.ndarray:
    """The corrected law on ``grid``, averaged over the captions of ``model``."""
    name, value = correction["correction"], correction["value"]
    if name == "log_var_scale":
        predicted = predicted_selection(*model, grid, law=law)
        return (predicted[row] * (value if row == 1 else 1.0)).mean(axis=0)
    return predicted_selection(*model, grid, law=law, **{name: value})[row].mean(axis=0)


def plot_selection_agreement(curve, *, path) -> Path:
    """Measured against predicted S on ln var, every caption, axis, model and w; w <= 3 and w >= 5 marked.

    Left: the law with no free parameter; right: with the correction chosen on w <= 3. The dotted line is
    measured = predicted.
    """
    path = Path(path)
    table = curve.table[curve.table["caption"] != WITHIN_CAPTIONS]
    figure, panels = axes_grid(2, "selection on ln var: measured against predicted (each caption, axis, model, w)")
    for panel, prediction in zip(panels, ("predicted", "corrected"), strict=True):
        x, y = table[f"{prediction}_S_log_var"], table["S_log_var"]
        for role, marker in (("tested on", "s"), ("", "^"), ("chosen on", "o")):  # the few w <= 3 points on top
            pick = table["role"] == role
            if pick.any():
                panel.scatter(x[pick], y[pick], s=12, alpha=0.6, marker=marker,
                              label={"chosen on": "w ≤ 3", "tested on": "w ≥ 5"}.get(role, "3 < w < 5"))
        values = np.concatenate([x.to_numpy(dtype=float), y.to_numpy(dtype=float)])
        values = values[np.isfinite(values)]
        low, high = (values.min(), values.max()) if len(values) else (-1.0, 1.0)
        panel.plot([low, high], [low, high], ":", color="grey")
        name = "law, no free parameter" if prediction == "predicted" else (
            f"corrected: {curve.correction['correction']} = {curve.correction['value']:.3g}"
            if curve.correction and curve.correction["correction"] != "none" else "no correction used")
        panel.set_title(name, fontsize=9)
        panel.set_xlabel("predicted S on ln var")
        panel.set_ylabel("measured S on ln var")
        panel.legend(fontsize=7)
    save_figure(figure, path)
    return path


def plot_trajectories(
    statistics: pd.DataFrame,
    predictions: pd.DataFrame | None,
    *,
    quantity: str,
    path,
    embedder: str,
    forecast_from: int | None = None,
) -> Path:
    """Measured ``quantity`` ("var" or "mean") per iteration with intervals vs the theory; one panel per run.

    The variance is drawn on a log scale; the theory's curve is its one-step-ahead prediction from the measured
    previous iteration (the forecast: iterated from the last fitted one)
    (dashed), absent when no fit was made. With per-caption statistics the variance
    drawn is the within-caption summary (mean over captions of the within-caption
    variance) and the theory's curve the mean over captions of its per-caption
    variance; the mean drawn is the pooled one and the theory's the mean over captions.
    """
    path = Path(path)
    generated = statistics[(statistics["population"] == "generated") & (statistics["statistic"] == quantity)]
    captions = set(generated["caption"]) if "caption" in generated else set()
    summary = WITHIN_CAPTIONS if WITHIN_CAPTIONS in captions else ALL_CAPTIONS
    if captions:
        generated = generated[generated["caption"] == summary]
    if predictions is not None and len(predictions):
        predictions = _over_captions(predictions)
    runs = list(dict.fromkeys(generated["run"]))
    figure, panels = axes_grid(len(runs), f"trait {quantity} per iteration ({embedder} embedding, PCA axes)")
    for panel, run in zip(panels, runs, strict=False):
        rows = generated[generated["run"] == run]
        for axis in sorted(rows["axis"].unique())[:PLOTTED_AXES]:
            colour = COLOURS[axis % len(COLOURS)]
            part = rows[rows["axis"] == axis].sort_values("iteration")
            error = np.vstack([part["value"] - part["ci_low"], part["ci_high"] - part["value"]])
            panel.errorbar(
                part["iteration"],
                part["value"],
                yerr=np.clip(error, 0, None),
                fmt="o",
                ms=4,
                capsize=3,
                color=colour,
                label=f"axis {axis}",
            )
            if predictions is not None and len(predictions):
                theory = predictions[
                    (predictions["run"] == run)
                    & (predictions["axis"] == axis)
                    & (predictions["quantity"] == ("log_var" if quantity == "var" else "mean"))
                ]
                theory = theory.sort_values("iteration")
                values = np.exp(theory["predicted"]) if quantity == "var" else theory["predicted"]
                panel.plot(theory["iteration"], values, "--", color=colour)
        if forecast_from is not None:
            panel.axvline(forecast_from - 0.5, color="grey", lw=0.8, ls=":")
        if quantity == "var" and (rows["value"] > 0).any():  # a run of identical images has no variance to log
            panel.set_yscale("log")
        panel.set_title(rows["label"].iloc[0] if "label" in rows else run, fontsize=9)
        panel.set_xlabel("iteration")
        panel.set_ylabel(quantity)
        panel.legend(fontsize=7)
    save_figure(figure, path)
    return path


def _over_captions(predictions: pd.DataFrame) -> pd.DataFrame:
    """Predictions per run, iteration and axis: variance and mean averaged over the caption groups."""
    if "group" not in predictions or predictions["group"].nunique() <= 1:
        return predictions
    is_var = predictions["quantity"] == "log_var"
    rows = predictions.assign(predicted=predictions["predicted"].where(~is_var, np.exp(predictions["predicted"])))
    out = rows.groupby(["run", "iteration", "axis", "quantity"], as_index=False)["predicted"].mean()
    is_var = out["quantity"] == "log_var"
    return out.assign(predicted=out["predicted"].where(~is_var, np.log(out["predicted"].where(is_var, 1.0))))


def plot_summary(statistics: pd.DataFrame, *, path, embedder: str) -> Path:
    """Total variance and Fréchet distance per iteration (pooled over captions), all runs in one figure."""
    path = Path(path)
    generated = statistics[statistics["population"] == "generated"]
    if "caption" in generated:
        generated = generated[generated["caption"] == ALL_CAPTIONS]
    figure, panels = axes_grid(2, f"whole-embedding statistics ({embedder})")
    for panel, statistic in zip(panels, ("total_var", "frechet"), strict=True):
        for run, rows in generated[generated["statistic"] == statistic].groupby("run", sort=False):
            rows = rows.sort_values("iteration")
            error = np.vstack([rows["value"] - rows["ci_low"], rows["ci_high"] - rows["value"]])
            error = np.where(np.isfinite(error), np.clip(error, 0, None), 0)
            panel.errorbar(
                rows["iteration"],
                rows["value"],
                yerr=error,
                fmt="o-",
                ms=4,
                capsize=3,
                label=rows["label"].iloc[0] if "label" in rows else run,
            )
        panel.set_title({"total_var": "total variance", "frechet": "Fréchet distance to reference"}[statistic])
        panel.set_xlabel("iteration")
    _runs_legend(figure, panels[0])
    save_figure(figure, path)
    return path


def _runs_legend(figure, panel) -> None:
    """The runs' legend (the same in every panel) once, under the panels: inside a panel, a study's 24 runs
    covered the data."""
    handles, labels = panel.get_legend_handles_labels()
    legend_below(figure, handles, labels, ncols=min(len(labels), 4), fontsize=7)


def plot_strength(parameters: pd.DataFrame, *, path) -> Path:
    """The fitted effective selection strength w_eff against the CFG scale (identity line for reference)."""
    path = Path(path)
    rows = parameters[parameters["parameter"] == "w_eff"]
    figure, (panel,) = axes_grid(1, "fitted selection strength vs CFG scale")
    error = rows["stderr"].where(np.isfinite(rows["stderr"]), 0.0)
    panel.errorbar(rows["cfg"], rows["estimate"], yerr=error, fmt="o", capsize=3)
    for _, row in rows.iterrows():
        panel.annotate(
            row["setting"],
            (row["cfg"], row["estimate"]),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    top = float(np.nanmax(np.concatenate([rows["cfg"], rows["estimate"], [1.0]])))
    panel.plot([0, top], [0, top], ":", color="grey", label="w_eff = CFG")
    panel.set_xlabel("CFG scale (run.json)")
    panel.set_ylabel("w_eff (fitted)")
    panel.legend(fontsize=7)
    save_figure(figure, path)
    return path


def sample_grid(iterations: dict, *, path, per_iteration: int = 8, thumbnail: int = 64) -> Path:
    """A PNG grid: one row per iteration (in order), its first ``per_iteration`` images as thumbnails."""
    from PIL import Image

    from validate.embedders import load_image

    path = Path(path)
    order = sorted(iterations)
    canvas = Image.new("RGB", (per_iteration * thumbnail, max(len(order), 1) * thumbnail), "white")
    for row, index in enumerate(order):
        for column, file in enumerate(iterations[index].files[:per_iteration]):
            image = load_image(file).resize((thumbnail, thumbnail), Image.BILINEAR)
            canvas.paste(image, (column * thumbnail, row * thumbnail))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path
