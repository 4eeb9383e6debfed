"""``chain validate`` end to end: synthetic run directories, bad input, and a real tiny-backend run."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_cli_usage import run_main

from qtm.errors import RunDirectoryError
from qtm.rundir import read_run
from validate.errors import ValidateError
from validate.features import CACHE_FOLDER
from validate.pipeline import validate_runs


def write_folder(folder, *, n, sd, rng, size=16, status="complete", captions=None):
    """Grey images whose brightness is N(level, sd²); metadata.jsonl and iteration.json as chain.rundir writes.

    ``captions`` maps each caption to its mean brightness level (default: one caption at 0.5);
    image ``i`` gets caption ``i mod len(captions)``.
    """
    captions = captions or {"a grey square": 0.5}
    folder.mkdir(parents=True)
    lines = []
    for i in range(n):
        caption, centre = list(captions.items())[i % len(captions)]
        level = np.clip(centre + sd * rng.standard_normal(), 0.05, 0.95)
        pixels = np.clip(level + 0.1 * rng.standard_normal((size, size)), 0, 1)
        Image.fromarray((pixels * 255).astype(np.uint8), mode="L").save(folder / f"{i:06d}-0.png")
        lines.append(json.dumps({"file_name": f"{i:06d}-0.png", "caption": caption, "seed": i}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    if status is not None:
        (folder / "iteration.json").write_text(json.dumps({"status": status}))


def make_run(root, name, *, cfg, shrink, iterations=4, n=30, finished=None, reference=False, seed=0, captions=None):
    """A run directory in chain.rundir's layout; the brightness spread shrinks by ``shrink`` per iteration."""
    rng = np.random.default_rng(seed)
    run = root / name
    run.mkdir(parents=True)
    parameters = {"cfg": cfg, "schedule": "constant", "drop": 0.0, "finetune": "base", "real_fraction": 0.0}
    (run / "run.json").write_text(json.dumps({"software": "chain", "parameters": parameters, "seed": seed}))
    sd = 0.15
    for t in range(iterations):
        status = "complete" if finished is None or t < finished else "running"
        write_folder(run / f"iter-{t:03d}", n=n, sd=sd, rng=rng, status=status, captions=captions)
        sd *= shrink
    if reference:
        write_folder(run / "reference" / "cond", n=n, sd=0.15, rng=rng, status=None, captions=captions)
        write_folder(run / "reference" / "uncond", n=n, sd=0.25, rng=rng, status=None, captions={"": 0.5})
    return run


