"""Fault injection (issue 14): every failure is one line and a documented exit status, no result is lost.

One test (or more) per finding of issue 14, plus: ``chain run`` and ``chain validate``
killed (SIGKILL, some SIGINT) at 20 random moments each and resumed to the result of an
uninterrupted run, damaged images, concurrent runs, unwritable outputs, and property-based
fuzzing (hypothesis) of the option parsers, the config loader and both command lines.

The chain runs are tiny (20 digits, 2 iterations, 3 finetuning and 3 sampling steps) on a
base model trained for a few steps into a temporary cache. They run in forked children of
this process (no interpreter start, no torch import per run), which is what makes 40 kills
affordable; each child uses one thread, as a forked child must. Everything is seeded.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import traceback
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from test_cli_usage import error_lines, run_main

from commands import qtm_program as qtm_cli
from qtm.errors import QTMError, RunDirectoryError
from qtm.grid import load_config, parse_axes, parse_numbers, parse_strings
from qtm.io import read_provenance, write_table
from qtm.params import ALL_PARAMETERS, RUN_OPTIONS
from validate.embedders import load_image
from validate.errors import ValidateError
from validate.pipeline import read_runs, validate_runs

torch = pytest.importorskip("torch")

from chain.rundir import LOCK_FILE, RunDirectory  # noqa: E402
from chain.runner import Reporter, RunParameters, run_chain  # noqa: E402
from commands import chain_program as chain_cli  # noqa: E402

# Hypothesis caches what it learns in a folder; keep it out of the repository.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(Path(tempfile.gettempdir()) / "qtm-hypothesis"))

TINY = {"data": "digits:20", "iterations": 2, "train_steps": 3, "steps": 3, "batch_size": 8, "seed": 4,
        "device": "cpu"}
TINY_ARGS = ("--data", "digits:20", "--iterations", "2", "--train-steps", "3", "--steps", "3", "--batch-size", "8",
             "--seed", "4", "--device", "cpu")
KILLS = 20


# ---------------------------------------------------------------------------------------------- forked children

def in_child(target, *args, **kwargs) -> int:
    """Run ``target`` in a forked child; its exit status: 0, 2 for a QTMError, 130 for Ctrl-C, else 1."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    # A program starts with Ctrl-C's default handler, even where the test runner was started in the background
    # (a non-interactive shell starts background jobs with SIGINT ignored, and a fork inherits that).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        torch.set_num_threads(1)  # a forked child must not use the parent's thread pool
        target(*args, **kwargs)
        code = 0
    except QTMError as error:
        print(f"child: error: {error}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def wait(pid: int, *, timeout: float = 120) -> int:
    """The exit status of child ``pid`` (minus the signal number if a signal ended it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"child {pid} did not finish within {timeout} s")


def cli_child(argv: list[str], stderr: Path) -> None:
    """Target of :func:`in_child`: run the ``chain`` program with ``argv`` (the CLI, not just the library), its
    stderr into the file ``stderr``, and exit with the program's status."""
    sys.stderr = stderr.open("w", buffering=1)
    sys.argv = ["chain", *argv]
    try:
        chain_cli.main()
    except SystemExit as done:
        sys.stderr.flush()
        os._exit(done.code or 0)
    os._exit(0)


def stop(pid: int, sig: int) -> int:
    """Send ``sig`` to a child that may have finished already; its exit status."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    return wait(pid)


class LineFile(Reporter):
    """A reporter that appends its lines to a file (what the CLI would print)."""

    def __init__(self, path):
        self.path = Path(path)

    def line(self, text: str) -> None:
        with self.path.open("a") as handle:
            handle.write(text + "\n")


def chain_child(run_dir, lines=None, **overrides) -> None:
    run_chain(run_dir, RunParameters(**{**TINY, **overrides}), reporter=LineFile(lines) if lines else None)


def chain(run_dir, **overrides) -> int:
    return wait(in_child(chain_child, run_dir, **overrides))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A base-model cache, and one uninterrupted tiny run with its wall time."""
    import diffusers
    import matplotlib.pyplot  # noqa: F401 - the report's plots

    import validate.report  # noqa: F401
    from chain.backends.tiny_base import base_model
    from chain.backends.tiny_config import TinyConfig
    from chain.data import load_dataset

    # Imports and data loaded once here, not in every child (no torch work: a forked child cannot share it).
    _ = diffusers.UNet2DModel, diffusers.UNet2DConditionModel, diffusers.DDIMScheduler, diffusers.DDPMScheduler
    load_dataset(TINY["data"])
    root = tmp_path_factory.mktemp("faults")
    old = os.environ.get("CHAIN_TINY_CACHE")
    os.environ["CHAIN_TINY_CACHE"] = str(root / "cache")

    def train():
        state = base_model(TinyConfig(base_train_steps=20)).state
        torch.save(state, root / "cache" / f"tiny-{TinyConfig().key()}.pt")  # the default configuration's name

    assert wait(in_child(train)) == 0
    began = time.monotonic()
    assert chain(root / "clean") == 0
    yield {"clean": root / "clean", "seconds": time.monotonic() - began}
    if old is None:
        del os.environ["CHAIN_TINY_CACHE"]
    else:
        os.environ["CHAIN_TINY_CACHE"] = old


#: What legitimately differs between two identical computations: timings, the clock, and the commit
#: (other work is committed to the repository while these tests run).
VARYING = ("seconds", "created", "git_commit")


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in VARYING}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def run_results(run_dir) -> dict:
    """Every file of a run by path: bytes, and the JSON records without timings; no leftovers allowed."""
    out = {}
    for path in sorted(Path(run_dir).rglob("*")):
        if not path.is_file():
            continue
        name = str(path.relative_to(run_dir))
        if path.name == "run.json":
            out[name] = json.loads(path.read_text())["parameters"]
        elif path.name == "iteration.json":
            out[name] = without_timings(json.loads(path.read_text()))
        else:
            out[name] = path.read_bytes()
    return out


