"""The Markdown of ``chain validate``'s ``report.md``: its tables and its text.

:func:`markdown_report` turns what :func:`validate.pipeline.validate_runs` measured
and fitted into the page; :func:`validate.report.write_report` writes it with the
tables and plots it links to.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd

from validate.conformal import describe_stretch
from validate.skill import GOAL_RATIO, METHODS, RUN_LEVEL, partial_baselines, skill_summary
from validate.statistics import ALL_CAPTIONS, WITHIN_CAPTIONS

#: Above this many per-caption skill rows the report links skill.csv instead of showing them.
CAPTION_ROWS_SHOWN = 48
#: A line of the page that shows one of the report's plots (the sample grids are images, not plots).
PLOT_LINE = re.compile(r"!\[[^\]]*\]\((?!samples_)[\w.-]+\.png\)")


def markdown_table(frame: pd.DataFrame, *, digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table of ``frame`` (floats to ``digits`` significant digits; ``|`` escaped).

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
        return str(value).replace("|", "\\|")

    lines = [
        "| " + " | ".join(map(cell, frame.columns)) + " |",
        "| " + " | ".join("---" for _ in frame.columns) + " |",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def markdown_report(validation) -> str:
    """The text of ``report.md`` for a :class:`validate.pipeline.Validation` (links name the report's files)."""
    runs, model, statistics = validation.runs, validation.embedder, validation.statistics
    trait_axes, reference_name, group = validation.trait_axes, validation.reference_name, validation.group
    fit, forecast, fit_note = validation.fit, validation.forecast, validation.notes
    forecast_from, captions = validation.forecast_from, validation.captions
    labels = statistics.drop_duplicates("run").set_index("run")["label"].to_dict()
    lines = [
        "# Validation of the theory against chain runs",
        "",
        *(prediction_section(validation.prediction) if validation.prediction is not None else []),
        *(forecast_skill(forecast, forecast_from) if forecast is not None and forecast.skill is not None else []),
        f"Embedder: **{model.name}** (`{json.dumps(model.settings())}`). Reference population for the "
        f"trait axes and the Fréchet distance: **{reference_name}**. "
        f"Trait axes: top {trait_axes.k} principal components "
        f"(share of the reference's variance: {', '.join(f'{e:.3f}' for e in trait_axes.explained)}).",
        "",
        *(
            [
                "**The CLIP model has RANDOM weights: this report tests the plumbing only; its numbers mean nothing.**",
                "",
            ]
            if model.settings().get("pretrained") == "random"
            else []
        ),
        (
            f"Traits are measured **within each caption** ({len(captions)} captions, `--group caption`): the axes "
            "are the principal components of the reference's within-caption deviations, `statistics.csv` has one "
            "row set per caption (`caption` column), and the `(within)` rows and `within_*` columns below are the "
            "mean over captions of the within-caption variance (bootstrap resampling images within captions). "
            "The fit is joint over captions: "
            + ("one guidance gain g for every setting (the mean selected by the sampler at w_eff = 1 + g (cfg - 1)), "
               "one selection slope beta (ln var selected by beta ln w_geo, w_geo the geometric mean CFG scale), "
               "rho, the unconditional drift"
               if validation.provenance["parameters"].get("guidance") == "shared"
               else "shared w_eff per CFG setting, rho, rho_u")
            + " and p_u; p_c per caption."
            if group == "caption"
            else f"Traits are pooled over all images of an iteration (`--group none`; {len(captions)} caption(s))."
        ),
        "",
        "The reference sample's own variance on its top principal axes is biased upward (PCA picks the "
        "directions in which that sample happens to vary most), most at small sample sizes; compare iterations "
        "with each other rather than with the reference where that matters.",
        "",
        "## Runs",
        "",
        markdown_table(
            pd.DataFrame(
                [
                    {
                        "run": run.name,
                        "settings": labels.get(run.name, run.name),
                        "finished iterations": ", ".join(map(str, sorted(run.iterations))),
                        "skipped": ", ".join(run.skipped) or "–",
                        "reference points": ", ".join(sorted(run.reference)) or "–",
                    }
                    for run in runs
                ]
            )
        ),
        "",
        f"## Statistics per iteration ({model.name} embedding)",
        "",
        "Point estimates with 95% bootstrap intervals in [`statistics.csv`](statistics.csv) "
        "([parquet](statistics.parquet)); total variance is in the standardised feature space.",
        "",
        markdown_table(_wide(statistics)),
        "",
        "![variance per iteration](var.png)",
        "",
        "![mean per iteration](mean.png)",
        "",
        "![total variance and Fréchet distance](summary.png)",
        "",
        "## Theory fitted to the trajectories",
        "",
    ]
    if group == "none" and len(captions) > 1:
        fit_note = [
            *fit_note,
            f"the traits are pooled over {len(captions)} captions, but CFG selects within each caption: pooled over "
            f"captions p_c is close to p_u, so the tilt model can miss the mean shifts that CFG causes per caption "
            f"(`--group caption` fits within captions)",
        ]
    lines += [f"- {note}" for note in fit_note]
    if fit is not None:
        g = fit.goodness
        lines += [
            "",
            *(
                ["**The optimiser did not converge** (see `fit.json`); the parameters below are indicative only.", ""]
                if not g["success"]
                else []
            ),
            "One-step-ahead fit: each iteration's per-caption mean and log variance is predicted from the measured "
            "previous one (finetuning with fidelity rho, unconditional fidelity rho_u, log-space variance inheritance "
            "rho_v toward the base with shift mu, then the exact guided-sampler map with w_eff per CFG setting), "
            "with measurement noise (kurtosis-corrected for log variances) and a fitted process noise per quantity: "
            f"χ² = {g['chi2']:.4g} on {g['dof']} degrees of freedom (reduced {g['reduced_chi2']:.3g}; the process "
            "noise is fitted by maximum likelihood, so this is near 1 by construction). Without process noise, "
            f"reduced χ² {g['reduced_chi2_measurement']:.3g}: the process noise (SD {g['process_sd_mean']:.3g} on "
            f"means, {g['process_sd_log_var']:.3g} on log variances, in base-model SD units) against the "
            f"measurement noise (RMS SD {g['measurement_sd_mean']:.3g} and {g['measurement_sd_log_var']:.3g}) is "
            "the size of what the transition does not explain. Lag-1 autocorrelation of the standardised residuals: "
            f"{g['residual_lag1_autocorrelation']:.3g}. RMSE of log variance {g['fit_rmse_log_var']:.3g}, of the "
            f"mean {g['fit_rmse_mean']:.3g}; optimiser: {g['message']}",
            "",
            markdown_table(fit.parameters[["parameter", "setting", "cfg", "estimate", "stderr", "lo", "hi", "bound"]]),
            "",
            "95 % intervals from the Hessian of the likelihood (inf: not identified by these runs; bound: the estimate "
            "sits at that end of the parameter's range, where the interval is no confidence interval). Fitted "
            "parameters: [`parameters.csv`](parameters.csv); one-step predictions against measurements: "
            "[`predicted_vs_measured.csv`](predicted_vs_measured.csv); everything in [`fit.json`](fit.json).",
            "",
            "![fitted selection strength against CFG](strength.png)",
        ]
    if forecast is not None:
        g = forecast.goodness
        held_out = pd.DataFrame(forecast.forecast)
        lines += [
            "",
            f"## Forecast from the first {forecast_from} iterations",
            "",
            f"{_forecast_model(g, forecast_from)}, then the transition iterated from the measured state at "
            f"iteration {forecast_from - 1} ({FORECAST_DRAWS_TEXT}). {100 * g['forecast_level']:.0f} % prediction "
            f"intervals cover {100 * g['forecast_caption_coverage']:.0f} % of the held-out per-caption means and "
            f"log variances and {100 * g['forecast_run_coverage']:.0f} % of the run-level within-caption variances; "
            f"largest relative error of the run-level variance {100 * g['forecast_max_abs_relative_error_var']:.0f} %"
            f"; RMSE of log variance {g['forecast_rmse_log_var']:.3g}, of the mean {g['forecast_rmse_mean']:.3g}. "
            "Table: [`forecast.csv`](forecast.csv).",
            "",
            markdown_table(held_out),
            "",
            "![forecast](forecast_var.png)",
        ]
    decomposition = validation.decomposition
    if decomposition is not None and len(decomposition):
        lines += [
            "",
            "## Selection and response per iteration (breeder's equation)",
            "",
            *_decomposition(decomposition),
        ]
    diversity = validation.diversity
    if diversity is not None and len(diversity):
        lines += ["", "## Diversity and fidelity per iteration", "", *_diversity(diversity)]
    selection = validation.selection
    if selection is not None and selection.scores is not None:
        lines += ["", "## The selection law: S(w) measured and predicted", "", *_selection(selection)]
    lines += ["", "## Sample images (one row per iteration)", ""]
    lines += [f"- {run.name}: ![samples {run.name}](samples_{run.name}.png)" for run in runs]
    if not validation.plots:
        lines = [line for line in lines if not PLOT_LINE.fullmatch(line)]
        lines[1:1] = ["", "Plots not drawn (`--no-plots`): every value shown in them is in the tables.", ""]
    return "\n".join(lines) + "\n"


def forecast_skill(forecast, forecast_from: int) -> list[str]:
    """The opening section of ``--forecast-from``: the forecast's skill against persistence and the trend."""
    return skill_section(
        forecast.skill, forecast.goodness, heading=f"Forecast skill from iteration {forecast_from} against naive "
        "baselines", how=f"{_forecast_model(forecast.goodness, forecast_from)}; both baselines see the iterations "
        f"< {forecast_from}: "
        f"**persistence** holds iteration {forecast_from - 1}'s measured value, the **trend** extends the "
        f"least-squares line through iterations 0–{forecast_from - 1} (of ln var: log-linear; of the mean: linear).",
    )


def _forecast_model(goodness: dict, forecast_from: int) -> str:
    """Where the forecast's parameters came from: a fit on the iterations before it, or a calibration file."""
    calibration = goodness.get("forecast_calibration")
    if calibration is None:
        return f"Fitted on iterations < {forecast_from}"
    runs = calibration["training_runs"]
    return (f"Parameters and process noise from the calibration `{calibration.get('path', 'given in Python')}` (the "
            f"shared model fitted on {runs} run{'s' if runs != 1 else ''}, named in its provenance), none fitted on "
            "these runs")


def prediction_section(prediction) -> list[str]:
    """The opening section of ``--predict``: the held-out runs' prediction against its baselines."""
    g = prediction.goodness
    origin = g["predict_from"] - 1
    trend = (f"; **trend** extends the held-out run's least-squares line through iterations 0–{origin} (of ln var: "
             "log-linear)") if origin >= 1 else ""
    section = skill_section(
        prediction.skill, g, heading="Prediction of held-out runs against naive baselines",
        how=f"The one model for every setting (shared guidance gain, selection slope and inheritance, no parameter "
        "per CFG setting) "
        f"was fitted on {len(g['training_runs'])} training run(s) and predicted every iteration of the held-out "
        f"run(s) {', '.join(g['held_out_runs'])} from their measured iteration {origin} and run.json settings only. "
        f"Baselines from the same information: **persistence** holds iteration {origin}; **nearest** adds to it the "
        f"mean change from iteration {origin} of the nearest training setting (same schedule and drop where there is "
        "one); **interpolation** the change interpolated linearly in CFG between the bracketing training settings "
        f"(missing where none bracket){trend}. Run-level 90 % coverage "
        f"{100 * g['predict_run_coverage']:.0f} %, caption level {100 * g['predict_caption_coverage']:.0f} %. "
        f"{interval_calibration_sentence(g)} "
        "The fit as a calibration for `qtm simulate --calibration`: [`calibration.json`](calibration.json).",
    )
    return [*section, "![prediction](prediction.png)", ""]


def interval_calibration_sentence(g: dict) -> str:
    """What the conformal calibration of the prediction intervals found (:mod:`validate.conformal`)."""
    pools = g.get("interval_calibration")
    if pools is None:
        return "`--conformal` would calibrate the intervals out of sample (one more fit per training setting)."
    if not pools:
        return "`--conformal` calibrates the intervals only with two or more training settings."
    parts = []
    for pool, c in pools.items():
        covering = "" if c["coverage"] is None else f", covering {100 * c['coverage']:.0f} %"
        parts.append(f"{pool} {describe_stretch(c['stretch'])} from {c['scores']} scores{covering}")
    return ("Conformal intervals (each training setting predicted from a fit on the others; the theory's "
            f"intervals stretched, per iteration, until they cover {100 * g['predict_level']:.0f} % of those "
            "predictions' values): " + "; ".join(parts) + ".")


def with_interval(value, low, high) -> str:
    """``value [low, high]``, or the value alone where there is no interval (``--bootstrap 0``).

    Examples
    --------
    >>> with_interval(0.5, 0.25, 0.75), with_interval(0.5, float("nan"), float("nan"))
    ('0.5 [0.25, 0.75]', '0.5')
    """
    if pd.isna(low) or pd.isna(high):
        return f"{value:.3g}"
    return f"{value:.3g} [{low:.3g}, {high:.3g}]"


def _theory_cell(row) -> str:
    """The theory's median and 90 % interval, and its conformal interval where ``--conformal`` gave one."""
    cell = with_interval(row["predicted"], row["lo"], row["hi"])
    low, high = row.get("conformal_lo", math.nan), row.get("conformal_hi", math.nan)
    if pd.isna(low) or pd.isna(high):
        return cell
    if math.isinf(low) or math.isinf(high):
        return cell + ", conformal unbounded"
    return cell + f", conformal [{low:.3g}, {high:.3g}]"


def skill_section(table: pd.DataFrame, g: dict, *, heading: str, how: str) -> list[str]:
    """A skill table's section: the verdict against the better baseline, the summary, the run-level values."""
    better = g["skill_better_baseline"]
    ratio, n = g["skill_ratio"], g["skill_forecasts"]
    if not math.isfinite(ratio):
        verdict = "The better baseline is exact here, so no ratio can be given."
    else:
        verdict = (
            f"The theory {'beat' if ratio < 1 else 'did not beat'} the better baseline ({better}): its mean "
            f"|Δ ln var| of the run-level variance is {g['skill_theory_abs_log_var']:.3g} against "
            f"{g[f'skill_{better}_abs_log_var']:.3g}, a ratio of {ratio:.2f}; the goal of at most {GOAL_RATIO:g} "
            f"against every baseline is {'met' if g['skill_goal_met'] else 'not met'}."
        )
        partial = partial_baselines(g)
        if partial:
            verdict += (f" The better baseline is chosen among those every run-iteration has; against the others, on "
                        f"the values they have: {'; '.join(partial)}.")
    wins = [f"{m} in {g[f'skill_theory_wins_over_{m}']}" for m in METHODS[1:] if f"skill_theory_wins_over_{m}" in g]
    cell = table.assign(
        value=np.where(
            table["method"] == "theory",
            table.apply(_theory_cell, axis=1),
            table["predicted"].map(lambda v: f"{v:.3g}"),
        )
    )

    def wide(rows, index):
        out = rows.pivot_table(index=index, columns="method", values="value", aggfunc="first", sort=False)
        measured = rows.drop_duplicates(index).set_index(index)["measured"].map(lambda v: f"{v:.3g}")
        return out.assign(measured=measured).reset_index()

    run = cell[cell["caption"] == RUN_LEVEL]
    captions = cell[cell["caption"] != RUN_LEVEL].drop_duplicates(
        ["run", "caption", "iteration", "axis", "quantity"]
    )
    shown = len(captions) <= CAPTION_ROWS_SHOWN
    return [
        f"## {heading}",
        "",
        f"{verdict} Closer than {', '.join(wins)} of {n} run-iterations.",
        "",
        f"{how} |Δ mean| is in SDs of "
        "the real data on that axis (the base model's where no real data was measured). The theory's CRPS is "
        "that of its forecast draws (`scoringrules.crps_ensemble`); the baselines are point forecasts, whose "
        "CRPS is their absolute error. Coverage: the theory's 90 % prediction intervals; run level: the "
        "within-caption variance, averaged over captions and summed over axes. Every value: "
        "[`skill.csv`](skill.csv).",
        "",
        markdown_table(skill_summary(table).reset_index(), digits=3),
        "",
        "ln of the run-level within-caption variance per held-out iteration (theory: median [90 % interval]):",
        "",
        markdown_table(wide(run, ["run", "iteration"])),
        *(
            ["", "Per caption and axis (ln var, and the mean in trait units):", "",
             markdown_table(wide(cell[cell["caption"] != RUN_LEVEL], ["run", "caption", "iteration", "axis",
                                                                       "quantity"]))]
            if shown
            else ["", f"The {len(captions)} per-caption values are in [`skill.csv`](skill.csv)."]
        ),
        "",
    ]


def _wide(statistics: pd.DataFrame) -> pd.DataFrame:
    """One row per run and iteration: total variance, Fréchet distance, alignment, first axes' variance.

    Pooled over captions; with per-caption statistics also their within-caption summary (``within_`` columns).
    """
    generated = statistics[statistics["population"] != "generated"].assign(iteration=-1)
    rows = pd.concat([statistics[statistics["population"] == "generated"], generated])
    rows = rows[rows["caption"].isin([ALL_CAPTIONS, WITHIN_CAPTIONS])]
    column = np.where(rows["axis"] >= 0, rows["statistic"] + "_" + rows["axis"].astype(str), rows["statistic"])
    rows = rows.assign(column=np.where(rows["caption"] == WITHIN_CAPTIONS, "within_" + column, column))
    pooled = ["total_var", "frechet", "alignment"] + [f"var_{a}" for a in range(3)]
    keep = pooled + [f"within_{c}" for c in pooled if c.startswith(("var", "total"))]
    rows = rows[rows["column"].isin(keep)]
    wide = rows.pivot_table(
        index=["run", "population", "iteration"], columns="column", values="value", sort=False
    ).reset_index()
    wide["iteration"] = wide["iteration"].map(lambda i: "–" if i < 0 else str(i))
    return wide[["run", "population", "iteration"] + [c for c in keep if c in wide.columns]]


def _diversity(table: pd.DataFrame) -> list[str]:
    """The diversity metrics' summary table (within captions, or pooled) and their figure."""
    within = table[table["caption"] == WITHIN_CAPTIONS]
    rows = within if len(within) else table[table["caption"] == ALL_CAPTIONS]
    wide = rows.assign(cell=rows.apply(lambda r: with_interval(r["value"], r["ci_low"], r["ci_high"]), axis=1))
    wide = wide.pivot_table(index=["run", "iteration"], columns="statistic", values="cell", aggfunc="first",
                            sort=False)
    return [
        "Each iteration's images against the reference population, "
        + ("per caption, averaged over captions" if len(within) else "pooled")
        + " (Kynkäänniemi et al. 2019 precision and recall, Naeem et al. 2020 density and coverage, k = 5; "
        "the Vendi score of the generated set with a cosine kernel; `vendi_real` is the reference's). Recall "
        "and coverage fall when diversity collapses. Bootstrap intervals in brackets; every caption: "
        "[`diversity.csv`](diversity.csv).",
        "",
        markdown_table(wide.reset_index().fillna("–")),
        "",
        "![diversity](diversity.png)",
    ]


FORECAST_DRAWS_TEXT = (
    "parameters drawn from their approximate posterior, process noise at every step, measurement noise of the "
    "start and of the target"
)


def _decomposition(table: pd.DataFrame) -> list[str]:
    """The decomposition's summary table (pooled rows) and its figure."""
    pooled = table[(table["caption"] == ALL_CAPTIONS) & (table["axis"] < 0)]
    wide = pooled.assign(
        cell=pooled.apply(lambda r: with_interval(r["value"], r["lo"], r["hi"]), axis=1),
        iteration=pooled["iteration"].map(lambda i: "all" if i < 0 else str(i)),
    ).pivot_table(index=["run", "iteration"], columns="quantity", values="cell", aggfunc="first", sort=False)
    return [
        "Per iteration t: the selection differential S_t (guided minus CFG-1 samples of model t), the response "
        "R_t (CFG-1 samples of model t+1 minus model t), the realised heritability h2 = R/S (here the slope of R "
        "on S across captions and axes), the inheritance slopes against the training set (rho from means, rho_v "
        "and its intercept mu from log variances, rho_u from the unconditional branch) and, where replicate "
        "finetunes exist, the finetuning-seed noise in within-caption SDs; 95 % intervals in brackets (bootstrap; "
        "for rho_v, mu and h2 of ln var a t interval from the jackknife over caption-axis pairs). "
        "Every caption and axis, and the unconditional drift: [`decomposition.csv`](decomposition.csv).",
        "",
        markdown_table(wide.reset_index().fillna("–")),
        "",
        "![response against selection](breeders.png)",
    ]


def _selection(curve) -> list[str]:
    """The selection curve's scores (law and correction), the correction's choice and its figures."""
    every = curve.scores
    scores = every[every["level"] == "caption"]
    law = scores[scores["prediction"] == "predicted"]
    table = law.assign(axis=law["axis"].map(lambda a: "all" if a < 0 else str(a)))
    table = table.pivot_table(index=["statistic", "axis"], columns="w", values=["r2", "slope"], sort=False)
    table.columns = [f"{value} ({w})" for value, w in table.columns]
    c = curve.correction
    laws = "; ".join(f"{run}: {law.sampler}, {law.steps} steps, schedule {law.schedule}, scheduler from {law.source}"
                     for run, law in curve.laws.items())
    held = scores[(scores["prediction"] == "corrected") & (scores["w"] == "w >= 5") & (scores["axis"] < 0)]
    held = held.set_index("statistic")
    if not c["possible"]:
        chosen = "No correction was chosen: the CFG values need some w ≤ 3 to choose on and some w ≥ 5 to test on."
    elif c["correction"] == "none":
        chosen = ("No correction was used: none of the one-parameter corrections lowered the squared error on "
                  "w ≤ 3 by more than 1 %.")
    else:
        chosen = (f"Correction used: **{c['correction']} = {c['value']:.3g}**, chosen on {c['chosen_on']} only; "
                  f"held out ({c['tested_on']}): ln var R² {held.loc['log_var', 'r2']:.3g}, slope "
                  f"{held.loc['log_var', 'slope']:.3g}; mean R² {held.loc['mean', 'r2']:.3g}, slope "
                  f"{held.loc['mean', 'slope']:.3g}.")
    return [
        "For each model (the base model and every iteration's) and caption, the selection differential S(w) = "
        "stat(w) − stat(1) on the trait mean and on ln var, from samples at peak CFG w paired by seed with the "
        "model's CFG-1 samples (95 % paired-bootstrap intervals), against the exact sampler law with no free "
        "parameter: Gaussian p_c (the caption's CFG-1 samples) and p_u (the unconditional samples) per trait axis, "
        f"pushed through the run's sampler ({laws}). R² is about the identity line (1 − SS_res / SS_tot); the "
        "slope is that of measured on predicted. Every caption, axis, model and w: "
        "[`selection_curve.csv`](selection_curve.csv).",
        "",
        markdown_table(table.reset_index()),
        "",
        f"{chosen} Every candidate (one trait-space scale shared by all CFG values and models, chosen on w ≤ 3):",
        "",
        markdown_table(curve.candidates),
        "",
        *_mixture_lines(every),
        "![selection curve](selection_curve.png)",
        "",
        "![measured against predicted](selection_agreement.png)",
    ]


def _mixture_lines(scores) -> list[str]:
    """The Gaussian law and the mixture law scored on the captions' mean S per model, axis and w."""
    mean_level = scores[(scores["level"] == "captions' mean") & (scores["axis"] < 0)
                        & scores["prediction"].isin(["predicted", "mixture"])]
    if not len(mean_level) or mean_level.loc[mean_level["prediction"] == "mixture", "r2"].isna().all():
        return []
    table = mean_level.assign(law=mean_level["prediction"].map({"predicted": "Gaussian p_u", "mixture": "mixture p_u"}))
    table = table.pivot_table(index=["statistic", "law"], columns="w", values=["r2", "slope"], sort=False)
    table.columns = [f"{value} ({w})" for value, w in table.columns]
    return [
        "The law again with p_u the equal-weight mixture of the captions' Gaussians (no free parameter; "
        "`mixture_S_*` in the table, by particles: `qtm.mixture_law`): guidance then tilts by the caption's "
        "posterior p(c | x)^(w−1), which is bounded, so selection saturates with w where the single-Gaussian law "
        "keeps sharpening. Both laws scored on the captions' mean S per model, axis and w (each caption's own S "
        "rests on a few pairs, and its sampling noise dominates the R² above):",
        "",
        markdown_table(table.reset_index()),
        "",
    ]
