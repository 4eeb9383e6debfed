"""What the verification suite shows: one line per check, one plot per check, the ``verify.json`` summary.

Examples
--------
>>> from qtm.verify.base import CheckResult
>>> format_result(CheckResult("drift", "Drift", "error", None, None, None, "it broke"))
'drift                    ERROR    it broke'
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from qtm.verify.base import CheckResult, Comparison, Verdict


def format_result(result: CheckResult) -> str:
    """One line: name, status, the largest |z|, the adjusted p-value and the designed rate.

    Examples
    --------
    >>> format_result(CheckResult("drift", "Drift", "skipped", None, None, None, "not today"))
    'drift                    SKIPPED  not today'
    """
    if result.verdict is None:
        return f"{result.name:<24} {result.status.upper():<7}  {result.note}"
    v = result.verdict
    z = "   -  " if math.isnan(v.max_abs_z) else f"{v.max_abs_z:6.2f}"
    where = f"  -> {result.plot}" if result.plot else ""
    return (
        f"{result.name:<24} {result.status.upper():<7}  max|z| {z}  p_adj {v.adjusted_pvalue:.3g} "
        f"over {v.count} statistics (designed false-failure rate {v.false_failure_rate:g}){where}"
    )


def plot_comparison(comparison: Comparison, verdict: Verdict, path, *, title: str) -> Path:
    """Plot a comparison: trajectories and their z-scores, or a QQ-plot of the z-scores.

    With ``comparison.x`` the left panel shows each series' analytic curve (line) and
    simulated values (points, ± 2 SE) and the right panel each point's z-score with the
    check's failure bounds; without it, a QQ-plot of the z-scores against N(0, 1).

    Examples
    --------
    >>> import tempfile
    >>> from qtm.verify.base import evaluate
    >>> c = Comparison(("a", "b"), np.array([0.1, -0.2]), np.array([0.1, 0.1]), np.array([0.0, 0.0]))
    >>> path = plot_comparison(c, evaluate(c), Path(tempfile.mkdtemp()) / "demo.png", title="demo")
    >>> path.stat().st_size > 0
    True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    from qtm.io import atomic_path

    z = comparison.zscores()
    # The |z| beyond which the Bonferroni-adjusted p-value falls below the rate.
    tail = verdict.false_failure_rate / (2 * verdict.count)
    bound = float(stats.norm.isf(tail) if comparison.dof is None else stats.t.isf(tail, comparison.dof))
    if comparison.x is not None:
        fig, (ax, z_ax) = plt.subplots(1, 2, figsize=(10.0, 4.4), layout="constrained")
        series = np.asarray(comparison.series, dtype=object)
        x_all = np.asarray(comparison.x)
        for name in dict.fromkeys(comparison.series):
            pick = series == name
            x = x_all[pick]
            line = ax.plot(x, np.asarray(comparison.expected)[pick], "-", lw=1, label=name)[0]
            ax.errorbar(
                x, np.asarray(comparison.observed)[pick], yerr=2 * np.asarray(comparison.standard_error)[pick],
                fmt="o", ms=3, color=line.get_color(),
            )  # fmt: skip
            z_ax.plot(x, z[pick], "o-", ms=3, lw=0.8, color=line.get_color())
        ax.set(xlabel="iteration", ylabel="value (line: analytic, points: simulated ± 2 SE)")
        ax.legend(fontsize=6)
        z_ax.set(xlabel="iteration", ylabel="z-score (simulated - analytic) / SE")
    else:
        fig, z_ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
        ordered = np.sort(z)
        theory = stats.norm.ppf((np.arange(1, z.size + 1) - 0.5) / z.size)
        z_ax.plot(theory, ordered, "o")
        limit = max(3.0, float(np.abs(z).max(initial=0.0)), float(np.abs(theory).max(initial=0.0)))
        z_ax.plot([-limit, limit], [-limit, limit], "k--", lw=0.8, label="z ~ N(0, 1)")
        z_ax.set(xlabel="normal quantile", ylabel="z-score (simulated - analytic) / SE")
    for sign in (-1, 1):
        z_ax.axhline(sign * bound, color="C3", ls=":", lw=0.8, label="failure bound" if sign > 0 else None)
    z_ax.legend(fontsize=7)
    status = "pass" if verdict.passed else "FAIL"
    fig.suptitle(f"{title}\n{status}: p_adj={verdict.adjusted_pvalue:.3g} over {verdict.count} statistics "
                 f"(designed false-failure rate {verdict.false_failure_rate:g})", fontsize=9)  # fmt: skip
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    finally:
        plt.close(fig)
    return path


def write_summary(results, path: Path, *, size, seed, false_failure_rate) -> None:
    from qtm.io import write_json
    from qtm.provenance import provenance

    rows = []
    for r in results:
        row = {"name": r.name, "title": r.title, "status": r.status, "note": r.note, "plot": r.plot}
        if r.comparison is not None:
            c = r.comparison
            columns = zip(c.labels, c.observed, c.standard_error, c.expected, c.zscores(), strict=True)
            row["statistics"] = [
                {"label": label, "observed": o, "standard_error": s, "expected": e, "z": z}
                for label, o, s, e, z in columns
            ]
            row["pvalues"] = dict(c.pvalues)
            row["verdict"] = r.verdict.__dict__
        rows.append(row)
    params = {"size": size, "false_failure_rate": false_failure_rate}
    write_json(path, {"checks": rows, "provenance": provenance(params, seed=seed)})
