"""The numbers and figures of docs/study.md, read from the report folders of `make study`.

Reads only what `chain validate` wrote into each report folder (``fit.json``,
``decomposition.csv``, ``statistics.csv``) under ``REPORTS/<setting>/`` (one folder per CFG
setting, ``all`` for the joint fit over every run, ``finetune-noise`` for the finetuning-seed
noise), writes ``summary.json`` and three PNG figures into ``--out`` and prints the page's
Markdown tables. Nothing is fitted or generated here.

Usage: ``python tools/study_summary.py runs/study-report --out docs/study``
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from validate.skill import persistence_and_trend, replicate_forecast

SETTINGS = ("cfg1", "cfg3", "cfg7.5", "redifine")
LABELS = {
    "cfg1": "CFG 1",
    "cfg3": "CFG 3",
    "cfg7.5": "CFG 7.5",
    "redifine": "CFG 7.5 + ReDiFine",
    "all": "joint (12 runs)",
}
COLOURS = {"cfg1": "tab:blue", "cfg3": "tab:green", "cfg7.5": "tab:red", "redifine": "tab:purple"}
INHERITANCE = ("rho", "rho_v", "mu", "rho_u")
#: The issue's targets: forecast error of the run-level within-caption variance, coverage of 90 % intervals.
TARGET_ERROR = 0.25
TARGET_COVERAGE = (0.80, 0.97)
POOLED = "(all)"


def read_table(path: Path) -> pd.DataFrame | None:
    """A report's CSV table (its provenance lines start with '#'), or None where it was not written."""
    return pd.read_csv(path, comment="#") if path.exists() else None


def read_report(folder: Path) -> dict:
    fit = json.loads((folder / "fit.json").read_text()) if (folder / "fit.json").exists() else None
    return {
        "fit": fit,
        "decomposition": read_table(folder / "decomposition.csv"),
        "statistics": read_table(folder / "statistics.csv"),
    }


def within_variance(statistics: pd.DataFrame) -> pd.DataFrame:
    """Run-level within-caption variance per run and iteration (summed over axes), as the forecast defines it."""
    rows = statistics[
        (statistics["population"] == "generated")
        & (statistics["caption"] == "(within)")
        & (statistics["statistic"] == "var")
    ]
    return rows.groupby(["run", "iteration"], as_index=False)["value"].sum().rename(columns={"value": "measured_var"})


def goodness(fit: dict) -> dict:
    """Goodness of the full fit and of the fit on iterations 0-1, and the forecast's errors and coverage."""
    full, early = fit.get("fit") or {}, fit.get("forecast") or {}
    held = pd.DataFrame(early.get("held_out") or [])
    last = held[held["iteration"] == held["iteration"].max()] if len(held) else held
    return {
        "reduced_chi2": full.get("reduced_chi2"),
        "reduced_chi2_measurement": full.get("reduced_chi2_measurement"),
        "process_sd_mean": full.get("process_sd_mean"),
        "process_sd_log_var": full.get("process_sd_log_var"),
        "measurement_sd_log_var": full.get("measurement_sd_log_var"),
        "lag1": full.get("residual_lag1_autocorrelation"),
        "dof": full.get("dof"),
        "early_reduced_chi2": early.get("reduced_chi2"),
        "early_reduced_chi2_measurement": early.get("reduced_chi2_measurement"),
        "last_iteration": int(last["iteration"].iloc[0]) if len(last) else None,
        "last_relative_errors": last["relative_error"].tolist() if len(last) else [],
        "last_runs": last["run"].tolist() if len(last) else [],
        "last_covered": last["covered"].tolist() if len(last) else [],
        "caption_coverage": early.get("forecast_caption_coverage"),
        "run_coverage": early.get("forecast_run_coverage"),
        "max_abs_relative_error": early.get("forecast_max_abs_relative_error_var"),
    }


def parameters(fit: dict, key: str) -> list[dict]:
    """The fitted parameters (estimate and 95 % interval) of the full fit (``fit``) or the early one (``forecast``)."""
    if key == "forecast":
        return (fit.get("forecast") or {}).get("parameters") or []
    return fit.get("parameters") or []


