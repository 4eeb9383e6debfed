"""Plots, tables and the one-page ``report.md`` of ``chain validate``.

Every file is written atomically (:mod:`qtm.io`), so an interrupted report never
leaves a half-written file under its final name.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from qtm.io import atomic_path
from validate.statistics import ALL_CAPTIONS, WITHIN_CAPTIONS

#: Trait axes drawn in the trajectory plots (the tables hold all of them).
PLOTTED_AXES = 3
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


def markdown_table(frame: pd.DataFrame, *, digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table of ``frame`` (floats to ``digits`` significant digits).

    Examples
    --------
    >>> print(markdown_table(pd.DataFrame({"a": [1.23456], "b": ["x"]}), digits=3))
    | a | b |
    | --- | --- |
    | 1.23 | x |
    """

    def cell(value):
        if isinstance(value, (float, np.floating)):
            return "–" if not math.isfinite(value) else f"{value:.{digits}g}"
        return str(value)

    lines = [
        "| " + " | ".join(map(str, frame.columns)) + " |",
        "| " + " | ".join("---" for _ in frame.columns) + " |",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def _save_figure(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)


def _axes_grid(count: int, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(count, 4)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.3 * rows), squeeze=False)
    figure.suptitle(title)
    for extra in axes.ravel()[count:]:
        extra.set_visible(False)
    return figure, axes.ravel()


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

    The variance is drawn on a log scale; the theory's curve is the fitted recursion
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
    figure, panels = _axes_grid(len(runs), f"trait {quantity} per iteration ({embedder} embedding, PCA axes)")
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
        if quantity == "var":
            panel.set_yscale("log")
        panel.set_title(rows["label"].iloc[0] if "label" in rows else run, fontsize=9)
        panel.set_xlabel("iteration")
        panel.set_ylabel(quantity)
        panel.legend(fontsize=7)
    _save_figure(figure, path)
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
    figure, panels = _axes_grid(2, f"whole-embedding statistics ({embedder})")
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
        panel.legend(fontsize=7)
    _save_figure(figure, path)
    return path


def plot_strength(parameters: pd.DataFrame, *, path) -> Path:
    """The fitted effective selection strength w_eff against the CFG scale (identity line for reference)."""
    path = Path(path)
    rows = parameters[parameters["parameter"] == "w_eff"]
    figure, (panel,) = _axes_grid(1, "fitted selection strength vs CFG scale")
    panel.errorbar(rows["cfg"], rows["estimate"], yerr=rows["stderr"].fillna(0), fmt="o", capsize=3)
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
    _save_figure(figure, path)
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
