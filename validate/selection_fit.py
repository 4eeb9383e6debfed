"""How well the exact law predicts the measured selection curve, and the one shared correction where it misses.

The agreement of predicted and measured ``S(w)`` over captions x models x w (per-caption rows only) is scored by

- ``r2``: ``1 - sum (measured - predicted)^2 / sum (measured - mean measured)^2``, the share of the measured
  spread the prediction explains *as it stands* (about the identity line, not about a refitted line);
- ``slope``: the least-squares slope of measured on predicted (with an intercept); 1 where the law's scale is
  right;

per trait axis and over all axes, for the mean and the log variance, on all w, on w <= 3 and on w >= 5.

Where the Gaussian law misses, one trait-space scale shared by every CFG value, model and caption is tried, each
candidate with one parameter chosen by least squares on the log variance's ``S`` at w <= :data:`CHOSEN_ON` only:

- ``log_var_scale``: the predicted ``S`` of the log variance times ``k`` (the mean's is left as it is);
- ``guidance``: the law at the effective guidance ``w_eff = 1 + g (w - 1)``;
- ``trait_scale``: the law with every axis measured in units of ``kappa sqrt(v_u)`` instead of ``sqrt(v_u)``.

The candidate with the smallest squared error on w <= 3 is used (none, where no candidate lowers it by 1 %); its
held-out score is the one on w >= :data:`TESTED_ON`, which never took part in the choice.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

from validate.selection import STATISTICS, SelectionCurve, predicted_selection
from validate.statistics import WITHIN_CAPTIONS

#: The correction is chosen on w <= CHOSEN_ON and tested on w >= TESTED_ON.
CHOSEN_ON = 3.0
TESTED_ON = 5.0
CORRECTIONS = ("none", "log_var_scale", "guidance", "trait_scale")
#: Range of the parameter of every correction (a scale: positive).
PARAMETER_RANGE = (0.02, 50.0)
#: A correction is used only where it lowers the squared error on w <= 3 by more than this share.
MIN_GAIN = 0.01
#: The predictions scored: the Gaussian law, the corrected law, the law with p_u the captions' mixture.
PREDICTIONS = ("predicted", "corrected", "mixture")
#: Scored over each caption's values, and over the captions' mean per model, axis and w.
LEVELS = ("caption", "captions' mean")
SUBSETS = {"all w": lambda w: np.ones(len(w), bool), "w <= 3": lambda w: w <= CHOSEN_ON,
           "w >= 5": lambda w: w >= TESTED_ON}


def agreement(measured, predicted) -> dict:
    """``r2`` (about the identity line), ``slope`` and ``intercept`` of measured on predicted, and ``n``.

    Examples
    --------
    >>> {k: round(v, 6) for k, v in agreement([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]).items()}
    {'r2': 1.0, 'slope': 1.0, 'intercept': 0.0, 'n': 3}
    >>> round(agreement([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])["slope"], 6)
    0.5
    """
    y, x = np.asarray(measured, dtype=float), np.asarray(predicted, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 2 or np.ptp(y) == 0:
        return {"r2": float("nan"), "slope": float("nan"), "intercept": float("nan"), "n": len(x)}
    r2 = 1.0 - np.sum((y - x) ** 2) / np.sum((y - y.mean()) ** 2)
    slope, intercept = np.polyfit(x, y, 1) if np.ptp(x) > 0 else (float("nan"), float("nan"))
    return {"r2": float(r2), "slope": float(slope), "intercept": float(intercept), "n": len(x)}


def fit_selection(curve: SelectionCurve) -> SelectionCurve:
    """Score the law, choose the correction on w <= 3, test it on w >= 5; fill the curve's ``scores``,
    ``candidates``, ``correction`` and the table's ``corrected_S_*`` and ``role`` columns."""
    table = curve.table
    if not len(table):
        return curve
    per_caption = table["caption"].ne(WITHIN_CAPTIONS).to_numpy()
    w = table["w"].to_numpy(dtype=float)
    choose = per_caption & (w <= CHOSEN_ON)
    test = per_caption & (w >= TESTED_ON)
    measured = table["S_log_var"].to_numpy(dtype=float)

    def error(predicted, rows):
        ok = rows & np.isfinite(measured) & np.isfinite(predicted)
        return float(np.sum((measured[ok] - predicted[ok]) ** 2))

    candidates, predictions = [], {}
    for name in CORRECTIONS:
        value, predicted = _candidate(curve, name, choose) if choose.any() else (float("nan"), None)
        if predicted is None:
            predicted = {s: table[f"predicted_S_{s}"].to_numpy(dtype=float) for s in STATISTICS}
        predictions[name] = predicted
        held_out = agreement(measured[test], predicted["log_var"][test])
        candidates.append({"correction": name, "value": value, "sse_w_le_3": error(predicted["log_var"], choose),
                           "r2_w_le_3": agreement(measured[choose], predicted["log_var"][choose])["r2"],
                           "r2_w_ge_5": held_out["r2"], "slope_w_ge_5": held_out["slope"]})
    candidates = pd.DataFrame(candidates)
    best = candidates.iloc[int(np.nanargmin(candidates["sse_w_le_3"]))] if choose.any() else candidates.iloc[0]
    if best["sse_w_le_3"] > (1 - MIN_GAIN) * candidates["sse_w_le_3"].iloc[0]:
        best = candidates.iloc[0]
    chosen = str(best["correction"])
    corrected = predictions[chosen]
    for statistic in STATISTICS:
        table[f"corrected_S_{statistic}"] = _with_within(table, corrected[statistic])
    table["role"] = np.where(w <= CHOSEN_ON, "chosen on", np.where(w >= TESTED_ON, "tested on", ""))
    curve.candidates = candidates.assign(used=candidates["correction"] == chosen)
    curve.correction = {"correction": chosen, "value": float(best["value"]), "chosen_on": f"w <= {CHOSEN_ON:g}",
                        "tested_on": f"w >= {TESTED_ON:g}", "r2_w_ge_5": float(best["r2_w_ge_5"]),
                        "slope_w_ge_5": float(best["slope_w_ge_5"]), "possible": bool(choose.any() and test.any())}
    curve.scores = _scores(table, per_caption, w)
    return curve


