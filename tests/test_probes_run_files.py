"""Hostile probes of the files both programs read and of SIGTERM (issue 23, items 2 and 6).

A damaged or foreign ``run.json`` is one line naming the file and the field, exit 2, for ``chain run`` (resuming)
and ``chain validate`` alike (:mod:`qtm.run_record`); a fuzz run over JSON shapes finds no other outcome. SIGTERM
unwinds as Ctrl-C does: temporary files go, the lock is released, the program says ``terminated`` and exits 143.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli_usage import run_main
from test_faults import (
    TINY_ARGS,
    chain,
    cli_child,
    fake_run,
    in_child,
    stop,
    tiny,  # noqa: F401 - the fixture of a base-model cache that the chain runs use
)

from chain.rundir import RunDirectory
from commands import chain_program
from commands.common import EXIT_TERMINATED, run_app
from qtm.errors import RunDirectoryError
from qtm.io import LOCK_FILE, atomic_path, locked
from qtm.params import ALL_PARAMETERS
from qtm.rundir import read_parameters

FUZZ = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))

BAD_RECORDS = {
    "text for a number": ({"cfg": "hello"}, "field 'cfg' must be a number"),
    "a list": ([1, 2, 3], "must hold a JSON object, got a list"),
    "parameters not an object": ({"parameters": 5, "seed": "x"}, "field 'parameters' must be an object"),
    "out of range": ({"parameters": {"steps": -3}}, "field 'parameters.steps' must be >= 1"),
    "seed": ({"parameters": {"cfg": 3.0}, "seed": "x"}, "field 'seed' must be a whole number"),
    "unknown choice": ({"parameters": {"sampler": "nope"}}, "field 'parameters.sampler'"),
    "infinity": ({"parameters": {"cfg": 1e999}}, "field 'parameters.cfg' must be a number"),
}


def chain_cli(monkeypatch, capsys, *args):
    return run_main(monkeypatch, capsys, chain_program.main, "chain", *args)


def damage(run: Path, record) -> Path:
    (run / "run.json").write_text(json.dumps(record))
    return run / "run.json"


@pytest.mark.parametrize(("record", "says"), BAD_RECORDS.values(), ids=BAD_RECORDS.keys())
@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_damaged_run_json_is_one_line_naming_the_file_and_field(monkeypatch, capsys, tmp_path, command,
                                                                 record, says):
    run_json = damage(fake_run(tmp_path / "run"), record)
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    args = (["--report", str(tmp_path / "report"), "--no-decompose"] if command == "validate"
            else list(TINY_ARGS))
    status, _, err = chain_cli(monkeypatch, capsys, command, str(tmp_path / "run"), *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"chain: error: {run_json}: ") and says in lines[0]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before
    assert not (tmp_path / "report").exists()


def test_a_run_json_written_by_chain_run_passes_the_check(tmp_path):
    run = RunDirectory(tmp_path / "run")
    parameters = {name: ALL_PARAMETERS[name].default for name in ("cfg", "steps", "sampler", "schedule", "drop")}
    parameters["backend"] = "tiny"  # beside the backend's description at the top, as chain run writes it
    run.path.mkdir()
    record = run.open(parameters, seed=3, extra={"backend": {"name": "tiny", "config": {"steps": "not checked"}}})
    assert run.read_run() == record
    assert read_parameters(run.path)["steps"] == parameters["steps"]


JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12))
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)
KNOWN_KEYS = st.sampled_from([*ALL_PARAMETERS, "seed", "parameters", "params", "config", "backend", "versions"])
RECORDS = st.one_of(
    JSON_VALUES,
    st.dictionaries(KNOWN_KEYS, JSON_VALUES, max_size=6),
    st.builds(lambda params, top: {**top, "parameters": params},
              st.dictionaries(st.sampled_from(list(ALL_PARAMETERS)), JSON_LEAVES, max_size=8),
              st.dictionaries(KNOWN_KEYS, JSON_LEAVES, max_size=3)),
)


@FUZZ
@given(record=RECORDS, raw=st.one_of(st.none(), st.binary(max_size=40)))
def test_fuzz_run_json_shapes_give_parameters_or_one_line(tmp_path_factory, record, raw):
    folder = tmp_path_factory.mktemp("run")
    (folder / "run.json").write_bytes(raw if raw is not None else json.dumps(record).encode())
    for read in (read_parameters, lambda path: RunDirectory(path).read_run()):
        try:
            value = read(folder)
        except RunDirectoryError as error:
            assert "\n" not in str(error) and "run.json" in str(error)
        except Exception as error:  # chain's read of an unreadable file is a ChainError, also one line
            assert type(error).__name__ == "ChainError" and "\n" not in str(error), repr(error)
        else:
            assert isinstance(value, dict)


# --------------------------------------------------------------------------------------------------- SIGTERM

def test_sigterm_unwinds_like_ctrl_c_removing_temporaries_and_the_lock(monkeypatch, capsys, tmp_path):
    app = typer.Typer()

    @app.command()
    def work() -> None:
        with locked(tmp_path, what="work"), atomic_path(tmp_path / "out.txt") as part:
            part.write_text("half")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # never reached: the signal's handler raises at once

    monkeypatch.setattr(sys, "argv", ["demo"])
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as done:
        run_app(app, "demo")
    assert done.value.code == EXIT_TERMINATED
    assert capsys.readouterr().err.strip() == "demo: terminated"
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.usefixtures("tiny")
def test_sigterm_on_chain_run_exits_143_releases_the_lock_and_the_run_resumes(tmp_path):
    run = tmp_path / "run"
    # Far more iterations than can finish before the signal: forty of these take about 2 s, and a loaded machine
    # kept the polling parent waiting that long once, so the run ended before SIGTERM came (exit 0).
    pid = in_child(cli_child, ["run", str(run), *TINY_ARGS, "--iterations", "1000"], tmp_path / "stderr")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (run / "iter-001").exists():
        time.sleep(0.05)
    assert stop(pid, signal.SIGTERM) == EXIT_TERMINATED, (tmp_path / "stderr").read_text()
    lines = [line for line in (tmp_path / "stderr").read_text().splitlines() if line.strip()]
    assert lines[-1] == "chain: terminated"
    assert all(line.startswith("iteration ") for line in lines[:-1]), "only the progress lines come before"
    assert not (run / LOCK_FILE).exists()
    assert not [path for path in run.rglob("*") if ".part" in path.name]
    done = RunDirectory(run).completed()
    assert chain(run, iterations=len(done) + 1) == 0
    assert RunDirectory(run).completed() == list(range(len(done) + 1))


# ------------------------------------------------------------------------------------------------ path options

LONG = "p" * 300
PATH_PROBES = {
    "empty run directory": (["run", ""], "Invalid value for 'run_dir': the path is empty"),
    "NUL in run directory": (["run", "a\0b"], "holds a NUL character"),
    "over-long run directory": (["run", LONG], "longer than the 255 bytes"),
    "empty report": (["validate", "RUN", "--report", ""], "Invalid value for '--report': the path is empty"),
    "over-long report": (["validate", "RUN", "--report", LONG], "longer than the 255 bytes"),
    "empty real folder": (["validate", "RUN", "--report", "r", "--real", ""], "'--real': the path is empty"),
    "empty run to validate": (["validate", "", "--report", "r"], "'run_dirs': the path is empty"),
}


@pytest.mark.parametrize(("argv", "says"), PATH_PROBES.values(), ids=PATH_PROBES.keys())
def test_a_path_no_file_can_have_is_a_usage_error_that_writes_nothing(monkeypatch, capsys, tmp_path, argv, says):
    run = fake_run(tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    status, _, err = chain_cli(monkeypatch, capsys, *[str(run) if arg == "RUN" else arg for arg in argv])
    errors = [line for line in err.splitlines() if line.startswith("chain: error:")]
    assert status == 2 and len(errors) == 1 and says in errors[0], err
    assert len(errors[0]) < 300, "an over-long name is quoted cut short"
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


# ------------------------------------------------------------------------------------------ the selection law

@pytest.mark.parametrize("text", ['{"steps": 25', "[1]", '{"steps": -1}', '{"scheduler": {"bogus": 1}}',
                                  '{"sampler": "nope"}', '{"schedule": "wobbly"}', b"\xff\xfe"])
def test_a_damaged_selection_law_is_one_line_naming_it(tmp_path, text):
    from qtm.rundir import SELECTION_FOLDER, SELECTION_LAW_FILE, read_run
    from validate.selection import SamplerLaw

    run = fake_run(tmp_path / "run")
    law = run / SELECTION_FOLDER / SELECTION_LAW_FILE
    law.parent.mkdir()
    law.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(RunDirectoryError) as refused:
        SamplerLaw.of_run(read_run(run))
    assert str(refused.value).startswith(str(law)) and "\n" not in str(refused.value)


def test_an_intact_selection_law_is_read(tmp_path):
    from qtm.rundir import SELECTION_FOLDER, SELECTION_LAW_FILE, read_run
    from validate.selection import SamplerLaw

    run = fake_run(tmp_path / "run")
    (run / SELECTION_FOLDER).mkdir()
    (run / SELECTION_FOLDER / SELECTION_LAW_FILE).write_text(
        json.dumps({"sampler": "ddim", "steps": 25, "schedule": "cosine", "scheduler": {"num_train_timesteps": 100}}))
    law = SamplerLaw.of_run(read_run(run))
    assert (law.sampler, law.steps, law.schedule, law.scheduler.num_train_timesteps) == ("ddim", 25, "cosine", 100)
