"""Image statistics that need no weights.

They measure the two directions of degradation seen along a Chain of Diffusion:
high-frequency artefacts and oversaturation at high CFG, washed-out low-frequency
images at low CFG. All work on RGB in [0, 1]; luma is Rec. 601
(0.299 R + 0.587 G + 0.114 B).

================  ===========================================================
feature           definition
================  ===========================================================
brightness        mean luma
contrast          standard deviation of luma (RMS contrast)
saturation        mean HSV saturation (max - min) / max (0 where max = 0)
colourfulness     Hasler & Süsstrunk (2003): with rg = R - G, yb = (R + G)/2 - B,
                  sqrt(sd(rg)² + sd(yb)²) + 0.3 sqrt(mean(rg)² + mean(yb)²)
hf_fraction       share of the luma spectrum's energy (mean removed) at radial
                  frequency above 1/4 cycle per pixel
sharpness         variance of the 4-neighbour Laplacian of luma (interior pixels)
================  ===========================================================
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from validate.embedder import Embedder

FEATURES = ("brightness", "contrast", "saturation", "colourfulness", "hf_fraction", "sharpness")
#: Radial frequency (cycles per pixel; Nyquist is 0.5) above which energy counts as high-frequency.
HF_CUTOFF = 0.25


def luma(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of an (H, W, 3) array."""
    return rgb @ np.array([0.299, 0.587, 0.114])


def brightness(rgb: np.ndarray) -> float:
    """Mean luma.

    Examples
    --------
    >>> round(brightness(np.full((2, 2, 3), 0.5)), 12)
    0.5
    """
    return float(luma(rgb).mean())


def contrast(rgb: np.ndarray) -> float:
    """Standard deviation of luma (population formula)."""
    return float(luma(rgb).std())


def saturation(rgb: np.ndarray) -> float:
    """Mean HSV saturation.

    Examples
    --------
    >>> saturation(np.array([[[1.0, 0.0, 0.0], [0.5, 0.5, 0.5]]]))
    0.5
    """
    high = rgb.max(axis=-1)
    low = rgb.min(axis=-1)
    sat = np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)
    return float(sat.mean())


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler-Süsstrunk colourfulness (on the [0, 1] scale; multiply by 255 for the paper's units)."""
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg = red - green
    yb = 0.5 * (red + green) - blue
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def hf_fraction(rgb: np.ndarray, *, cutoff: float = HF_CUTOFF) -> float:
    """Share of the (mean-removed) luma power spectrum above ``cutoff`` cycles per pixel; 0 for a flat image.

    Examples
    --------
    >>> checkerboard = np.indices((4, 4)).sum(axis=0) % 2
    >>> hf_fraction(np.repeat(checkerboard[..., None], 3, axis=-1).astype(float))
    1.0
    """
    y = luma(rgb)
    power = np.abs(np.fft.fft2(y - y.mean())) ** 2
    total = power.sum()
    if total <= 0:
        return 0.0
    fy = np.fft.fftfreq(y.shape[0])[:, None]
    fx = np.fft.fftfreq(y.shape[1])[None, :]
    return float(power[np.hypot(fx, fy) > cutoff].sum() / total)


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of luma over interior pixels (0 for images under 3x3)."""
    y = luma(rgb)
    if min(y.shape) < 3:
        return 0.0
    lap = y[:-2, 1:-1] + y[2:, 1:-1] + y[1:-1, :-2] + y[1:-1, 2:] - 4.0 * y[1:-1, 1:-1]
    return float(lap.var())


def image_statistics(rgb: np.ndarray) -> np.ndarray:
    """All six statistics of one (H, W, 3) array in [0, 1], in the order of :data:`FEATURES`."""
    return np.array(
        [
            brightness(rgb),
            contrast(rgb),
            saturation(rgb),
            colourfulness(rgb),
            hf_fraction(rgb),
            sharpness(rgb),
        ]
    )


class StatsEmbedder(Embedder):
    """The six statistics of :data:`FEATURES` per image, standardised before PCA (their units differ).

    Examples
    --------
    >>> from PIL import Image
    >>> StatsEmbedder().embed([Image.new("RGB", (8, 8), (255, 255, 255))]).round(3).tolist()
    [[1.0, 0.0, 0.0, 0.0, 0.0, 0.0]]
    """

    name = "stats"
    standardize = True

    def settings(self) -> dict:
        return {"features": list(FEATURES), "hf_cutoff": HF_CUTOFF, "luma": "rec601"}

    def embed(self, images: Sequence) -> np.ndarray:
        rows = [image_statistics(np.asarray(image.convert("RGB"), dtype=float) / 255.0) for image in images]
        return np.array(rows, dtype=float).reshape(len(rows), len(FEATURES))

    def feature_names(self, count: int) -> list[str]:
        return list(FEATURES)
