"""Does one shared scale make the mixture law of selection transfer from w <= 3 to w >= 5?

The selection curve's report (``chain validate RUN --selection-curve``) scores the law with p_u the captions'
mixture (:func:`validate.selection.mixture_selection`) with no free parameter. This script tries the two shared
scales that could bend its shape toward the measured one, each chosen by least squares on the captions' mean
``S`` of ln var at w <= 3 (every model and axis of the curve) and scored on w >= 5, which took no part:

- ``separation``: the captions' distances from the mixture's centre times ``kappa`` (the network tells captions
  apart in the whole image, where the three trait axes see only part of the evidence, so its posterior p(c | x)
  may saturate sooner than the traits' mixture says);
- ``trait_scale``: every axis in units of ``tau`` times the mixture's SD (the data's scale against the sampler's noise).

Beside them it scores the ideal tilt ``p_c (p_c / p_u)^(w-1)`` with the same mixture p_u and no sampler
(:func:`tilt_selection`), the cheap law a chain model could evaluate thousands of times: if it followed the
measurements as the sampler's law does, the transition could use it in place of particles.

It prints, per candidate, the value, R² and slope on each range of w, and the mean measured and predicted ``S``
per w, and writes them to ``--out`` as JSON. Same particles and seed for every candidate (common random numbers,
so the least-squares curve is smooth in the parameter).

Usage: ``python tools/mixture_corrections.py REPORT/selection_curve.csv RUN [RUN ...] --out FILE``
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from qtm.io import write_json
from validate.runs import read_runs
from validate.selection import SamplerLaw, mixture_selection
from validate.selection_fit import CHOSEN_ON, TESTED_ON, agreement
from validate.statistics import WITHIN_CAPTIONS

CANDIDATES = ("none", "separation", "trait_scale", "ideal tilt")
BOUNDS = (0.1, 10.0)
PARTICLES = 1000
SEED = 0


def models(table: pd.DataFrame) -> list[tuple]:
    """Per model (run, iteration): the captions' Gaussians (C, k) and the measured captions' mean S of ln var (W, k)."""
    per_caption = table[table["caption"] != WITHIN_CAPTIONS]
    out = []
    for (run, iteration), rows in per_caption.groupby(["run", "iteration"], sort=False):
        first = rows[rows["w"] == rows["w"].iloc[0]]
        cond_mean, cond_var = (first.pivot(index="caption", columns="axis", values=name).to_numpy()
                               for name in ("cond_mean", "cond_var"))
        within = table[(table["caption"] == WITHIN_CAPTIONS) & (table["run"] == run)
                       & (table["iteration"] == iteration)]
        measured = within.pivot(index="w", columns="axis", values="S_log_var")
        out.append((run, iteration, cond_mean, cond_var, measured))
    return out


def tilt_selection(cond_mean, cond_var, cfgs, *, draws: int = 4000, seed: int = SEED) -> np.ndarray:
    """``S(w)`` on ln var of the ideal tilt of each caption's Gaussian by (p_c / p_u)^(w-1), p_u the captions'
    equal-weight mixture, by importance weights on the same ``draws`` of p_c at every w: (C, k, W).

    Examples
    --------
    >>> far = tilt_selection(np.array([[-5.0], [5.0]]), np.full((2, 1), 0.5), [3.0])  # p(c | x) = 1: no tilt
    >>> near = tilt_selection(np.array([[-0.5], [0.5]]), np.full((2, 1), 0.5), [3.0])
    >>> bool(abs(far[0, 0, 0]) < 1e-6), bool(near[0, 0, 0] < -0.1)
    (True, True)
    """
    captions = len(cond_mean)
    z = np.random.default_rng(seed).standard_normal((draws, cond_mean.shape[1]))
    out = np.empty((captions, cond_mean.shape[1], len(cfgs)))
    for c in range(captions):
        x = cond_mean[c] + np.sqrt(cond_var[c]) * z
        log_n = -0.5 * ((x[:, None] - cond_mean) ** 2 / cond_var + np.log(2 * np.pi * cond_var)).sum(axis=-1)
        log_ratio = log_n[:, c] - (logsumexp(log_n, axis=1) - np.log(captions))
        for j, w in enumerate(cfgs):
            weights = np.exp((w - 1) * (log_ratio - log_ratio.max()))
            weights /= weights.sum()
            centre = weights @ x
            out[c, :, j] = np.log(weights @ (x - centre) ** 2) - np.log(x.var(axis=0))
    return out


def predicted(model_rows, laws, *, max_w=np.inf, tilt=False, **correction) -> pd.DataFrame:
    """The mixture law's captions' mean S of ln var beside the measured one, per model, w <= ``max_w`` and axis."""
    rows = []
    for run, iteration, cond_mean, cond_var, measured in model_rows:
        measured = measured[measured.index <= max_w]
        cfgs = measured.index.to_numpy(dtype=float)
        log_var = (tilt_selection(cond_mean, cond_var, cfgs) if tilt else
                   mixture_selection(cond_mean, cond_var, cfgs, law=laws[run], particles=PARTICLES,
                                     random_state=SEED, **correction)[1])
        law = log_var.mean(axis=0)  # (k, W): the captions' mean
        for j, w in enumerate(cfgs):
            for axis in range(law.shape[0]):
                rows.append({"run": run, "iteration": iteration, "w": w, "axis": axis,
                             "measured": measured.iloc[j, axis], "predicted": law[axis, j]})
    return pd.DataFrame(rows)


def choose(model_rows, laws, name: str) -> float:
    """The candidate's value with the least squared error on w <= CHOSEN_ON."""
    def sse(log_value):
        rows = predicted(model_rows, laws, max_w=CHOSEN_ON, **{name: float(np.exp(log_value))})
        return float(((rows["measured"] - rows["predicted"]) ** 2).sum())

    found = minimize_scalar(sse, bounds=np.log(BOUNDS), method="bounded", options={"xatol": 1e-3})
    return float(np.exp(found.x))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("curve", help="a report's selection_curve.csv")
    parser.add_argument("runs", nargs="+", help="the run folders the curve was measured on (for their sampler law)")
    parser.add_argument("--out", required=True, help="JSON file for the table")
    args = parser.parse_args(argv)
    laws = {run.name: SamplerLaw.of_run(run) for run in read_runs(args.runs, warn=print)}
    model_rows = models(pd.read_csv(args.curve))
    results = []
    for name in CANDIDATES:
        value = choose(model_rows, laws, name) if name in ("separation", "trait_scale") else None
        rows = predicted(model_rows, laws, tilt=name == "ideal tilt", **({name: value} if value is not None else {}))
        scores = {label: agreement(part["measured"], part["predicted"]) for label, part in
                  (("w <= 3", rows[rows["w"] <= CHOSEN_ON]), ("w >= 5", rows[rows["w"] >= TESTED_ON]),
                   ("all w", rows))}
        per_w = rows.groupby("w")[["measured", "predicted"]].mean()
        results.append({"correction": name, "value": value, "scores": scores,
                        "mean_S_per_w": {f"{w:g}": row.to_dict() for w, row in per_w.iterrows()}})
        shown = "" if value is None else f" {value:.3g}"
        print(f"{name}{shown}: " + ", ".join(f"{label} R² {s['r2']:.2f} slope {s['slope']:.2f}"
                                             for label, s in scores.items()))
        print(per_w.T.round(2).to_string())
    write_json(args.out, {"curve": args.curve, "particles": PARTICLES, "seed": SEED, "chosen_on": f"w <= {CHOSEN_ON:g}",
                          "tested_on": f"w >= {TESTED_ON:g}", "candidates": results})


if __name__ == "__main__":
    main()