def test_two_runs_one_report(tmp_path):
    low = make_run(tmp_path, "cfg1", cfg=1.0, shrink=1.0, reference=True, seed=1)
    high = make_run(tmp_path, "cfg5", cfg=5.0, shrink=0.6, finished=3, seed=2)
    messages = []
    result = validate_runs(
        [low, high], report=tmp_path / "report", axes=2, forecast_from=2, bootstrap=50, warn=messages.append
    )
    assert messages == ["cfg5: skipped unfinished iterations: iter-003 (running)"]
    report = tmp_path / "report"
    for name in (
        "statistics.csv",
        "statistics.parquet",
        "parameters.csv",
        "predicted_vs_measured.csv",
        "forecast.csv",
        "fit.json",
        "var.png",
        "mean.png",
        "summary.png",
        "strength.png",
        "forecast_var.png",
        "samples_cfg1.png",
        "samples_cfg5.png",
        "report.md",
    ):
        assert (report / name).stat().st_size > 0, name
    assert not list(report.glob("*.part"))  # nothing half-written
    stats = pd.read_parquet(report / "statistics.parquet")
    assert set(stats["embedder"]) == {"stats"}
    assert set(stats["reference"]) == {"base model, CFG 1 (cfg1)"}
    generated = stats[stats["population"] == "generated"]
    assert sorted(generated[generated["run"] == "cfg5"]["iteration"].unique()) == [0, 1, 2]
    assert set(stats["population"]) == {"generated", "reference_cond", "reference_uncond"}
    # The brightness spread of cfg5 shrinks (0.15 -> 0.054), so does its total variance.
    total = generated[(generated["statistic"] == "total_var") & (generated["run"] == "cfg5")]
    assert total.sort_values("iteration")["value"].is_monotonic_decreasing
    # (Not for the Fréchet distance: resampling biases it upward, so its interval may lie above it.)
    moments = stats[stats["statistic"].isin(["mean", "var"])]
    assert (moments["ci_low"] <= moments["value"]).all() and (moments["value"] <= moments["ci_high"]).all()
    text = (report / "report.md").read_text()
    for link in (
        "statistics.csv",
        "parameters.csv",
        "predicted_vs_measured.csv",
        "var.png",
        "strength.png",
        "samples_cfg5.png",
        "forecast.csv",
    ):
        assert f"({link})" in text, link
    assert "**stats**" in text and "iter-003 (running)" in text
    parameters = pd.read_csv(report / "parameters.csv")
    assert set(parameters.loc[parameters["parameter"] == "w_eff", "cfg"]) == {5.0}  # CFG-1 settings have w = 1
    # (mean, log var) x axes x transitions (no real data: iteration 0 is the first state, not a transition)
    assert result["fit"]["n_values"] == 2 * 2 * (3 + 2)
    summary = json.loads((report / "fit.json").read_text())
    assert summary["reduced_chi2"] == pytest.approx(result["fit"]["reduced_chi2"])
    assert {p["parameter"] for p in summary["parameters"]} >= {"fidelity", "uncond_fidelity", "var_fidelity"}
    assert all({"estimate", "lo", "hi"} <= set(p) for p in summary["parameters"])
    held_out = summary["forecast"]["held_out"]
    assert [(h["run"], h["iteration"]) for h in held_out] == [("cfg1", 2), ("cfg1", 3), ("cfg5", 2)]
    assert all(h["measured_var"] > 0 and h["lo"] <= h["predicted_var"] <= h["hi"] for h in held_out)
    assert 0 <= summary["forecast"]["forecast_caption_coverage"] <= 1
    assert result["forecast"]["forecast_run_coverage"] == summary["forecast"]["forecast_run_coverage"]
    # A second call reuses the cache: no cache file is rewritten.
    cache = low / CACHE_FOLDER / "iter-000.stats.npy"
    stamp = cache.stat().st_mtime_ns
    again = tmp_path / "again"
    validate_runs([low, high], report=again, axes=2, bootstrap=0, plots=False, warn=messages.append)
    assert cache.stat().st_mtime_ns == stamp
    # Without plots: the same tables and page, the sample grids (images, not plots), no plot and no link to one.
    assert sorted(p.name for p in again.glob("*.png")) == ["samples_cfg1.png", "samples_cfg5.png"]
    text = (again / "report.md").read_text()
    assert "Plots not drawn (`--no-plots`)" in text and "](var.png)" not in text and "(statistics.csv)" in text
    assert json.loads((again / "fit.json").read_text())["provenance"]["parameters"]["plots"] is False


TWO_CAPTIONS = {"a dark square": 0.3, "a light square": 0.7}


