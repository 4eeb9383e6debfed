"""The selection law per model in one figure: the measured mean S of ln var against w (points) and a pixel law's
(lines), one panel per run, one colour per model (the base model and each iteration's).

Reads the JSON files that ``tools/pixel_selection_law.py`` writes (their ``mean_S_log_var_per_model_and_w``); each
panel is titled by its file's folder unless ``--titles`` names them.

Usage: ``python tools/selection_law_figure.py LAW.json... --out FIGURE.png [--titles T...] [--law NAME]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from validate.plotting import panel_grid, save_figure

PER_MODEL = "mean_S_log_var_per_model_and_w"


def read_law(path: Path) -> pd.DataFrame:
    """The measured and the law's mean S per model and w of one ``pixel_selection_law`` JSON file."""
    try:
        records = json.loads(path.read_text())[PER_MODEL]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: no {PER_MODEL} ({type(error).__name__}); write it with "
                         "tools/pixel_selection_law.py") from error
    return pd.DataFrame(records)


def figure(laws: list[pd.DataFrame], titles: list[str], out: Path, *, law: str = "the law") -> Path:
    import matplotlib.pyplot as plt

    fig, axes = panel_grid(1, len(laws), f"selection on ln var: measured (points) and {law} (lines)")
    for ax, table, title in zip(axes[0], laws, titles, strict=True):
        models = sorted(table["iteration"].unique())
        colours = plt.cm.viridis([i / max(len(models) - 1, 1) for i in range(len(models))])
        for model, colour in zip(models, colours, strict=True):
            rows = table[table["iteration"] == model].sort_values("w")
            label = "base" if model < 0 else f"iteration {model}"
            ax.plot(rows["w"], rows["S_log_var"], "o", color=colour, ms=4, label=label)
            ax.plot(rows["w"], rows["pixel_S_log_var"], "-", color=colour, lw=1.2)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(sorted(table["w"].unique()), [f"{w:g}" for w in sorted(table["w"].unique())])
        ax.axhline(0.0, color="k", lw=0.6)
        ax.set(title=title, xlabel="CFG scale w", ylabel="mean S of ln var")
    axes[0, -1].legend(fontsize=7, loc="lower left")
    return save_figure(fig, out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("laws", nargs="+", type=Path, help="JSON files of tools/pixel_selection_law.py")
    parser.add_argument("--out", type=Path, required=True, help="the figure (PNG)")
    parser.add_argument("--titles", nargs="+", help="a title per panel (default: each file's folder)")
    parser.add_argument("--law", default="the law", help="what the lines are, for the figure's title")
    args = parser.parse_args(argv)
    titles = args.titles or [path.parent.name for path in args.laws]
    if len(titles) != len(args.laws):
        parser.error(f"--titles names {len(titles)} panels for {len(args.laws)} files: give one title per file")
    try:
        laws = [read_law(path) for path in args.laws]
    except ValueError as error:
        parser.error(str(error))
    print(f"wrote {figure(laws, titles, args.out, law=args.law)}")


if __name__ == "__main__":
    main()