def copy_run(tiny, path) -> Path:
    shutil.copytree(tiny["clean"], path)
    return path


# ----------------------------------------------------------------------------------- kill and resume: chain run

def test_chain_run_killed_at_20_random_moments_resumes_to_the_uninterrupted_result(tiny, tmp_path):
    """Kill ``chain run`` (SIGKILL; every fifth a SIGINT) at random moments of an uninterrupted run's duration.

    After each kill the run is resumed by the next attempt; whenever an attempt finishes, its
    results (images, weights, metadata byte for byte; records without timings) must equal the
    uninterrupted run's, and no lock or temporary file may be left. Seeded, so the same moments
    every time.
    """
    expected = run_results(tiny["clean"])
    rng = np.random.default_rng(14)
    landed = finished = 0
    victim = tmp_path / "victim-0"
    window = tiny["seconds"]
    for attempt in range(1, 100):
        if landed >= KILLS:
            break
        pid = in_child(chain_child, victim)
        time.sleep(rng.uniform(0.0, window))
        sig = signal.SIGINT if landed % 5 == 4 else signal.SIGKILL
        status = stop(pid, sig)
        if status == 0:
            assert run_results(victim) == expected
            # Finished first: the clean run (timed cold) outlasts a run here, so the kills must come sooner.
            window *= 0.8
            finished += 1
            victim = tmp_path / f"victim-{attempt}"
            continue
        assert status in ((130, -signal.SIGINT) if sig == signal.SIGINT else (-signal.SIGKILL,)), status
        landed += 1
        if (victim / "run.json").exists():
            json.loads((victim / "run.json").read_text())  # never half-written
    assert landed >= KILLS
    assert chain(victim) == 0
    assert run_results(victim) == expected


# ------------------------------------------------------------------------------ kill and resume: chain validate

def report_files(folder) -> dict:
    """A report's files: JSON without creation times, tables as frames, everything else as bytes."""
    out = {}
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file():
            continue
        name = str(path.relative_to(folder))
        if path.suffix == ".json":
            out[name] = without_timings(json.loads(path.read_text()))
        elif path.suffix == ".parquet":
            out[name] = pd.read_parquet(path).to_csv(index=False)  # NaN compares equal as text
        else:
            out[name] = path.read_bytes()
    return out