def pooled(decomposition: pd.DataFrame, quantity: str) -> pd.DataFrame:
    """The per-run rows of a quantity pooled over iterations, captions and axes."""
    d = decomposition
    return d[(d["quantity"] == quantity) & (d["iteration"] == -1) & (d["caption"] == POOLED) & (d["axis"] == -1)]


def selection_response(decomposition: pd.DataFrame) -> dict:
    """Mean S and R over runs, captions, axes and iterations (means and log variances) and the pooled h2 per run."""
    d = decomposition[(decomposition["axis"] >= 0) & ~decomposition["caption"].isin([POOLED, "(uncond)"])]
    out = {}
    for q in ("S_mean", "R_mean", "S_log_var", "R_log_var"):
        values = d.loc[d["quantity"] == q, "value"]
        out[q] = float(values.mean()) if len(values) else None
        out[q + "_sd"] = float(values.std()) if len(values) > 1 else None
    for q in ("h2_mean", "h2_log_var", *INHERITANCE):
        rows = pooled(decomposition, q)
        out[q] = rows[["run", "value", "lo", "hi"]].to_dict(orient="records")
    # Per iteration, the median over the runs: whether inheritance is constant along the chain.
    d = decomposition
    rows = d[d["quantity"].isin(INHERITANCE) & (d["caption"] == POOLED) & (d["axis"] == -1) & (d["iteration"] >= 0)]
    out["by_iteration"] = {
        q: {int(t): float(v) for t, v in r.groupby("iteration")["value"].median().items()}
        for q, r in rows.groupby("quantity")
    }
    return out


def finetune_noise(decomposition: pd.DataFrame | None) -> dict:
    if decomposition is None:
        return {}
    out = {}
    for q in ("finetune_noise_mean", "finetune_noise_excess", "finetune_noise_log_var"):
        rows = decomposition[(decomposition["quantity"] == q) & (decomposition["caption"] == POOLED)]
        out[q] = rows[["axis", "value", "lo", "hi"]].to_dict(orient="records")
    return out


#: The two held-out protocols of docs/study.md: the origin each forecast starts from and the iterations it scores.
PROTOCOLS = {"forecast from 0-1": (1, range(2, 6)), "from iteration 0": (0, range(1, 6))}


def replicate_bound(within: dict[str, list[dict]]) -> dict:
    """How predictable the chains are: each run forecast by its setting's other replicate runs, beside the baselines.

    ``within`` maps each setting to its runs' run-level within-caption variances (:func:`within_variance` records).
    The replicates' forecast is :func:`validate.skill.replicate_forecast` of ln v from each protocol's origin (a
    bound on what a model of the settings could reach, not a baseline) beside
    :func:`validate.skill.persistence_and_trend` from the same origin (from iteration 0 there is no trend). Returns, per
    protocol, the mean |Δ ln var| of each method per setting and pooled over run-iterations, and the ratio of the
    replicates' to the better baseline's.

    Examples
    --------
    >>> rows = lambda run, values: [{"run": run, "iteration": t, "measured_var": v} for t, v in enumerate(values)]
    >>> same = {"a": rows("a-s0", [1, 2, 4, 8, 16, 32]) + rows("a-s1", [2, 4, 8, 16, 32, 64])}
    >>> out = replicate_bound(same)["forecast from 0-1"]["pooled"]
    >>> round(out["replicates"], 12), round(out["persistence"], 3), round(out["trend"], 12)
    (0.0, 1.733, 0.0)
    >>> replicate_bound(same)["from iteration 0"]["pooled"]["trend"] is None
    True
    """
    log_values = pd.DataFrame([{"setting": setting, "run": r["run"], "iteration": r["iteration"],
                                "value": math.log(r["measured_var"])}
                               for setting, records in within.items() for r in records])
    log = log_values.pivot_table(index=["setting", "run"], columns="iteration", values="value", aggfunc="first")
    out = {}
    for protocol, (origin, scored) in PROTOCOLS.items():
        errors: dict[str, list[tuple]] = {}
        forecast = replicate_forecast(log_values, origin=origin)
        for f in forecast[forecast["iteration"].isin(scored)].itertuples():
            x = log.loc[(f.setting, f.run)]
            points = persistence_and_trend(x.index, x.to_numpy(), forecast_from=origin + 1, target=f.iteration)
            trend = points["trend"] if origin >= 1 else np.nan  # one iteration seen: no slope to extend
            errors.setdefault(f.setting, []).append(
                (abs(f.measured - points["persistence"]), abs(f.measured - trend), abs(f.measured - f.predicted)))
        if not errors:  # no setting has two runs
            continue
        result = {}
        for name, values in [*errors.items(), ("pooled", [e for v in errors.values() for e in v])]:
            mean = np.mean(np.array(values, dtype=float), axis=0)
            baselines = {"persistence": mean[0], "trend": mean[1]}
            best = min((k for k, v in baselines.items() if np.isfinite(v)), key=baselines.get)
            # JSON has no NaN: a baseline without a value (no trend from iteration 0) is None.
            result[name] = {**{k: float(v) if np.isfinite(v) else None for k, v in baselines.items()},
                            "replicates": float(mean[2]),
                            "best_baseline": best, "ratio": float(mean[2] / baselines[best]),
                            "run_iterations": len(values)}
        out[protocol] = result
    return out