def test_two_captions_within_caption_statistics_and_fit(tmp_path):
    low = make_run(tmp_path, "cfg1", cfg=1.0, shrink=1.0, reference=True, seed=1, captions=TWO_CAPTIONS, n=24)
    high = make_run(tmp_path, "cfg5", cfg=5.0, shrink=0.6, reference=True, seed=2, captions=TWO_CAPTIONS, n=24)
    messages = []
    result = validate_runs([low, high], report=tmp_path / "r", axes=2, bootstrap=30, warn=messages.append)
    assert result["group"] == "caption"  # the default with several captions
    assert messages == []
    stats = pd.read_csv(tmp_path / "r" / "statistics.csv")
    generated = stats[(stats["population"] == "generated") & (stats["run"] == "cfg5")]
    assert set(generated["caption"]) == {*TWO_CAPTIONS, "(all)", "(within)"}
    per_caption = generated[generated["caption"].isin(list(TWO_CAPTIONS))]
    assert per_caption["n_images"].eq(12).all()
    assert generated.loc[generated["caption"] == "(within)", "n_images"].eq(24).all()
    # The summary is the mean of the two captions' variances, row by row.
    var = per_caption[per_caption["statistic"] == "var"].groupby(["iteration", "axis"])["value"].mean()
    within = generated[(generated["caption"] == "(within)") & (generated["statistic"] == "var")]
    assert within.set_index(["iteration", "axis"])["value"].sort_index().to_numpy() == pytest.approx(
        var.sort_index().to_numpy()
    )
    # Brightness 0.3 vs 0.7 between captions: the within-caption total variance is below the pooled one.
    total = generated[generated["statistic"] == "total_var"].pivot(index="iteration", columns="caption", values="value")
    assert (total["(within)"] < total["(all)"]).all()
    # The unconditional reference has no caption: pooled rows only.
    assert set(stats.loc[stats["population"] == "reference_uncond", "caption"]) == {"(all)"}
    predictions = pd.read_csv(tmp_path / "r" / "predicted_vs_measured.csv")
    assert set(predictions["group"]) == set(TWO_CAPTIONS)
    parameters = pd.read_csv(tmp_path / "r" / "parameters.csv")
    assert not parameters["parameter"].str.endswith(("_mean", "_log_var")).any()  # p_c, p_u measured, not fitted
    # 2 runs x 2 captions x 3 transitions x 2 axes x (mean, log var)
    assert result["fit"]["n_values"] == 2 * 2 * 3 * 2 * 2
    text = (tmp_path / "r" / "report.md").read_text()
    assert "**within each caption** (2 captions" in text and "within_var_0" in text
    # Diversity and fidelity of every generated set against the reference, per caption and averaged.
    diversity = pd.read_csv(tmp_path / "r" / "diversity.csv")
    assert set(diversity["caption"]) == {*TWO_CAPTIONS, "(within)"}
    assert set(diversity["statistic"]) >= {"precision", "recall", "density", "coverage", "vendi"}
    assert len(diversity[["run", "iteration"]].drop_duplicates()) == 2 * 4
    bounded = diversity[diversity["statistic"].isin(["precision", "recall", "coverage"])]
    assert bounded["value"].between(0, 1).all()
    assert "## Diversity and fidelity per iteration" in text and (tmp_path / "r" / "diversity.png").exists()

    pooled = validate_runs([low, high], report=tmp_path / "p", axes=2, bootstrap=0, group="none", plots=False,
                           warn=messages.append)
    assert pooled["group"] == "none" and pooled["fit"]["n_values"] == 2 * 3 * 2 * 2
    assert set(pd.read_csv(tmp_path / "p" / "statistics.csv")["caption"]) == {"(all)"}
    assert set(pd.read_csv(tmp_path / "p" / "diversity.csv")["caption"]) == {"(all)"}
    assert "pooled over 2 captions" in (tmp_path / "p" / "report.md").read_text()


def test_small_captions_are_refused_or_pooled(tmp_path):
    run = make_run(tmp_path, "small", cfg=3.0, shrink=0.8, iterations=2, n=4, captions=TWO_CAPTIONS)
    with pytest.raises(ValidateError, match=r"caption 'a dark square' has 2 image\(s\).*--group none"):
        validate_runs([run], report=tmp_path / "r", axes=1, bootstrap=0, group="caption", warn=print)
    assert not (tmp_path / "r").exists()
    messages = []
    result = validate_runs([run], report=tmp_path / "r", axes=1, bootstrap=0, plots=False, warn=messages.append)
    assert result["group"] == "none"
    assert any("only 2 image(s)" in m and "--group none" in m for m in messages)
    with pytest.raises(ValidateError, match="--group 'concept' is not one of: caption, none"):
        validate_runs([run], report=tmp_path / "x", group="concept")