def validate_child(run_dir, report) -> None:
    validate_runs([run_dir], report=report, bootstrap=5, warn=lambda message: None)


def test_chain_validate_killed_at_20_random_moments_reruns_to_the_same_report(tiny, tmp_path):
    """Kill ``chain validate`` (SIGKILL; every fifth a SIGINT) at random moments: embedding, statistics, writing.

    As for ``chain run``: each attempt resumes what the killed ones left (embedding cache, report
    folder); whenever one finishes, its report must equal an uninterrupted validation's, with
    no lock or temporary file left, and the next attempt starts afresh (no cache, a new report).
    """
    run = copy_run(tiny, tmp_path / "run")
    began = time.monotonic()
    assert wait(in_child(validate_child, run, tmp_path / "clean")) == 0
    seconds = time.monotonic() - began
    expected = report_files(tmp_path / "clean")
    rng = np.random.default_rng(15)
    landed = 0
    report = tmp_path / "report-0"
    shutil.rmtree(run / ".validate_cache")
    for attempt in range(1, 100):
        if landed >= KILLS:
            break
        pid = in_child(validate_child, run, report)
        time.sleep(rng.uniform(0.0, seconds))
        status = stop(pid, signal.SIGINT if landed % 5 == 4 else signal.SIGKILL)
        if status == 0:
            assert report_files(report) == expected
            seconds *= 0.8  # finished first: the kills must come sooner (as in the chain run test)
            report = tmp_path / f"report-{attempt}"
            shutil.rmtree(run / ".validate_cache")
        else:
            landed += 1
    assert landed >= KILLS
    assert wait(in_child(validate_child, run, report)) == 0
    assert report_files(report) == expected
    assert sorted(p.name for p in run.iterdir()) == [".validate_cache", "iter-000", "iter-001", "run.json"]


# ------------------------------------------------------------------------------------------ damaged images

def test_a_truncated_image_is_found_on_resume_and_its_iteration_redone(tiny, tmp_path):
    run = copy_run(tiny, tmp_path / "run")
    image = run / "iter-000" / "000003-0.png"
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    lines = tmp_path / "lines.txt"
    assert wait(in_child(chain_child, run, lines)) == 0
    warnings = [line for line in lines.read_text().splitlines() if "warning" in line]
    assert len(warnings) == 1 and str(image) in warnings[0] and "redoing iteration 0" in warnings[0]
    assert run_results(run) == run_results(tiny["clean"])


def test_a_deleted_or_corrupt_image_redoes_only_its_iteration_and_later_ones(tiny, tmp_path):
    run = copy_run(tiny, tmp_path / "run")
    kept = (run / "iter-000" / "iteration.json").read_text()
    (run / "iter-001" / "000007-0.png").unlink()
    assert chain(run) == 0
    assert (run / "iter-000" / "iteration.json").read_text() == kept  # not redone: timings unchanged
    assert run_results(run) == run_results(tiny["clean"])
    # A flipped byte inside the image data: the file is whole but its checksum fails.
    image = run / "iter-001" / "000002-0.png"
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0xFF
    image.write_bytes(bytes(data))
    assert chain(run) == 0
    assert run_results(run) == run_results(tiny["clean"])


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_chain_validate_names_a_damaged_image_and_says_how_to_repair(tiny, tmp_path, damage):
    run = copy_run(tiny, tmp_path / "run")
    image = run / "iter-001" / "000005-0.png"
    if damage == "delete":
        image.unlink()
    else:
        image.write_bytes(image.read_bytes()[:40])
    with pytest.raises(RunDirectoryError) as caught:
        validate_runs([run], report=tmp_path / "report", bootstrap=0)
    message = str(caught.value)
    assert str(image) in message and "rerun `chain run`" in message and "\n" not in message
    assert not (tmp_path / "report").exists()