def plot_breeders(reports: dict, path: Path) -> None:
    """R against S per caption, axis and iteration, one colour per CFG setting; the pooled h2 as a line."""
    figure, panels = plt.subplots(1, 2, figsize=(10, 4.4))
    for panel, quantity in zip(panels, ("mean", "log_var"), strict=True):
        for setting in SETTINGS:
            d = reports.get(setting, {}).get("decomposition")
            if d is None:
                continue
            rows = d[(d["axis"] >= 0) & ~d["caption"].isin([POOLED, "(uncond)"])]
            wide = rows[rows["quantity"].isin([f"S_{quantity}", f"R_{quantity}"])].pivot_table(
                index=["run", "caption", "axis", "iteration"], columns="quantity", values="value"
            )
            wide = wide.dropna()
            if wide.empty:
                continue
            s, r = wide[f"S_{quantity}"].to_numpy(), wide[f"R_{quantity}"].to_numpy()
            panel.scatter(s, r, s=6, alpha=0.35, color=COLOURS[setting], label=LABELS[setting])
            h2 = pooled(d, f"h2_{quantity}")["value"].median()
            if np.isfinite(h2):
                span = np.linspace(np.nanmin(s), np.nanmax(s), 2)
                panel.plot(span, h2 * span, color=COLOURS[setting], lw=1.5)
        panel.axhline(0, color="grey", lw=0.8, ls="--")
        lims = panel.get_xlim()
        panel.plot(lims, lims, color="black", lw=0.8, ls=":", label="R = S")
        what = "mean" if quantity == "mean" else "ln var"
        panel.set_xlabel(f"selection differential S ({what}: guided − CFG-1 of model t)")
        panel.set_ylabel(f"response R ({what}: CFG-1 of model t+1 − model t)")
        panel.set_title(f"trait {what}, per caption × axis × iteration")
    panels[0].legend(fontsize=8, loc="best")
    figure.suptitle("breeder's equation on the tiny chains (lines: median pooled h² = R/S slope per setting)")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def plot_forecast(reports: dict, path: Path) -> None:
    """Measured run-level within-caption variance per iteration, and the forecast from iterations 0-1 (90 % bands)."""
    figure, panels = plt.subplots(1, len(SETTINGS), figsize=(14, 3.8), sharey=True)
    for panel, setting in zip(panels, SETTINGS, strict=True):
        report = reports.get(setting, {})
        if report.get("statistics") is None or report.get("fit") is None:
            panel.set_title(f"{LABELS[setting]}: no report")
            continue
        measured = within_variance(report["statistics"])
        held = pd.DataFrame((report["fit"].get("forecast") or {}).get("held_out") or [])
        for i, (run, rows) in enumerate(measured.groupby("run")):
            colour = f"C{i}"
            panel.plot(rows["iteration"], rows["measured_var"], "o-", color=colour, lw=1, ms=3, label=f"{run} measured")
            if len(held):
                f = held[held["run"] == run].sort_values("iteration")
                panel.plot(f["iteration"], f["predicted_var"], "--", color=colour, lw=1)
                panel.fill_between(f["iteration"], f["lo"], f["hi"], color=colour, alpha=0.15)
        panel.axvline(1.5, color="grey", lw=0.8, ls=":")
        # Log scale: CFG 1 grows tenfold while CFG 7.5 collapses, and the forecast's error is a ratio.
        panel.set_yscale("log")
        panel.set_title(LABELS[setting])
        panel.set_xlabel("iteration")
        panel.legend(fontsize=6)
    panels[0].set_ylabel("within-caption variance (sum over axes)")
    figure.suptitle("forecast from iterations 0–1 (dashed: median, band: 90 % interval) against the measurement")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def plot_inheritance(reports: dict, path: Path) -> None:
    """rho, rho_v, mu and rho_u per iteration with 95 % bootstrap intervals, one colour per setting."""
    figure, panels = plt.subplots(1, len(INHERITANCE), figsize=(14, 3.6))
    for panel, quantity in zip(panels, INHERITANCE, strict=True):
        for k, setting in enumerate(SETTINGS):
            d = reports.get(setting, {}).get("decomposition")
            if d is None:
                continue
            rows = d[(d["quantity"] == quantity) & (d["caption"] == POOLED) & (d["axis"] == -1) & (d["iteration"] >= 0)]
            for j, (_, r) in enumerate(rows.groupby("run")):
                x = r["iteration"].to_numpy() + 0.06 * (3 * k + j) - 0.33
                panel.errorbar(
                    x,
                    r["value"],
                    yerr=[r["value"] - r["lo"], r["hi"] - r["value"]],
                    fmt="o",
                    ms=2.5,
                    lw=0.7,
                    color=COLOURS[setting],
                    label=LABELS[setting] if j == 0 else None,
                )
        panel.axhline(0, color="grey", lw=0.8, ls="--")
        panel.set_title(quantity)
        panel.set_xlabel("iteration")
    panels[0].legend(fontsize=7)
    figure.suptitle("inheritance against the training set per iteration (3 runs per setting, 95 % bootstrap intervals)")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def fmt(value, digits=3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}g}"


