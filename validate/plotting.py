"""The report's figures: a grid of panels and a PNG cropped to what it draws, written atomically."""

from __future__ import annotations

import math
from pathlib import Path

from qtm.io import atomic_path

#: Resolution of the figures, and the white margin around what they draw.
DPI = 110
PAD_INCHES = 0.1


def save_figure(figure, path: Path) -> Path:
    """Write ``figure`` as a PNG cropped to what it draws plus a margin, as ``savefig(bbox_inches="tight")`` does.

    savefig's "tight" draws the figure twice, the first time only to measure it; the figure's
    extent is measured here without that draw, and savefig given the box draws once.
    """
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure.set_dpi(DPI)
    renderer = FigureCanvasAgg(figure).get_renderer()
    if figure.get_layout_engine() is not None:
        # Place the panels once, here (the box depends on where they sit), and not again while saving.
        figure.get_layout_engine().execute(figure)
        figure.set_layout_engine("none")
    box = figure.get_tightbbox(renderer)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI, bbox_inches=box.padded(PAD_INCHES))
    plt.close(figure)
    return path


def axes_grid(count: int, title: str):
    """A figure titled ``title`` with ``count`` panels, at most 4 a row; returns (figure, flat array of axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(count, 4)
    rows = math.ceil(count / columns)
    # Constrained layout keeps a panel's title clear of the x label of the panel above.
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.3 * rows), squeeze=False,
                                layout="constrained")
    figure.suptitle(title)
    for extra in axes.ravel()[count:]:
        extra.set_visible(False)
    return figure, axes.ravel()