def test_a_corrupt_image_in_a_real_data_folder_is_one_line(tiny, tmp_path):
    run = copy_run(tiny, tmp_path / "run")
    real = tmp_path / "real"
    real.mkdir()
    Image.new("RGB", (8, 8)).save(real / "a.png")
    (real / "b.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    with pytest.raises(ValidateError, match=r"b\.png.*does not decode"):
        validate_runs([run], report=tmp_path / "report", real=real, bootstrap=0)


# ------------------------------------------------------------------------------------------ concurrency, locks

def test_a_second_chain_run_on_the_same_directory_fails_at_once_naming_the_first(tiny, tmp_path):
    run = tmp_path / "run"
    first = in_child(chain_child, run)
    deadline = time.monotonic() + 60
    while not (run / LOCK_FILE).exists() or not (run / LOCK_FILE).read_text():
        assert time.monotonic() < deadline
        time.sleep(0.005)
    errors = tmp_path / "second.txt"

    def second():
        try:
            chain_child(run)
        except QTMError as error:
            errors.write_text(str(error))
            raise

    assert wait(in_child(second)) == 2
    message = errors.read_text()
    assert f"is in use (pid {first} on " in message and ": chain run)" in message
    assert wait(first) == 0
    assert run_results(run) == run_results(tiny["clean"])


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
    run = RunDirectory(tmp_path / "run")

    def hold():
        with run.lock():
            time.sleep(60)

    pid = in_child(hold)
    while not (run.path / LOCK_FILE).exists() or not (run.path / LOCK_FILE).read_text():
        time.sleep(0.005)
    with pytest.raises(QTMError, match=f"pid {pid} on {socket.gethostname()}"):
        with run.lock():
            pass
    stop(pid, signal.SIGKILL)
    assert (run.path / LOCK_FILE).exists()  # left behind by the killed holder ...
    with run.lock():  # ... and taken over
        assert (run.path / LOCK_FILE).read_text().startswith(f"pid {os.getpid()} ")
    assert not (run.path / LOCK_FILE).exists()


def test_stale_temporaries_are_cleaned_and_run_json_follows_iterations(tiny, tmp_path):
    run = copy_run(tiny, tmp_path / "run")
    (run / ".run.json.x1y2.part").write_text("{")
    (run / "reference" / ".cond.part").mkdir(parents=True)
    (run / LOCK_FILE).write_text("pid 999999999 on elsewhere\n")
    assert chain(run, iterations=1) == 0
    assert sorted(p.name for p in run.iterdir()) == ["iter-000", "iter-001", "reference", "run.json"]
    assert list((run / "reference").iterdir()) == []
    assert json.loads((run / "run.json").read_text())["parameters"]["iterations"] == 1


# ---------------------------------------------------------------------------- validation before any write

def test_chain_run_steps_beyond_the_training_timesteps_writes_nothing(monkeypatch, capsys, tmp_path):
    status, _, err = run_main(monkeypatch, capsys, chain_cli.main, "chain", "run", str(tmp_path / "run"),
                              *TINY_ARGS, "--steps", "100000")
    assert status == 2 and "Traceback" not in err
    assert "--steps 100000" in error_lines(err)[0] and "at most 1000" in error_lines(err)[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["a file as RUN_DIR", "a file as its parent"])
def test_chain_run_into_an_unwritable_place_is_one_line(monkeypatch, capsys, tmp_path, where):
    (tmp_path / "file").write_text("x")
    target = tmp_path / "file" if where == "a file as RUN_DIR" else tmp_path / "file" / "run"
    status, _, err = run_main(monkeypatch, capsys, chain_cli.main, "chain", "run", str(target), *TINY_ARGS)
    assert status == 2 and "Traceback" not in err and len(error_lines(err)) == 1
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_chain_run_into_a_read_only_folder_is_one_line(monkeypatch, capsys, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    status, _, err = run_main(monkeypatch, capsys, chain_cli.main, "chain", "run", str(folder / "run"), *TINY_ARGS)
    folder.chmod(0o755)
    assert status == 2 and "no permission" in error_lines(err)[0]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="there is a GPU here")
def test_device_cuda_without_a_gpu_is_one_line(monkeypatch, capsys, tmp_path):
    status, _, err = run_main(monkeypatch, capsys, chain_cli.main, "chain", "run", str(tmp_path / "run"),
                              *TINY_ARGS, "--device", "cuda")
    assert status == 2 and "no CUDA GPU" in error_lines(err)[0] and "Traceback" not in err
    assert not (tmp_path / "run").exists()


# -------------------------------------------------------------------------------------------- chain validate

def fake_run(path, *, data="digits:20", backend="tiny") -> Path:
    """A run directory with one finished iteration of two tiny images."""
    folder = path / "iter-000"
    folder.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({"parameters": {"cfg": 3.0, "data": data, "backend": backend}}))
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8), (200, 10, 10)).save(folder / name)
    (folder / "metadata.jsonl").write_text("".join(json.dumps({"file_name": n, "caption": "x"}) + "\n"
                                                   for n in ("a.png", "b.png")))
    (folder / "iteration.json").write_text('{"status": "complete"}')
    return path