def test_empty_and_unfinished_runs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "run.json").write_text(json.dumps({"parameters": {"cfg": 3.0}}))
    unfinished = make_run(tmp_path, "unfinished", cfg=3.0, shrink=1.0, iterations=1, finished=0)
    messages = []
    with pytest.raises(ValidateError, match="no run directory has a finished iteration"):
        validate_runs([empty, unfinished], report=tmp_path / "r", warn=messages.append)
    assert "empty: no finished iteration; left out of the report" in messages
    assert not (tmp_path / "r").exists()
    (tmp_path / "afile").write_text("")
    with pytest.raises(ValidateError, match="is a file; give a folder"):
        validate_runs([unfinished], report=tmp_path / "afile", warn=messages.append)
    with pytest.raises(RunDirectoryError, match=r"has no run\.json"):
        read_run(tmp_path)
    with pytest.raises(RunDirectoryError, match="does not exist"):
        read_run(tmp_path / "nowhere")


def test_mixed_sizes_warn(tmp_path):
    run = make_run(tmp_path, "mixed", cfg=2.0, shrink=1.0, iterations=2, n=12)
    Image.new("L", (24, 10), 128).save(run / "iter-001" / "000000-0.png")
    messages = []
    validate_runs([run], report=tmp_path / "r", axes=1, bootstrap=0, plots=False, warn=messages.append)
    assert any("mixed image sizes" in m for m in messages)


def test_cli_bad_input_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    """In-process, through the program's entry point (the installed programs' exit path: test_cli_usage)."""
    from commands.chain_program import main
    run = make_run(tmp_path, "run", cfg=2.0, shrink=1.0, iterations=2, n=8)
    for args, message in (
        ((run, "--embedder", "vgg"), "unknown embedder 'vgg'; choose one of: stats, efficientnet, clip"),
        ((tmp_path / "missing",), "does not exist"),
        ((run, "--axes", "0"), "--axes must be >= 1"),
        (
            (run, "--embedder", "clip", "--clip-model", "ViT-B-32", "--clip-pretrained", "openai"),
            "cannot load CLIP weights 'openai' for ViT-B-32",
        ),
    ):
        status, _, stderr = run_main(monkeypatch, capsys, main, "chain", "validate", *map(str, args),
                                     "--no-decompose", "--report", str(tmp_path / "r"))
        assert status == 2, stderr
        assert "Traceback" not in stderr
        assert stderr.strip().splitlines() == [f"chain: error: {stderr.split('error: ', 1)[1].strip()}"]
        assert message in stderr
    assert not (tmp_path / "r").exists()


def test_cli_no_plots_writes_the_report_without_its_plots(monkeypatch, capsys, tmp_path):
    from commands.chain_program import main
    run = make_run(tmp_path, "run", cfg=2.0, shrink=1.0, iterations=2, n=8)
    status, _, stderr = run_main(monkeypatch, capsys, main, "chain", "validate", str(run), "--no-decompose",
                                 "--no-plots", "--axes", "1", "--bootstrap", "0", "--report", str(tmp_path / "r"))
    assert status == 0, stderr
    assert [p.name for p in (tmp_path / "r").glob("*.png")] == ["samples_run.png"]
    assert (tmp_path / "r" / "statistics.csv").is_file()
    assert "nan" not in (tmp_path / "r" / "report.md").read_text()  # no interval without resamples


def _tiny_config():
    from chain.backends.tiny import TinyConfig

    return TinyConfig(resolution=8, channels=(8, 16), base_train_steps=40, base_batch_size=32)


