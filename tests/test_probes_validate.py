"""The hostile probes of issue 23 on ``chain validate``'s surfaces, kept as tests so that no new option reopens them.

Every option is checked once, before any work (:class:`validate.parameters.ValidateParameters`); the device is
probed as ``chain run`` probes it; a report folder holds one validation (a rerun leaves nothing of an older one,
a folder of other files is refused); the generators of a run's extra samples hold the run's lock. The report
folder is fuzzed (hypothesis): random mixtures of report files, valid, cut short, garbage, folders, stale
temporary files and foreign files, then a validation and ``read_report``. The fuzz takes the profile that
``HYPOTHESIS_PROFILE`` names (``fuzz``: 500 examples), else a quick one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_cli_usage import error_lines, run_main
from test_faults import TINY, fake_run
from test_validate_command import make_run

from chain.reference import make_reference
from chain.rundir import LOCK_FILE, RunDirectory
from chain.runner import RunParameters, run_chain
from commands import chain_program
from qtm.errors import QTMError
from validate.parameters import MAX_FINETUNE_NOISE, ValidateParameters
from validate.pipeline import validate_runs
from validate.report_folder import OTHER_FILES, TABLES, is_report_file, read_report

#: The fuzz's settings: the profile HYPOTHESIS_PROFILE names (tests/conftest.py), else the quick one cut to 20
#: examples, since each validates a run (about 0.3 s).
PROFILE = (settings.get_profile(os.environ["HYPOTHESIS_PROFILE"]) if os.environ.get("HYPOTHESIS_PROFILE")
           else settings(settings.get_profile("quick"), max_examples=20))


def validate(monkeypatch, capsys, *args):
    return run_main(monkeypatch, capsys, chain_program.main, "chain", "validate", *map(str, args))


def refused(status, stderr) -> str:
    """The one error line of a refusal (exit 2, no traceback)."""
    assert status == 2, stderr
    assert "Traceback" not in stderr and len(error_lines(stderr)) == 1, stderr
    return error_lines(stderr)[0]


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ------------------------------------------------------------------------------------ every option before any work

OPTIONS = {
    "finetune-noise negative": (["--finetune-noise", "-1"], "--finetune-noise must be >= 0, got -1"),
    "finetune-noise huge": (["--finetune-noise", "1000000"], f"--finetune-noise must be <= {MAX_FINETUNE_NOISE}"),
    "decompose-per-caption negative": (["--decompose-per-caption", "-3"], "--decompose-per-caption must be >= 3"),
    "decompose-per-caption zero": (["--decompose-per-caption", "0"], "--decompose-per-caption must be >= 3"),
    "decompose-per-caption huge": (["--decompose-per-caption", "100000"], "--decompose-per-caption must be <= 1000"),
    "selection-per-caption small": (["--selection-per-caption", "2"], "--selection-per-caption must be >= 3"),
    "selection-per-caption above the pairs": (["--selection-curve", "--selection-per-caption", "16"],
                                              "--selection-per-caption must be <= 15 (the --decompose-per-caption"),
    "axes zero": (["--axes", "0"], "--axes must be >= 1"),
    "bootstrap negative": (["--bootstrap", "-5"], "--bootstrap must be >= 0, got -5"),
    "bootstrap huge": (["--bootstrap", "100000000"], "--bootstrap must be <= 10000"),
    "seed negative": (["--seed", "-1"], "--seed must be >= 0"),
    "forecast-from zero": (["--forecast-from", "0"], "--forecast-from must be >= 1"),
    "forecast-from beyond the runs": (["--forecast-from", "7"], "--forecast-from 7: the runs have no iteration"),
    "batch-size zero": (["--embedder", "efficientnet", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    "batch-size negative": (["--embedder", "efficientnet", "--batch-size", "-4"], "--batch-size must be >= 1"),
    "device nonsense": (["--embedder", "efficientnet", "--device", "nonsense"], "--device 'nonsense' is not supported"),
    "finetune-noise without decomposition": (["--finetune-noise", "2", "--no-decompose"],
                                             "--finetune-noise is part of the decomposition"),
}


@pytest.mark.parametrize(("args", "message"), OPTIONS.values(), ids=OPTIONS.keys())
def test_a_bad_option_is_refused_in_one_line_before_any_work(monkeypatch, capsys, tmp_path, args, message):
    """The run has a backend: any work would first generate reference points and samples into it."""
    run = fake_run(tmp_path / "run")
    before = listing(run)
    line = refused(*validate(monkeypatch, capsys, run, "--report", tmp_path / "report", *args)[::2])
    assert message in line
    assert listing(run) == before and not (tmp_path / "report").exists()


def test_forecast_from_beyond_the_last_iteration_names_the_range(tmp_path):
    run = make_run(tmp_path, "run", cfg=3.0, shrink=0.8, iterations=3, n=6)
    with pytest.raises(QTMError, match=r"--forecast-from 3: the runs' last iteration is 2; give 1 to 2"):
        ValidateParameters(report=tmp_path / "report", forecast_from=3).check([run])
    assert ValidateParameters(report=tmp_path / "report", forecast_from=2).check([run]).forecast_from == 2


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="there is a GPU here")
def test_device_cuda_without_a_gpu_is_one_line_as_in_chain_run(monkeypatch, capsys, tmp_path):
    run = fake_run(tmp_path / "run")
    line = refused(*validate(monkeypatch, capsys, run, "--report", tmp_path / "r", "--embedder", "efficientnet",
                             "--device", "cuda")[::2])
    assert line == "chain: error: --device cuda: no CUDA GPU is available here; use --device cpu"


# ---------------------------------------------------------------------------------- a report folder, one validation

def test_a_rerun_without_forecast_leaves_no_forecast(tmp_path):
    runs = [make_run(tmp_path, "low", cfg=1.0, shrink=1.0, n=8, reference=True, seed=1),
            make_run(tmp_path, "high", cfg=5.0, shrink=0.6, n=8, seed=2)]
    report = tmp_path / "report"
    validate_runs(runs, report=report, axes=2, bootstrap=0, forecast_from=2, warn=lambda m: None)
    first = {p.name: p.read_bytes() for p in report.iterdir()}
    forecast = {"forecast.csv", "forecast.provenance.json", "forecast_var.png", "skill.csv", "skill.provenance.json"}
    assert forecast <= set(first)
    validate_runs(runs, report=report, axes=2, bootstrap=0, warn=lambda m: None)
    assert sorted(p.name for p in report.iterdir()) == sorted(set(first) - forecast)
    assert (report / "statistics.csv").read_bytes() == first["statistics.csv"]


@pytest.mark.parametrize("entry", ["notes.txt", "data/", "fit.json/"])
def test_a_folder_of_other_files_is_refused_and_left_as_it_was(monkeypatch, capsys, tmp_path, entry):
    run = fake_run(tmp_path / "run")
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.md").write_text("an older report")
    target = report / entry.rstrip("/")
    target.mkdir() if entry.endswith("/") else target.write_text("mine")
    before = listing(report)
    line = refused(*validate(monkeypatch, capsys, run, "--report", report, "--no-decompose", "--axes", "1")[::2])
    expected = "is a folder where the report writes a file" if entry == "fit.json/" else "is not a report folder"
    assert expected in line and "choose an empty or new folder" in line
    assert listing(report) == before


def test_what_killed_validations_left_is_no_foreign_file(tmp_path):
    run = fake_run(tmp_path / "run")
    report = tmp_path / "report"
    report.mkdir()
    (report / LOCK_FILE).write_text("pid 999999999 on elsewhere\n")
    (report / ".fit.json.x1y2.part").write_text("{")
    (report / "decomposition.csv").write_text("stale")
    validate_runs([run], report=report, axes=1, bootstrap=0, decompose_runs=False, plots=False, warn=lambda m: None)
    names = {p.name for p in report.iterdir()}
    assert "decomposition.csv" not in names and not any(n.startswith(".") for n in names)


def test_every_file_the_report_writes_is_a_report_file():
    """The names in the report writers' source: a file missing from the set would make a rerun refuse its folder.

    A name built in an f-string (``samples_{run.name}.png``) is a pattern that must match a report file.
    """
    import ast
    import fnmatch
    import re

    import validate.report
    import validate.report_prediction

    known = [*TABLES.values(), *OTHER_FILES]
    names = []
    for module in (validate.report, validate.report_prediction):
        for node in ast.walk(ast.parse(Path(module.__file__).read_text())):
            if isinstance(node, ast.JoinedStr):
                text = "".join(part.value if isinstance(part, ast.Constant) else "*" for part in node.values)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
            else:
                continue
            if re.fullmatch(r"[\w.*]+\.(csv|parquet|json|png|md)", text):
                names.append(text)
    assert len(names) >= 20
    assert [name for name in names if not any(fnmatch.fnmatchcase(k, name) for k in known)] == []
    assert all(is_report_file(name) for name in known if "*" not in name)
    assert is_report_file("samples_run-1.png") and is_report_file("skill.provenance.json")


# ------------------------------------------------------------------------------------------------ the run's lock

def test_make_reference_is_refused_while_the_run_is_locked(monkeypatch, capsys, tmp_path):
    run = fake_run(tmp_path / "run")
    with RunDirectory(run).lock():
        line = refused(*validate(monkeypatch, capsys, run, "--report", tmp_path / "report", "--make-reference",
                                 "--no-decompose", "--axes", "1")[::2])
    assert f"is in use (pid {os.getpid()} on " in line and ": chain run)" in line
    assert not (run / "reference").exists() and not (run / LOCK_FILE).exists()


@pytest.mark.parametrize("generator", ["reference", "decomposition", "selection"])
def test_each_generator_of_a_runs_samples_takes_the_runs_lock(tmp_path, generator):
    from chain.decomposition_samples import make_decomposition_samples
    from chain.selection_samples import make_selection_samples

    run = fake_run(tmp_path / "run")
    before = listing(run)
    call = {"reference": lambda: make_reference(run),
            "decomposition": lambda: make_decomposition_samples(run, per_caption=3),
            "selection": lambda: make_selection_samples(run, [2.0], per_caption=3, paired=3)}[generator]
    with RunDirectory(run).lock(), pytest.raises(QTMError, match=rf"in use \(pid {os.getpid()} on .*: chain run\);"):
        call()
    assert listing(run) == before


def test_a_chain_run_is_refused_while_reference_points_are_written(tmp_path):
    """The second writer fails at once in one line (no raw '[Errno 39] Directory not empty')."""
    run = tmp_path / "run"
    RunDirectory(run).open(RunParameters(**TINY).resolve(), seed=TINY["seed"], extra={})
    fake_run(tmp_path / "images")
    shutil.copytree(tmp_path / "images" / "iter-000", run / "iter-000")
    seen = []

    class Backend:
        def generate(self, prompts, **settings):
            with pytest.raises(QTMError) as caught:
                run_chain(run, RunParameters(**TINY))
            seen.append(str(caught.value))
            with pytest.raises(QTMError, match=r"in use .*: chain validate, generating the run's samples\);"):
                make_reference(run, backend=self)
            return [Image.new("RGB", (8, 8)) for _ in prompts]

    folders = make_reference(run, backend=Backend())
    assert len(seen) == 2  # cond, then uncond
    assert f"is in use (pid {os.getpid()} on " in seen[0] and "\n" not in seen[0]
    assert ": chain validate, generating the run's samples)" in seen[0]
    assert all(folder.is_dir() for folder in folders.values()) and not (run / LOCK_FILE).exists()


# -------------------------------------------------------------------------------------------- fuzz: report folders

#: Names a report folder may hold (report files, the lock, temporaries of killed writers) and foreign ones.
REPORT_NAMES = sorted({*TABLES.values(), *(n for n in OTHER_FILES if "*" not in n), "samples_run.png",
                       "samples_other.png", "statistics.provenance.json", "decomposition.provenance.json"})
PART_NAMES = [".fit.json.a1b2.part", ".statistics.parquet.zz.part", ".report.md.q.part", ".cond.part"]
FOREIGN_NAMES = ["notes.txt", "data", "old.provenance.json", "Report.md", "statistics.parquet.bak", ".hidden"]
#: Kinds of content, the ones a validation replaces more often than a folder (which it refuses).
KINDS = ("valid", "valid", "valid", "truncated", "truncated", "garbage", "garbage", "empty", "folder")
#: Report files six times and the lock and temporaries twice as often as foreign files: about half the folders
#: should get as far as a new report.
NAME_GROUPS = {"report": REPORT_NAMES, "lock or part": [LOCK_FILE, *PART_NAMES], "foreign": FOREIGN_NAMES}
names = st.sampled_from(["report"] * 6 + ["lock or part"] * 2 + ["foreign"]).flatmap(
    lambda group: st.sampled_from(NAME_GROUPS[group]))
entries = st.lists(st.tuples(names, st.sampled_from(KINDS), st.binary(max_size=48), st.integers(0, 4000)),
                   max_size=5, unique_by=lambda entry: entry[0])


@pytest.fixture(scope="module")
def fuzz_run(tmp_path_factory):
    """A two-image run and a clean report of it (the template of valid report files)."""
    root = tmp_path_factory.mktemp("fuzz")
    run = fake_run(root / "run")
    validate_runs([run], report=root / "clean", **FUZZ_VALIDATE)
    return run, root / "clean"


FUZZ_VALIDATE = {"axes": 1, "bootstrap": 0, "decompose_runs": False, "plots": False, "warn": lambda message: None}


def fill(folder: Path, chosen, clean: Path, *, start_clean: bool) -> None:
    """Write each (name, kind, garbage, cut) into ``folder`` (a copy of the clean report if ``start_clean``); a
    valid file is the clean report's of that kind."""
    if start_clean:
        shutil.copytree(clean, folder)
    else:
        folder.mkdir()
    for name, kind, garbage, cut in chosen:
        path = folder / name
        if path.is_file():
            path.unlink()
        if kind == "folder":
            path.mkdir()
            (path / "inside.csv").write_text("a\n1\n")
            continue
        source = clean / name if (clean / name).is_file() else next(iter(sorted(clean.glob(f"*{Path(name).suffix}"))),
                                                                     clean / "report.md")
        data = {"valid": source.read_bytes(), "truncated": source.read_bytes()[:cut], "garbage": garbage,
                "empty": b""}[kind]
        path.write_bytes(data)