@pytest.mark.parametrize("flag", ["real", "reference"])
def test_validate_a_missing_real_or_reference_folder_is_one_line(tmp_path, flag):
    run = fake_run(tmp_path / "run")
    with pytest.raises(ValidateError, match=f"--{flag} .*does not exist"):
        validate_runs([run], report=tmp_path / "report", **{flag: tmp_path / "nope"})
    assert not (tmp_path / "report").exists()


def test_validate_an_empty_real_folder_is_one_line(tmp_path):
    run = fake_run(tmp_path / "run")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValidateError, match="has no images"):
        validate_runs([run], report=tmp_path / "report", real=tmp_path / "empty")


def png16(path, pixels: np.ndarray, colour: int) -> None:
    """A 16-bit PNG written by hand (PIL writes 16 bits for grey only)."""
    height = pixels.shape[0]
    raw = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", pixels.shape[1], height, 16, colour, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                           + chunk(b"IEND", b""))


def test_16_bit_pngs_are_scaled_not_clipped(tmp_path):
    png16(tmp_path / "grey.png", np.full((4, 4), 32896, dtype=np.uint16), colour=0)
    rgb = np.zeros((4, 4, 3), dtype=np.uint16)
    rgb[..., 0], rgb[..., 1] = 32896, 65535
    png16(tmp_path / "rgb.png", rgb, colour=2)
    assert load_image(tmp_path / "grey.png").getpixel((1, 1)) == (128, 128, 128)
    assert load_image(tmp_path / "rgb.png").getpixel((1, 1)) == (128, 255, 0)


def test_32_bit_images_of_unknown_range_are_refused(tmp_path):
    Image.fromarray(np.full((4, 4), 7, dtype=np.float32), mode="F").save(tmp_path / "float.tiff")
    with pytest.raises(ValidateError, match="unknown range"):
        load_image(tmp_path / "float.tiff")


def test_runs_of_different_data_sets_or_backends_give_one_warning(tmp_path):
    runs = [fake_run(tmp_path / "a"), fake_run(tmp_path / "b", data="digits:60", backend="sd")]
    heard = []
    read_runs(runs, warn=heard.append)
    assert len(heard) == 1 and "data" in heard[0] and "backend" in heard[0]
    heard.clear()
    read_runs([fake_run(tmp_path / "c"), fake_run(tmp_path / "d")], warn=heard.append)
    assert heard == []


# ----------------------------------------------------------------------------------------- tables, Dask

@pytest.mark.parametrize("killed_at", ["t.csv", "t.provenance.json"])
def test_a_table_never_sits_beside_another_tables_provenance(tmp_path, monkeypatch, killed_at):
    """A process killed at either rename leaves no table, or a table with its own provenance."""
    path = tmp_path / "t.csv"
    write_table(pd.DataFrame({"a": [1]}), path, provenance={"run": "old"})
    real = os.replace

    def killed(src, dst):
        if Path(dst).name == killed_at:
            raise KeyboardInterrupt  # the process dies before this rename
        return real(src, dst)

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_table(pd.DataFrame({"a": [2]}), path, provenance={"run": "new"})
    monkeypatch.setattr(os, "replace", real)
    if path.exists():
        pair = (pd.read_csv(path)["a"].tolist(), read_provenance(path))
        assert pair in [([1], {"run": "old"}), ([2], {"run": "new"})]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_a_csv_table_without_its_provenance_is_refused(tmp_path):
    path = write_table(pd.DataFrame({"a": [1]}), tmp_path / "t.csv", provenance={"run": 1})
    path.with_suffix(".provenance.json").unlink()
    with pytest.raises(QTMError, match="no provenance file"):
        read_provenance(path)