def interval(row: dict) -> str:
    return f"{fmt(row['value'])} [{fmt(row['lo'])}, {fmt(row['hi'])}]"


def plus_minus(parameter: dict) -> str:
    """A fitted parameter as estimate ± the half-width of its 95 % interval (– where unidentified)."""
    half = None if parameter["stderr"] is None else 1.96 * parameter["stderr"]
    return f"{fmt(parameter['estimate'])} ± {fmt(half, 2)}"


def markdown(summary: dict) -> str:
    lines = [
        "| setting | reduced χ² (fitted process noise) | reduced χ² (measurement noise only) | process SD ln var | "
        "lag-1 residual autocorr. | fit on 0–1: reduced χ² | iteration-5 variance error per run | "
        "per-caption coverage (90 %) | run-level coverage |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for setting, s in summary["settings"].items():
        g = s["goodness"]
        errors = ", ".join(f"{100 * e:+.0f} %" for e in g["last_relative_errors"]) or "–"
        lines.append(
            f"| {LABELS.get(setting, setting)} | {fmt(g['reduced_chi2'])} | {fmt(g['reduced_chi2_measurement'])} | "
            f"{fmt(g['process_sd_log_var'])} | {fmt(g['lag1'], 2)} | {fmt(g['early_reduced_chi2'])} | {errors} | "
            f"{fmt(None if g['caption_coverage'] is None else 100 * g['caption_coverage'], 3)} % | "
            f"{fmt(None if g['run_coverage'] is None else 100 * g['run_coverage'], 3)} % |"
        )
    lines += [
        "",
        "| setting | mean S ln var | mean R ln var | mean S mean | mean R mean | h² ln var per run | h² mean per run |",
        "|---|---|---|---|---|---|---|",
    ]
    for setting, s in summary["settings"].items():
        d = s.get("decomposition")
        if not d:
            continue
        lines.append(
            f"| {LABELS.get(setting, setting)} | {fmt(d['S_log_var'])} | {fmt(d['R_log_var'])} | {fmt(d['S_mean'])} | "
            f"{fmt(d['R_mean'])} | {'; '.join(interval(r) for r in d['h2_log_var'])} | "
            f"{'; '.join(interval(r) for r in d['h2_mean'])} |"
        )
    lines += ["", "| setting | ρ | ρ_v | μ | ρ_u |", "|---|---|---|---|---|"]
    for setting, s in summary["settings"].items():
        d = s.get("decomposition")
        if not d:
            continue
        cells = ["<br>".join(interval(r) for r in d[q]) for q in INHERITANCE]
        lines.append(f"| {LABELS.get(setting, setting)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| setting | fidelity ρ | uncond_fidelity ρ_u | var_fidelity ρ_v | var_shift μ | w_eff | process SD mean | "
        "process SD ln var |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for setting, s in summary["settings"].items():
        params = {(p["parameter"], p["setting"]): p for p in s["parameters"]}
        cells = []
        for name in ("fidelity", "uncond_fidelity", "var_fidelity", "var_shift"):
            p = params.get((name, "")) or params.get((name, None))
            cells.append("–" if p is None else plus_minus(p))
        weff = [p for (name, _), p in params.items() if name == "w_eff"]
        cells.append("; ".join(f"{p['setting']}: {plus_minus(p)}" for p in weff) or "–")
        cells += [fmt(s["goodness"]["process_sd_mean"]), fmt(s["goodness"]["process_sd_log_var"])]
        lines.append(f"| {LABELS.get(setting, setting)} | " + " | ".join(cells) + " |")
    lines += ["", "| setting | quantity | median over runs at iteration 0, 1, 2, 3, 4, 5 |", "|---|---|---|"]
    for setting, s in summary["settings"].items():
        d = s.get("decomposition")
        for q in INHERITANCE if d else ():
            values = d["by_iteration"].get(q, {})
            lines.append(
                f"| {LABELS.get(setting, setting)} | {q} | "
                + ", ".join(fmt(values[t], 2) for t in sorted(values))
                + " |"
            )
    bound = summary.get("replicate_bound") or {}
    if bound:
        lines += ["", "| protocol | setting | persistence | trend | the setting's other seeds | ratio to the better "
                  "baseline | run-iterations |", "|---|---|---|---|---|---|---|"]
        for protocol, rows in bound.items():
            for name, r in rows.items():
                lines.append(f"| {protocol} | {LABELS.get(name, name)} | {fmt(r['persistence'])} | {fmt(r['trend'])} | "
                             f"{fmt(r['replicates'])} | {fmt(r['ratio'], 2)} ({r['best_baseline']}) | "
                             f"{r['run_iterations']} |")
    noise = summary.get("finetune_noise") or {}
    if noise:
        lines += ["", "finetuning-seed noise (pooled over captions, per axis):"]
        for q, rows in noise.items():
            lines.append(f"- {q}: " + "; ".join(f"axis {r['axis']}: {interval(r)}" for r in rows))
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", type=Path, help="folder holding one report folder per setting (and all/)")
    parser.add_argument("--out", type=Path, required=True, help="folder of the page's figures and summary.json")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    reports = {
        name: read_report(args.reports / name)
        for name in (*SETTINGS, "all", "finetune-noise")
        if (args.reports / name).is_dir()
    }
    summary = {"settings": {}, "targets": {"relative_error": TARGET_ERROR, "coverage": TARGET_COVERAGE}}
    for name in (*SETTINGS, "all"):
        report = reports.get(name)
        if report is None or report["fit"] is None:
            continue
        summary["settings"][name] = {
            "goodness": goodness(report["fit"]),
            "parameters": parameters(report["fit"], "fit"),
            "early_parameters": parameters(report["fit"], "forecast"),
            "decomposition": None if report["decomposition"] is None else selection_response(report["decomposition"]),
            "within_variance": None
            if report["statistics"] is None
            else within_variance(report["statistics"]).to_dict(orient="records"),
        }
    summary["replicate_bound"] = replicate_bound(
        {name: s["within_variance"] for name, s in summary["settings"].items()
         if name in SETTINGS and s["within_variance"]})
    summary["finetune_noise"] = finetune_noise(reports.get("finetune-noise", {}).get("decomposition"))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    plot_breeders(reports, args.out / "breeders.png")
    plot_forecast(reports, args.out / "forecast_var.png")
    plot_inheritance(reports, args.out / "inheritance.png")
    print(markdown(summary))


if __name__ == "__main__":
    main()