TINY_CONFIG = _tiny_config()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A real 3-iteration chain of a reduced tiny backend (CPU), base model trained briefly into a temp cache."""
    root = tmp_path_factory.mktemp("tiny")
    # The base model is cached in the test's own folder, for this module's tests only.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHAIN_TINY_CACHE", str(root / "cache"))
        from chain.backends.tiny import TinyBackend
        from chain.runner import RunParameters, run_chain

        backend = TinyBackend(config=TINY_CONFIG, train_steps=5, batch_size=16)
        parameters = RunParameters(
            data="digits:16",
            backend="tiny",
            iterations=3,
            cfg=5.0,
            train_steps=5,
            steps=4,
            resolution=8,
            batch_size=16,
            device="cpu",
        )
        run_chain(root / "run", parameters, backend=backend)
        yield root / "run"


@pytest.mark.parametrize("embedder", ["stats", "efficientnet"])
def test_a_real_tiny_run(tiny_run, tmp_path, embedder):
    messages = []
    result = validate_runs(
        [tiny_run], report=tmp_path / embedder, embedder=embedder, axes=2, bootstrap=20, plots=False,
        warn=messages.append,
    )
    stats = pd.read_csv(tmp_path / embedder / "statistics.csv")
    assert set(stats["embedder"]) == {embedder}
    assert sorted(stats["iteration"].unique()) == [0, 1, 2]
    assert stats["n_images"].eq(16).all()
    # No base-model reference points: the one-step fit has no prior to finetune from, and says so.
    assert result["fit"] is None and any("fit skipped" in m and "--make-reference" in m for m in messages)
    assert f"**{embedder}**" in (tmp_path / embedder / "report.md").read_text()


def test_reference_points_from_the_base_model(tiny_run, tmp_path):
    import shutil

    from chain.backends.tiny import TinyBackend
    from chain.reference import make_reference

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    backend = TinyBackend(config=TINY_CONFIG)  # the cached base model of the fixture
    messages = []
    result = validate_runs(
        [run],
        report=tmp_path / "r",
        axes=2,
        bootstrap=0,
        prepare=lambda path: make_reference(path, backend=backend),  # what `chain validate --make-reference` does
        warn=messages.append,
    )
    for kind, caption in (("cond", "a handwritten digit"), ("uncond", "")):
        lines = [json.loads(x) for x in (run / "reference" / kind / "metadata.jsonl").read_text().splitlines()]
        assert len(lines) == 16 and all(x["cfg"] == 1.0 for x in lines)
        assert all(x["caption"].startswith(caption) if caption else x["caption"] == "" for x in lines)
    assert not list((run / "reference").glob(".*.part"))
    # The run's data set is written too, so the features' reference population and the fit's iteration-0
    # training set are the real data whether or not a decomposition wrote RUN/real before.
    real = [json.loads(x) for x in (run / "real" / "metadata.jsonl").read_text().splitlines()]
    assert len(real) == len(read_run(run).real) > 0 and all("seed" not in x for x in real)
    stats = pd.read_csv(tmp_path / "r" / "statistics.csv")
    assert set(stats["reference"]) == {"real data (run)"}
    parameters = pd.read_csv(tmp_path / "r" / "parameters.csv")
    assert {"var_shift", "uncond_fidelity", "w_eff"} <= set(parameters["parameter"])
    assert read_run(run).params["backend"] == "tiny"  # run.json's parameters win over its top-level entries
    assert np.isfinite(result["fit"]["chi2"])
    # Existing reference folders are kept as they are.
    stamps = [(run / folder / "000000.png").stat().st_mtime_ns for folder in ("reference/cond", "real")]
    make_reference(run, backend=backend)
    assert [(run / folder / "000000.png").stat().st_mtime_ns for folder in ("reference/cond", "real")] == stamps
    # `chain validate --real DIR --make-reference`: the caller's folder is the real data, the run's is not written.
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    make_reference(other, backend=backend, real_data=False)
    assert (other / "reference" / "cond").is_dir() and not (other / "real").exists()


def add_samples(run, *, iterations, n, seed, captions, replicates=0):
    """Decomposition samples as chain.decomposition_samples writes them: CFG 1 wider than the run's, uncond wider."""
    rng = np.random.default_rng(seed)
    for t in range(iterations):
        samples = run / f"iter-{t:03d}" / "samples"
        write_folder(samples / "cfg1", n=n, sd=0.2, rng=rng, status=None, captions=captions)
        write_folder(samples / "uncond", n=n, sd=0.3, rng=rng, status=None, captions={"": 0.5})
    for k in range(replicates):
        write_folder(
            run / "iter-000" / "samples" / f"replicate-{k:02d}", n=n, sd=0.2, rng=rng, status=None, captions=captions
        )