@pytest.fixture
def quick_dask(monkeypatch):
    from qtm.particles import sweep

    monkeypatch.setattr(sweep, "CONNECT_TIMEOUT_S", 1)
    monkeypatch.setattr(sweep, "WORKER_TIMEOUT_S", 1)
    return sweep


@pytest.mark.timeout(60)
def test_dask_address_where_nothing_answers_times_out(quick_dask, tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted = []

    def accept():
        with contextlib.suppress(OSError):
            while True:
                accepted.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
    try:
        with pytest.raises(QTMError, match="cannot reach the Dask scheduler"):
            quick_dask.simulate_particles(pd.DataFrame({"cfg": [1.0]}), options={"population": 10, "cluster": address},
                                          out=tmp_path / "s.csv")
    finally:
        server.close()
        for connection in accepted:
            connection.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(60)
def test_dask_cluster_without_workers_times_out(quick_dask, tmp_path):
    import distributed

    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster:
        with pytest.raises(QTMError, match="no worker"):
            quick_dask.simulate_particles(pd.DataFrame({"cfg": [1.0]}),
                                          options={"population": 10, "cluster": cluster.scheduler_address},
                                          out=tmp_path / "s.csv")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------ the qtm findings

QTM_BAD_INPUT = {
    "an unbounded grid": ["map", "--cfg", "0:1e308:1"],
    "a list with a hole": ["map", "--cfg", "1,,2"],
    "a range simulate refuses": ["map", "--cfg", "-1"],
}


@pytest.mark.parametrize("args", QTM_BAD_INPUT.values(), ids=QTM_BAD_INPUT.keys())
def test_qtm_bad_input_is_one_line_exit_2_and_writes_nothing(monkeypatch, capsys, tmp_path, args):
    status, out, err = run_main(monkeypatch, capsys, qtm_cli.main, "qtm", *(a.format(tmp=tmp_path) for a in args))
    assert status == 2 and "Traceback" not in err and len(error_lines(err)) == 1
    assert "Infinity" not in out and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text", ['redifine = "false"', "cfg = true", 'iterations = 2.5', b"cfg = '\xff'"])
def test_config_values_are_type_checked_and_bad_bytes_are_one_line(monkeypatch, capsys, tmp_path, text):
    config = tmp_path / "c.toml"
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    status, _, err = run_main(monkeypatch, capsys, qtm_cli.main, "qtm", "simulate", "--config", str(config),
                              "--out", str(tmp_path / "s.csv"))
    assert status == 2 and "Traceback" not in err and len(error_lines(err)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]


# ------------------------------------------------------------------------------------------------- fuzzing

#: The profile HYPOTHESIS_PROFILE names (tests/conftest.py): 40 fixed examples in the suite, 500 in `make fuzz`.
FUZZ = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))
TOKENS = st.one_of(
    st.sampled_from(["0", "1", "-1", "0.5", "3", "7.5", "1e308", "-1e308", "1e-320", "nan", "inf", "-inf", "1,,2",
                     ",", "0:1:0.25", "0:1e308:1", "1:0:1", "0:1:0", "1:2", "a:b:c", "", " ", "true", "cosine",
                     "cutoff:0.5", "ddim", "tilt", "cuda", "cpu", "digits:20", "\x00", "é", "1_000"]),
    st.text(max_size=12),
)


@FUZZ
@given(spec=st.one_of(TOKENS, st.lists(st.one_of(TOKENS, st.integers(), st.floats(), st.booleans()), max_size=4)),
       integer=st.booleans())