def _candidate(curve: SelectionCurve, name: str, rows: np.ndarray) -> tuple[float, dict | None]:
    """The parameter of correction ``name`` chosen on ``rows`` and its predictions on every row."""
    table = curve.table
    measured = table["S_log_var"].to_numpy(dtype=float)
    if name == "none":
        return float("nan"), None
    if name == "log_var_scale":
        predicted = table["predicted_S_log_var"].to_numpy(dtype=float)
        ok = rows & np.isfinite(measured) & np.isfinite(predicted)
        k = float(np.clip(np.sum(measured[ok] * predicted[ok]) / np.sum(predicted[ok] ** 2), *PARAMETER_RANGE))
        return k, {"mean": table["predicted_S_mean"].to_numpy(dtype=float), "log_var": k * predicted}
    option = "guidance" if name == "guidance" else "trait_scale"

    def sse(log_value):
        predicted = _recomputed(curve, rows, **{option: float(np.exp(log_value))})["log_var"]
        ok = rows & np.isfinite(measured) & np.isfinite(predicted)
        return float(np.sum((measured[ok] - predicted[ok]) ** 2)) if ok.any() else np.inf

    found = minimize_scalar(sse, bounds=np.log(PARAMETER_RANGE), method="bounded", options={"xatol": 1e-4})
    value = float(np.exp(found.x))
    return value, _recomputed(curve, np.ones(len(table), bool), **{option: value})


def _recomputed(curve: SelectionCurve, rows: np.ndarray, **correction) -> dict:
    """The law's ``S`` on the per-caption ``rows`` under a correction (NaN elsewhere), from each row's p_c, p_u."""
    table = curve.table
    out = {s: np.full(len(table), np.nan) for s in STATISTICS}
    pick = rows & table["caption"].ne(WITHIN_CAPTIONS).to_numpy()
    chosen = table[pick]
    for (run, w), group in chosen.groupby(["run", "w"], sort=False):
        model = [group[c].to_numpy(dtype=float) for c in ("cond_mean", "cond_var", "uncond_mean", "uncond_var")]
        s_mean, s_log = predicted_selection(*model, [w], law=curve.laws[run], **correction)
        index = group.index.to_numpy()  # the table's positions: its index is a RangeIndex
        out["mean"][index], out["log_var"][index] = s_mean[:, 0], s_log[:, 0]
    return out


def _with_within(table: pd.DataFrame, values: np.ndarray) -> np.ndarray:
    """``values`` of the per-caption rows, with each ``(within)`` row the mean of its captions' values."""
    values = np.array(values, dtype=float)
    frame = table[["run", "iteration", "axis", "w"]].assign(value=values)
    per_caption = table["caption"].ne(WITHIN_CAPTIONS)
    means = frame[per_caption].groupby(["run", "iteration", "axis", "w"])["value"].mean()
    within = ~per_caption.to_numpy()
    keys = pd.MultiIndex.from_frame(frame.loc[within, ["run", "iteration", "axis", "w"]])
    values[within] = means.reindex(keys).to_numpy()
    return values


def _scores(table: pd.DataFrame, per_caption: np.ndarray, w: np.ndarray) -> pd.DataFrame:
    """R² and slope per statistic, prediction (law, corrected, mixture law), subset of w and axis (-1: all axes),
    over the captions' own values (``level`` caption) and over their means per model, axis and w (``level``
    captions' mean: the measured values' sampling noise averaged down, which per caption is large)."""
    axis = table["axis"].to_numpy()
    predictions = [p for p in PREDICTIONS if f"{p}_S_log_var" in table]
    columns = {name: table[name].to_numpy(dtype=float) for statistic in STATISTICS
               for name in (f"S_{statistic}", *(f"{p}_S_{statistic}" for p in predictions))}
    rows = []
    for level, statistic, prediction, (subset, member), a in itertools.product(
        LEVELS, STATISTICS, predictions, SUBSETS.items(), [-1, *sorted(set(axis.tolist()))]
    ):
        in_level = per_caption if level == "caption" else ~per_caption
        pick = in_level & member(w) & ((axis == a) if a >= 0 else True)
        if pick.any():
            rows.append({"level": level, "statistic": statistic, "prediction": prediction, "w": subset, "axis": a,
                         **agreement(columns[f"S_{statistic}"][pick], columns[f"{prediction}_S_{statistic}"][pick])})
    return pd.DataFrame(rows)
