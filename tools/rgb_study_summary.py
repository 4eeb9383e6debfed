"""The numbers and figures of docs/rgb_study.md, from the chains and reports of `make rgb-study`.

Reads the chains under RUNS (``<set>-<setting>``, e.g. ``emoji-cfg7.5``), one report per data set under
REPORTS (``chain validate --embedder efficientnet`` over its four chains: ``statistics.csv``,
``diversity.csv``, ``fit.json``) and ``RUNS/benchmark.txt``, and writes into ``--out``:

- ``emoji_chains.png``: each emoji chain's images, one row per iteration and one column per caption
  (Noto Emoji, Apache-2.0). Pokémon images are never drawn: they are the game publisher's artwork.
- ``trajectories.png``: per data set and CFG setting, along the iterations, the colour saturation, the
  recall and coverage against the real images, and the within-concept variance of the EfficientNet
  features relative to iteration 0.
- ``summary.json``, and copies of the benchmark's output, the emoji base model's sample grid and each report's
  plots of the trait variance with the theory's one-step predictions and its forecast (``<set>_var.png``,
  ``<set>_forecast_var.png``).

It prints the page's Markdown tables. Colour saturation (mean HSV saturation,
:func:`validate.embed_stats.saturation`) is measured here from the images with a normal 95 % interval
over images; everything else is read from the reports. Nothing is fitted or generated here.

Usage: ``python tools/rgb_study_summary.py runs/rgb-study runs/rgb-study-report --out docs/rgb_study``
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from study_summary import read_table  # tools/ is the script's folder

from chain.data import load_dataset
from qtm.rundir import read_run
from validate.embed_stats import saturation

SETS = ("emoji", "pokemon")
SETTINGS = ("cfg1", "cfg3", "cfg7.5", "redifine")
LABELS = {"cfg1": "CFG 1", "cfg3": "CFG 3", "cfg7.5": "CFG 7.5", "redifine": "CFG 7.5 + ReDiFine"}
COLOURS = {"cfg1": "tab:blue", "cfg3": "tab:green", "cfg7.5": "tab:red", "redifine": "tab:purple"}
#: The summary rows of chain validate's per-caption tables: the mean over captions.
WITHIN = "(within)"


def saturations(images) -> np.ndarray:
    """HSV saturation of each PIL image."""
    return np.array([saturation(np.asarray(image.convert("RGB"), dtype=float) / 255.0) for image in images])


def image_saturation(files) -> tuple[float, float]:
    """Mean HSV saturation of the image files and the half-width of its normal 95 % interval over images."""
    values = saturations(Image.open(f) for f in files)
    return float(values.mean()), float(1.96 * values.std(ddof=1) / np.sqrt(len(values)))


def chain_measurements(runs: Path, name: str) -> dict:
    """Per iteration of one chain: saturation (with its interval) and the image count."""
    run = read_run(runs / name)
    rows = []
    for iteration, images in sorted(run.iterations.items()):
        value, half = image_saturation(images.files)
        rows.append({"iteration": iteration, "saturation": value, "saturation_half_width": half,
                     "images": len(images.files)})
    return {"data": run.params["data"], "rows": rows}


def report_rows(diversity: pd.DataFrame, statistics: pd.DataFrame, name: str) -> pd.DataFrame:
    """Per iteration of one chain: recall, coverage, precision, density and Vendi (mean over captions) and the
    within-caption total variance of the EfficientNet features (relative to iteration 0), with intervals."""
    diversity = diversity[diversity["run"].eq(name) & diversity["caption"].eq(WITHIN)]
    wide = diversity.pivot_table(index="iteration", columns="statistic", values=["value", "ci_low", "ci_high"])
    table = pd.DataFrame(index=wide.index)
    for statistic in sorted(diversity["statistic"].unique()):
        for part in ("value", "ci_low", "ci_high"):
            table[statistic if part == "value" else f"{statistic}_{part}"] = wide[(part, statistic)]
    within = statistics[statistics["run"].eq(name) & statistics["population"].eq("generated")
                        & statistics["caption"].eq(WITHIN) & statistics["statistic"].eq("total_var")]
    within = within.set_index("iteration").sort_index()
    first = float(within["value"].iloc[0])
    table["within_var"] = within["value"] / first
    table["within_var_ci_low"] = within["ci_low"] / first
    table["within_var_ci_high"] = within["ci_high"] / first
    return table.reset_index()


def emoji_grid(runs: Path, path: Path, *, columns: int = 8) -> None:
    """One panel per CFG setting: rows are iterations, columns the first image of each caption."""
    panels = []
    for setting in SETTINGS:
        run = read_run(runs / f"emoji-{setting}")
        rows = []
        for _, images in sorted(run.iterations.items()):
            first = {}
            for file, caption in zip(images.files, images.captions, strict=True):
                first.setdefault(caption, file)
            rows.append([first[caption] for caption in sorted(first)][:columns])
        panels.append((setting, rows))
    size = Image.open(panels[0][1][0][0]).width
    cell, gap, title = size + 2, 12, 14
    width = len(panels) * (columns * cell + gap)
    height = title + len(panels[0][1]) * cell
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for p, (setting, rows) in enumerate(panels):
        left = p * (columns * cell + gap)
        draw.text((left + 2, 1), LABELS[setting], fill="black")
        for r, files in enumerate(rows):
            for c, file in enumerate(files):
                canvas.paste(Image.open(file).convert("RGB"), (left + c * cell, title + r * cell))
    canvas = canvas.resize((canvas.width * 2, canvas.height * 2), Image.Resampling.NEAREST)
    canvas.save(path)


def plot_trajectories(measured: dict, real_saturation: dict, path: Path) -> None:
    quantities = (
        ("saturation", "colour saturation (mean HSV S)"),
        ("recall", "recall (mean over concepts)"),
        ("coverage", "coverage (mean over concepts)"),
        ("within_var", "within-concept variance / iteration 0"),
    )
    figure, axes = plt.subplots(len(SETS), len(quantities), figsize=(4.2 * len(quantities), 3.4 * len(SETS)),
                                squeeze=False)
    for row, data_set in enumerate(SETS):
        for col, (quantity, label) in enumerate(quantities):
            panel = axes[row, col]
            for setting in SETTINGS:
                table = measured.get((data_set, setting))
                if table is None:
                    continue
                x = table["iteration"]
                panel.plot(x, table[quantity], marker="o", color=COLOURS[setting], label=LABELS[setting])
                if quantity == "saturation":
                    half = table["saturation_half_width"]
                    low, high = table[quantity] - half, table[quantity] + half
                else:
                    low, high = table[f"{quantity}_ci_low"], table[f"{quantity}_ci_high"]
                panel.fill_between(x, low, high, color=COLOURS[setting], alpha=0.15, linewidth=0)
            if quantity == "saturation" and data_set in real_saturation:
                panel.axhline(real_saturation[data_set], color="black", linestyle=":", label="real images")
            panel.set_title(f"{data_set}: {label}", fontsize=9)
            panel.set_xlabel("iteration")
            if row == 0 and col == 0:
                panel.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def markdown(measured: dict, real_saturation: dict, fits: dict) -> str:
    lines = []
    for data_set in SETS:
        lines += [f"**{data_set}** (real images: saturation {real_saturation.get(data_set, float('nan')):.3f})", "",
                  "| setting | saturation 0 → 4 | recall 0 → 4 | coverage 0 → 4 | within-concept variance at 4 "
                  "(iteration 0 = 1) | Vendi 0 → 4 |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for setting in SETTINGS:
            table = measured.get((data_set, setting))
            if table is None:
                continue
            first, last = table.iloc[0], table.iloc[-1]
            lines.append(
                f"| {LABELS[setting]} | {first['saturation']:.3f} → {last['saturation']:.3f} "
                f"| {first['recall']:.2f} → {last['recall']:.2f} "
                f"[{last['recall_ci_low']:.2f}, {last['recall_ci_high']:.2f}] "
                f"| {first['coverage']:.2f} → {last['coverage']:.2f} "
                f"| {last['within_var']:.2f} [{last['within_var_ci_low']:.2f}, {last['within_var_ci_high']:.2f}] "
                f"| {first['vendi']:.2f} → {last['vendi']:.2f} |"
            )
        fit = fits.get(data_set)
        if fit:
            lines += ["", fit_line(data_set, fit)]
        lines.append("")
    return "\n".join(lines)


def fit_line(data_set: str, fit: dict) -> str:
    forecast = fit.get("forecast") or {}
    held = forecast.get("held_out") or []
    errors = ", ".join(f"{entry['run'].split('-', 1)[1]} t={entry['iteration']}: {100 * entry['relative_error']:+.0f} %"
                       for entry in held if entry.get("relative_error") is not None)
    covered = [bool(entry.get("covered")) for entry in held]
    chi2 = fit.get("reduced_chi2")
    chi2_text = "n/a" if chi2 is None else f"{chi2:.2f}"
    return (f"Fit on iterations 0-2 of all four {data_set} chains: reduced χ² {chi2_text}; forecast of the "
            f"within-caption variance at iterations 3-4: {errors or 'none'}; 90 % intervals cover "
            f"{sum(covered)} of {len(covered)}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("reports", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    measured, chains, real_saturation, fits = {}, {}, {}, {}
    for data_set in SETS:
        report = args.reports / data_set
        if (report / "fit.json").exists():
            fits[data_set] = json.loads((report / "fit.json").read_text())
        if not (report / "diversity.csv").exists():
            continue
        diversity, statistics = read_table(report / "diversity.csv"), read_table(report / "statistics.csv")
        for setting in SETTINGS:
            name = f"{data_set}-{setting}"
            if name not in set(diversity["run"]):
                continue
            chain = chain_measurements(args.runs, name)
            chains[name] = chain
            table = report_rows(diversity, statistics, name).merge(pd.DataFrame(chain["rows"]), on="iteration")
            measured[(data_set, setting)] = table
            if data_set not in real_saturation:
                real_saturation[data_set] = float(saturations(load_dataset(chain["data"]).images).mean())
    plot_trajectories(measured, real_saturation, args.out / "trajectories.png")
    if all((args.runs / f"emoji-{setting}").exists() for setting in SETTINGS):
        emoji_grid(args.runs, args.out / "emoji_chains.png")
    for name in ("benchmark.txt", "emoji_base_cfg3.png"):
        if (args.runs / name).exists():
            shutil.copyfile(args.runs / name, args.out / name)
    for data_set in SETS:  # the reports' plots of trait statistics (no images in them)
        for plot in ("var.png", "forecast_var.png"):
            if (args.reports / data_set / plot).exists():
                shutil.copyfile(args.reports / data_set / plot, args.out / f"{data_set}_{plot}")
    summary = {
        "real_saturation": real_saturation,
        "chains": {f"{d}-{s}": table.to_dict(orient="records") for (d, s), table in measured.items()},
        "fits": {d: {"reduced_chi2": f.get("reduced_chi2"), "forecast": f.get("forecast")} for d, f in fits.items()},
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    print(markdown(measured, real_saturation, fits))



if __name__ == "__main__":
    main()