def test_fuzz_parsers_return_values_or_one_line_errors(spec, integer):
    for parse in (lambda: parse_numbers(spec, name="cfg", integer=integer), lambda: parse_strings(spec, name="x"),
                  lambda: parse_axes({"cond_mean": spec, "cond_var": "1"})):
        try:
            parse()
        except QTMError as error:
            assert "\n" not in str(error)


TOML_VALUES = st.one_of(st.integers(-10**20, 10**20), st.floats(), st.booleans(), st.text(max_size=8),
                        st.lists(st.one_of(st.integers(-5, 5), st.floats(-9, 9), st.text(max_size=3)), max_size=3))


def toml_value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(str(value), repr(value))
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, str) else str(value)


@FUZZ
@given(entries=st.lists(st.tuples(st.sampled_from([*RUN_OPTIONS, "nope", "real-fraction"]), TOML_VALUES),
                        max_size=4),
       garbage=st.one_of(st.just(b""), st.binary(max_size=12)))
def test_fuzz_config_loader_returns_values_or_one_line_errors(tmp_path_factory, entries, garbage):
    path = tmp_path_factory.mktemp("config") / "c.toml"
    path.write_bytes("".join(f"{k} = {toml_value(v)}\n" for k, v in entries).encode() + garbage)
    try:
        load_config(path, allowed={name: ALL_PARAMETERS[name] for name in RUN_OPTIONS})
    except QTMError as error:
        assert "\n" not in str(error)


def fuzz_argv(command):
    """argv of ``command``: its own options (from the parser) with values drawn from :data:`TOKENS`."""
    import typer.main

    app = chain_cli.app if command == "run" else qtm_cli.app
    click_command = typer.main.get_command(app).commands[command]
    flags = sorted(opt for p in click_command.params if p.param_type_name == "option" for opt in p.opts
                   if opt.startswith("--") and opt not in ("--help", "--config", "--out"))
    option = st.tuples(st.sampled_from(flags), TOKENS).map(list)
    return st.lists(option, min_size=1, max_size=4).map(lambda pairs: [x for pair in pairs for x in pair])


def run_quietly(main, prog, argv) -> tuple[int, str]:
    err = io.StringIO()
    old = sys.argv
    sys.argv = [prog, *argv]
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            main()
        status = 0
    except SystemExit as done:
        status = done.code
    finally:
        sys.argv = old
    return status, err.getvalue()


def assert_clean_failure(status, err, folder) -> None:
    assert "Traceback" not in err and "internal error" not in err, err
    assert status in (0, 2), (status, err)
    if status:
        assert len(error_lines(err)) == 1, err
        assert list(Path(folder).iterdir()) == [], "bad input must write nothing"


@FUZZ
@given(argv=fuzz_argv("map"))
def test_fuzz_qtm_map(argv):
    status, err = run_quietly(qtm_cli.main, "qtm", ["map", *argv])
    assert "Traceback" not in err and "internal error" not in err and status in (0, 2), (status, err)
    if status:
        assert len(error_lines(err)) == 1, err


@FUZZ
@given(argv=fuzz_argv("simulate"))
def test_fuzz_qtm_simulate(tmp_path_factory, argv):
    folder = tmp_path_factory.mktemp("simulate")
    status, err = run_quietly(qtm_cli.main, "qtm", ["simulate", *argv, "--out", str(folder / "s.csv")])
    assert_clean_failure(status, err, folder)


@FUZZ
@given(argv=fuzz_argv("run"))
def test_fuzz_chain_run(tmp_path_factory, monkeypatch, argv):
    folder = tmp_path_factory.mktemp("chain")
    from commands import chain_run as cli_run

    # Everything up to the work: the options checked as run_chain checks them, nothing run.
    monkeypatch.setattr(cli_run, "run_chain", lambda run_dir, parameters, reporter: [parameters.resolve()])
    status, err = run_quietly(chain_cli.main, "chain", ["run", str(folder / "run"), *argv])
    assert_clean_failure(status, err, folder)
