"""The selection curve of ``chain validate --selection-curve``: measured S(w), the exact law, the correction."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from test_cli_usage import run_main
from test_validate_command import TINY_CONFIG, TWO_CAPTIONS, add_samples, make_run, tiny_run, write_folder  # noqa: F401

from qtm.rundir import selection_folder, selection_kind
from qtm.sampler_map import guided_moments
from qtm.solvers import SchedulerConfig
from validate.errors import ValidateError
from validate.pipeline import validate_runs
from validate.selection import SamplerLaw, SelectionCurve, paired_selection, parse_cfgs, predicted_selection
from validate.selection_fit import CHOSEN_ON, fit_selection

CFGS = (1.5, 3.0, 5.0)
TINY_LAW = SamplerLaw("ddim", 10, "constant", SchedulerConfig(beta_schedule="squaredcos_cap_v2", steps_offset=0,
                                                              set_alpha_to_one=True), "test")


def test_prediction_is_the_exact_law_for_gaussian_samples():
    """p_c and p_u fitted to Gaussian samples, pushed through predicted_selection and through qtm directly."""
    rng = np.random.default_rng(0)
    cond = rng.normal([0.5, -1.0], [0.7, 1.2], size=(4000, 2))
    uncond = rng.normal([0.0, 0.0], [1.1, 1.5], size=(4000, 2))
    cm, cv, um, uv = cond.mean(0), cond.var(0, ddof=1), uncond.mean(0), uncond.var(0, ddof=1)
    s_mean, s_log = predicted_selection(cm, cv, um, uv, CFGS, law=TINY_LAW)
    unit = np.sqrt(uv)
    for j, w in enumerate(CFGS):
        kwargs = {"sampler": "ddim", "steps": 10, "scheduler": TINY_LAW.scheduler}
        at_w = guided_moments((cm - um) / unit, cv / unit**2, 0.0, uv / unit**2, cfg=w, **kwargs)
        at_1 = guided_moments((cm - um) / unit, cv / unit**2, 0.0, uv / unit**2, cfg=1.0, **kwargs)
        np.testing.assert_allclose(s_mean[:, j], (at_w.mean - at_1.mean) * unit, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(s_log[:, j], np.log(at_w.var / at_1.var), rtol=1e-12, atol=1e-12)
    # Guidance toward a narrower p_c than p_u selects: the log variance falls as w grows.
    assert np.all(np.diff(s_log, axis=1) < 0)


def test_paired_bootstrap_measures_the_difference():
    """Pairs that differ by a known factor 0.5: S on ln var is ln 0.25 exactly, in every resample."""
    rng = np.random.default_rng(1)
    base = rng.standard_normal((12, 2))
    out = paired_selection(0.5 * base + 1.0, base, ["a"] * 6 + ["b"] * 6, n_boot=50, random_state=rng)
    np.testing.assert_allclose(out["log_var"], np.log(0.25))
    np.testing.assert_allclose(out["mean"][0, 0], 1.0 - 0.5 * base[:6].mean(0))


@pytest.mark.parametrize("text", ["2,0", "2,-1", "2,3,2", "2,x", ""])
def test_bad_cfg_values_are_refused(text):
    with pytest.raises(ValidateError, match="--selection-cfg"):
        parse_cfgs(text)


def test_cli_bad_cfg_values_one_line_exit_2_nothing_written(monkeypatch, capsys, tmp_path):
    from commands.chain_program import main

    run = make_run(tmp_path, "run", cfg=2.0, shrink=1.0, iterations=1, n=8)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    for values, message in (("1.5,0,3", "w = 0 must be a finite number > 0"), ("2,3,2", "w = 2 is given twice")):
        status, _, stderr = run_main(monkeypatch, capsys, main, "chain", "validate", str(run), "--selection-cfg",
                                     values, "--report", str(tmp_path / "r"))
        assert status == 2, stderr
        assert stderr.strip().splitlines() == [f"chain: error: {stderr.split('error: ', 1)[1].strip()}"]
        assert message in stderr
    assert not (tmp_path / "r").exists()
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def _selection_run(tmp_path):
    """A one-iteration run with image folders where chain.selection_samples would write them (no law.json)."""
    run = make_run(tmp_path, "cfg3", cfg=3.0, shrink=1.0, iterations=1, n=24, seed=4, captions=TWO_CAPTIONS,
                   reference=True)
    add_samples(run, iterations=1, n=24, seed=5, captions=TWO_CAPTIONS)
    rng = np.random.default_rng(6)
    write_folder(selection_folder(run, -1, "cfg1"), n=24, sd=0.2, rng=rng, status=None, captions=TWO_CAPTIONS)
    write_folder(selection_folder(run, -1, "uncond"), n=12, sd=0.3, rng=rng, status=None, captions={"": 0.5})
    for t in (-1, 0):
        for w in CFGS:
            write_folder(selection_folder(run, t, selection_kind(w)), n=8, sd=0.2 / w, rng=rng, status=None,
                         captions=TWO_CAPTIONS)
    return run


def test_csv_columns_rows_and_the_law_from_its_own_inputs(tmp_path):
    run = _selection_run(tmp_path)
    messages = []
    validate_runs([run], report=tmp_path / "r", axes=2, bootstrap=20, selection_curve=CFGS, warn=messages.append)
    table = pd.read_csv(tmp_path / "r" / "selection_curve.csv")
    for column in ("run", "iteration", "caption", "axis", "w", "n_pairs", "S_mean", "S_mean_lo", "S_mean_hi",
                   "S_log_var", "S_log_var_lo", "S_log_var_hi", "predicted_S_mean", "predicted_S_log_var",
                   "corrected_S_log_var", "mixture_S_mean", "mixture_S_log_var", "cond_mean", "cond_var",
                   "uncond_mean", "uncond_var", "role"):
        assert column in table.columns, column
    # 2 models (base, iteration 0) x (2 captions + their mean) x 2 axes x 3 values of w.
    assert len(table) == 2 * 3 * 2 * 3
    assert sorted(table["iteration"].unique()) == [-1, 0] and sorted(table["w"].unique()) == list(CFGS)
    per_caption = table[table["caption"] != "(within)"]
    assert (per_caption["n_pairs"] == 4).all()
    # The prediction is the exact law (SD v1.5's scheduler: no law.json) of the row's own p_c and p_u.
    for row in per_caption.head(6).itertuples():
        unit = np.sqrt(row.uncond_var)
        model = ((row.cond_mean - row.uncond_mean) / unit, row.cond_var / unit**2, 0.0, row.uncond_var / unit**2)
        at_w, at_1 = (guided_moments(*model, cfg=w, steps=50) for w in (row.w, 1.0))
        assert row.predicted_S_log_var == pytest.approx(np.log(at_w.var / at_1.var), rel=1e-9)
        assert row.predicted_S_mean == pytest.approx((at_w.mean - at_1.mean) * unit, rel=1e-9, abs=1e-12)
    # The mixture law (p_u: the captions' Gaussians): finite per caption, their mean in the (within) rows.
    assert np.isfinite(per_caption[["mixture_S_mean", "mixture_S_log_var"]].to_numpy()).all()
    keys = ["iteration", "axis", "w"]
    means = per_caption.groupby(keys)["mixture_S_log_var"].mean()
    within = table[table["caption"] == "(within)"].set_index(keys)["mixture_S_log_var"]
    np.testing.assert_allclose(within.sort_index(), means.sort_index(), rtol=1e-12)
    ok = per_caption.dropna(subset=["S_log_var_lo"])
    assert len(ok) and ((ok["S_log_var_lo"] <= ok["S_log_var"]) & (ok["S_log_var"] <= ok["S_log_var_hi"])).all()
    text = (tmp_path / "r" / "report.md").read_text()
    assert "## The selection law" in text and "(selection_curve.csv)" in text and "(selection_curve.png)" in text
    assert "| log_var | mixture p_u |" in text
    for name in ("selection_curve.png", "selection_agreement.png"):
        assert (tmp_path / "r" / name).stat().st_size > 0
    # Off by default: no curve, no file.
    validate_runs([run], report=tmp_path / "n", axes=2, bootstrap=0, plots=False, warn=print)
    assert not (tmp_path / "n" / "selection_curve.csv").exists()


def test_the_correction_is_chosen_on_small_w_only(tmp_path):
    """Changing every measurement at w >= 5 changes the held-out score, never the correction chosen."""
    run = _selection_run(tmp_path)
    curve = validate_runs([run], report=tmp_path / "r", axes=2, bootstrap=0, selection_curve=CFGS, plots=False,
                          warn=print)["validation"].selection
    chosen = dict(curve.correction)
    table = curve.table.drop(columns=["corrected_S_mean", "corrected_S_log_var", "role"])
    spoiled = table.assign(S_log_var=np.where(table["w"] > CHOSEN_ON, 10.0 + table["S_log_var"], table["S_log_var"]))
    again = fit_selection(SelectionCurve(spoiled, curve.cfgs, curve.laws))
    assert again.correction["correction"] == chosen["correction"]
    assert again.correction["value"] == pytest.approx(chosen["value"], nan_ok=True)
    assert again.correction["r2_w_ge_5"] != pytest.approx(chosen["r2_w_ge_5"])
    assert set(again.candidates["correction"]) == {"none", "log_var_scale", "guidance", "trait_scale"}


def test_samples_of_a_real_tiny_run_are_generated_once(tiny_run, tmp_path):  # noqa: F811
    from chain.backends.tiny import TinyBackend
    from chain.decomposition_samples import make_decomposition_samples
    from chain.selection_samples import make_selection_samples

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    make_decomposition_samples(run, backend=TinyBackend(config=TINY_CONFIG), per_caption=3)
    made = make_selection_samples(run, (2.0, 5.0), per_caption=3, paired=3, backend=TinyBackend(config=TINY_CONFIG))
    # Base: 10 captions x 3 at CFG 1 and 15 unconditional; every model (base + 3 iterations): 10 x 3 per w.
    assert made["images"] == 30 + 15 + 4 * 2 * 30 and made["skipped"] == []
    law = json.loads((run / "selection" / "law.json").read_text())
    assert law["steps"] == 4 and law["scheduler"]["beta_schedule"] == "squaredcos_cap_v2"
    lines = [json.loads(x) for x in (selection_folder(run, 1, "cfg-5") / "metadata.jsonl").read_text().splitlines()]
    cfg1 = [json.loads(x) for x in (run / "iter-001" / "samples" / "cfg1" / "metadata.jsonl").read_text().splitlines()]
    assert [(x["caption"], x["seed"]) for x in lines] == [(x["caption"], x["seed"]) for x in cfg1]  # paired
    assert all(x["cfg"] == 5.0 for x in lines)
    stamp = (selection_folder(run, 1, "cfg-5") / "000000.png").stat().st_mtime_ns
    again = make_selection_samples(run, (2.0, 5.0), per_caption=3, paired=3, backend=TinyBackend(config=TINY_CONFIG))
    assert again["images"] == 0
    assert (selection_folder(run, 1, "cfg-5") / "000000.png").stat().st_mtime_ns == stamp
    assert not list(run.rglob(".*.part"))
