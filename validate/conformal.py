"""Prediction intervals stretched until they cover held-out settings: split conformal prediction.

The theory's 90 % intervals come from its own parameter and process-noise draws, and on chains it was not fitted
to they cover too little (docs/study.md). Conformal prediction calibrates them on errors the theory made out of
sample: each training setting is predicted from a fit on the other training settings
(:func:`validate.prediction.predict` with ``calibrate_intervals=False``), and every predicted value gets a
**stretch score**, the factor by which its interval's half on the measured value's side must grow to reach it
(1 at the interval's end, below 1 inside). With n scores, the ⌈(n + 1) level⌉-th smallest, q, is the stretch the
held-out intervals get: ``[m − q (m − lo), m + q (hi − m)]`` around the median m. If the settings' scores were
exchangeable this covers with probability at least ``level`` (Vovk, Gammerman & Shafer 2005, *Algorithmic
Learning in a Random World*); they are not quite (a setting's runs, captions and iterations share its errors, and
a held-out setting may lie outside the training settings' range), so the coverage is measured, not assumed.

Scores are pooled per kind of value (:func:`score_pool`: the run-level ln var, the caption-level ln var and the
caption-level mean) and iteration, each pool over every training setting, run (and caption and axis). With fewer than
``1 / (1 − level) − 1`` scores in a pool no finite stretch has the guarantee, and the intervals become
unbounded (``inf`` in the tables, no stretch in the summary), which the report says.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from validate.skill import RUN_LEVEL


def score_pool(rows: pd.DataFrame) -> pd.Series:
    """The pool each theory row's score belongs to: ``run log_var``, ``caption log_var`` or ``caption mean``."""
    level = np.where(rows["caption"] == RUN_LEVEL, "run", "caption")
    return pd.Series(level, index=rows.index) + " " + rows["quantity"].astype(str)


def stretch_scores(rows: pd.DataFrame) -> np.ndarray:
    """How many times its interval's half on the measured side each row's measured value lies from the median.

    ``rows`` has ``measured``, ``predicted`` (the median), ``lo`` and ``hi``. An interval of zero width on that
    side scores ``inf`` unless the value sits on the median.

    Examples
    --------
    >>> rows = pd.DataFrame({"measured": [1.5, 0.0, 3.0], "predicted": [1.0, 1.0, 1.0], "lo": [0.0, 0.5, 0.0],
    ...                      "hi": [2.0, 2.0, 2.0]})
    >>> stretch_scores(rows).tolist()
    [0.5, 2.0, 2.0]
    """
    y, m, lo, hi = (rows[c].to_numpy(float) for c in ("measured", "predicted", "lo", "hi"))
    distance = np.abs(y - m)
    half = np.where(y >= m, hi - m, m - lo)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(distance == 0, 0.0, distance / half)
    return np.where(np.isnan(score) | (half <= 0) & (distance > 0), np.inf, score)


def conformal_stretch(scores, level: float) -> float:
    """The ⌈(n + 1) level⌉-th smallest of the n scores; ``inf`` when that rank exceeds n (too few scores).

    Examples
    --------
    >>> conformal_stretch(np.arange(1.0, 20.0), 0.9)  # n = 19: the 18th smallest
    18.0
    >>> conformal_stretch([1.0, 2.0, 3.0], 0.9)
    inf
    """
    scores = np.sort(np.asarray(scores, float))
    rank = math.ceil((len(scores) + 1) * level)
    return float(scores[rank - 1]) if rank <= len(scores) else math.inf


def stretch_intervals(rows: pd.DataFrame, scores: pd.DataFrame, level: float) -> tuple[pd.DataFrame, dict]:
    """Add ``conformal_lo``, ``conformal_hi`` and ``conformal_covered`` to the theory ``rows``.

    Each kind of value (:func:`score_pool`) and iteration has its own stretch: errors grow with the horizon, so
    scores of different iterations are not exchangeable.

    Parameters
    ----------
    rows : DataFrame
        The held-out prediction's theory rows (``caption``, ``quantity``, ``iteration``, ``measured``,
        ``predicted``, ``lo``, ``hi``).
    scores : DataFrame
        The training settings' held-out theory rows (same columns), whose stretch scores calibrate each pool.
    level : float

    Returns
    -------
    rows : DataFrame
        With the three columns (a row without scores of its kind and iteration keeps NaN bounds; one whose
        interval is unbounded has infinite bounds; both have a missing coverage).
    summary : dict
        Per kind (``run log_var`` ...): ``stretch`` per iteration (None: unbounded, too few scores), ``scores``
        (how many in all) and ``coverage`` of the held-out rows with a bounded interval (None: there is none).
    """
    rows = rows.copy()
    rows["conformal_lo"] = rows["conformal_hi"] = np.nan
    rows["conformal_covered"] = pd.Series(pd.NA, index=rows.index, dtype="boolean")
    kinds, calibration_kinds = score_pool(rows), score_pool(scores)
    calibration_scores, held_out_scores = stretch_scores(scores), stretch_scores(rows)
    summary = {}
    for kind in sorted(set(kinds)):
        stretches, covered, count = {}, [], 0
        for iteration in sorted(set(rows.loc[kinds == kind, "iteration"])):
            pooled = calibration_scores[((calibration_kinds == kind) & (scores["iteration"] == iteration)).to_numpy()]
            if not len(pooled):
                continue
            q = conformal_stretch(pooled, level)
            mine = ((kinds == kind) & (rows["iteration"] == iteration)).to_numpy()
            m, lo, hi = (rows.loc[mine, c].to_numpy(float) for c in ("predicted", "lo", "hi"))
            with np.errstate(invalid="ignore"):  # inf * 0 where an interval has no width on a side
                rows.loc[mine, "conformal_lo"] = np.where(m == lo, m, m - q * (m - lo))
                rows.loc[mine, "conformal_hi"] = np.where(hi == m, m, m + q * (hi - m))
            stretches[str(int(iteration))] = q if math.isfinite(q) else None
            count += len(pooled)
            if math.isfinite(q):  # an unbounded interval covers by construction: no coverage to count
                inside = held_out_scores[mine] <= q
                rows.loc[mine, "conformal_covered"] = inside
                covered.extend(inside)
        if stretches:
            summary[kind] = {"stretch": stretches, "scores": count,
                             "coverage": float(np.mean(covered)) if covered else None}
    return rows, summary


def describe_stretch(stretch: dict) -> str:
    """A kind's stretches per iteration in words (for the report and the summary line).

    Examples
    --------
    >>> describe_stretch({"1": 1.21, "2": 1.5, "3": None})
    'stretched × 1.21–1.5 (iterations 1–2), unbounded at iteration 3 (too few scores)'
    >>> describe_stretch({"1": None})
    'unbounded at iteration 1 (too few scores)'
    """
    finite = {int(k): v for k, v in stretch.items() if v is not None}
    unbounded = sorted(int(k) for k, v in stretch.items() if v is None)
    parts = []
    if finite:
        low, high = min(finite.values()), max(finite.values())
        factor = f"{low:.3g}" if f"{low:.3g}" == f"{high:.3g}" else f"{low:.3g}–{high:.3g}"
        its = sorted(finite)
        parts.append(f"stretched × {factor} (iteration{'s' if len(its) > 1 else ''} "
                     f"{its[0] if len(its) == 1 else f'{its[0]}–{its[-1]}'})")
    if unbounded:
        its = ", ".join(map(str, unbounded))
        parts.append(f"unbounded at iteration{'s' if len(unbounded) > 1 else ''} {its} (too few scores)")
    return ", ".join(parts)