def outcome(call, what: str):
    """``call()``'s value, or None for a one-line QTMError (its kind an event); any other exception fails the test."""
    try:
        value = call()
    except QTMError as error:
        assert "\n" not in str(error) and str(error), repr(error)
        reason = next((words for words in ("has no statistics", "is not a report folder", "is a folder where",
                                           "does not read as", "holds no") if words in str(error)), "other")
        event(f"{what}: one line: {reason}")
        return None
    event(f"{what}: a value")
    return value


@PROFILE
@given(chosen=entries, start_clean=st.booleans())
def test_fuzz_report_folders_validate_and_read_to_a_value_or_one_line(fuzz_run, chosen, start_clean):
    run, clean = fuzz_run
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report"
        fill(report, chosen, clean, start_clean=start_clean)
        before = listing(report)
        outcome(lambda: read_report(report), "read_report")
        result = outcome(lambda: validate_runs([run], report=report, **FUZZ_VALIDATE), "validate")
        if result is None:  # refused before any write: the folder is as it was
            assert listing(report) == before
            return
        assert sorted(p.name for p in report.iterdir()) == sorted(p.name for p in clean.iterdir())
        assert (report / "statistics.csv").read_bytes() == (clean / "statistics.csv").read_bytes()
        assert read_report(report).statistics.equals(read_report(clean).statistics)