def test_decomposition_from_image_folders(tmp_path):
    high = make_run(tmp_path, "cfg5", cfg=5.0, shrink=0.6, reference=True, seed=2, captions=TWO_CAPTIONS, n=24)
    add_samples(high, iterations=4, n=24, seed=3, captions=TWO_CAPTIONS, replicates=2)
    low = make_run(tmp_path, "cfg1", cfg=1.0, shrink=1.0, reference=True, seed=1, captions=TWO_CAPTIONS, n=24)
    messages = []
    validate_runs([high, low], report=tmp_path / "r", axes=2, bootstrap=20, warn=messages.append)
    table = pd.read_csv(tmp_path / "r" / "decomposition.csv")
    assert list(table.columns)[:9] == ["run", "cfg", "caption", "axis", "iteration", "quantity", "value", "lo", "hi"]
    five = table[table["run"] == "cfg5"]
    selection = five[five["quantity"] == "S_log_var"]
    assert set(selection["caption"]) == set(TWO_CAPTIONS) and sorted(selection["iteration"].unique()) == [0, 1, 2, 3]
    # The guided sets are narrower than the CFG-1 samples (brightness sd 0.15 * 0.6^t against 0.2): on the
    # brightness axis S_log_var averages about -2 over captions and iterations, with an SE of ~0.2.
    assert selection.loc[selection["axis"] == 0, "value"].mean() < -0.5
    assert set(five.loc[five["quantity"] == "R_mean", "iteration"]) == {0, 1, 2}
    assert {"rho", "rho_v", "mu", "rho_u", "h2_mean", "uncond_drift_mean", "finetune_noise_excess"} <= set(
        five["quantity"]
    )
    assert set(five.loc[five["quantity"].str.startswith("finetune_noise"), "iteration"]) == {0}
    # The CFG-1 run is its own CFG-1 sample: zero selection, and a response all the same.
    one = table[table["run"] == "cfg1"]
    assert (one.loc[one["quantity"] == "S_mean", "value"] == 0).all() and (one["quantity"] == "R_mean").any()
    assert (tmp_path / "r" / "breeders.png").stat().st_size > 0
    text = (tmp_path / "r" / "report.md").read_text()
    assert "breeder's equation" in text and "(decomposition.csv)" in text and "(breeders.png)" in text
    without = validate_runs([high], report=tmp_path / "n", axes=2, bootstrap=0, decompose_runs=False, plots=False,
                            warn=print)
    assert without["validation"].decomposition is None and not (tmp_path / "n" / "decomposition.csv").exists()


def test_decomposition_samples_of_a_real_tiny_run(tiny_run, tmp_path):
    import shutil

    from chain.backends.tiny import TinyBackend
    from chain.decomposition_samples import make_decomposition_samples
    from chain.reference import make_reference

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    backend = TinyBackend(config=TINY_CONFIG, train_steps=5, batch_size=16)
    made = {}

    def prepare(path):  # what `chain validate --decompose --finetune-noise 2` does
        make_reference(path, backend=backend)
        made.update(make_decomposition_samples(path, backend=backend, per_caption=3, finetune_noise=2))

    validate_runs([run], report=tmp_path / "r", axes=2, bootstrap=10, prepare=prepare, plots=False, warn=print)
    assert made["images"] == 3 * (30 + 15) + 2 * 30 and made["finetunes"] == 2  # 10 captions x 3
    for t in range(3):
        for kind, count in (("cfg1", 30), ("uncond", 15)):
            lines = (run / f"iter-{t:03d}" / "samples" / kind / "metadata.jsonl").read_text().splitlines()
            assert len(lines) == count
    assert len(list((run / "real").glob("*.png"))) == 16
    assert not list(run.rglob(".*.part"))
    table = pd.read_csv(tmp_path / "r" / "decomposition.csv")
    assert 0 in set(table.loc[table["quantity"] == "rho", "iteration"])  # D_0 = the real data written to RUN/real
    assert (table["quantity"] == "finetune_noise_mean").any()
    # Resumed: nothing is generated twice.
    again = make_decomposition_samples(run, backend=backend, per_caption=3, finetune_noise=2)
    assert again["images"] == 0 and again["finetunes"] == 0
    # `--real DIR`: the run's own data set is not written (the samples are all there, so nothing is generated).
    shutil.rmtree(run / "real")
    assert make_decomposition_samples(run, backend=backend, per_caption=3, real_data=False)["images"] == 0
    assert not (run / "real").exists()
