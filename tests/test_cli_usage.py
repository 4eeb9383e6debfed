"""Both programs' one error path (commands.common.run_app): one line on stderr and a documented exit status.

Exit statuses (docs/errors.md): 2 usage error or bad input, 1 the command ran but failed (or a bug),
130 interrupted. No error a user can cause shows a traceback; ``QTM_DEBUG=1`` shows it.
"""

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from commands import qtm_program as cli

BIN = Path(sys.executable).parent
USAGE_ERRORS = {
    "no command": [],
    "unknown command": ["nope"],
    "unknown option": ["map", "--bogus", "1"],
    "option without its value": ["map", "--cfg"],
    "bad type": ["verify", "--size", "abc"],
}


def run_main(monkeypatch, capsys, main, prog, *args):
    """Run an entry point in-process; return (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", [prog, *args])
    monkeypatch.setenv("COLUMNS", "200")
    try:
        main()
        status = 0
    except SystemExit as done:
        status = done.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ": error: " in line]


@pytest.mark.parametrize("args", USAGE_ERRORS.values(), ids=USAGE_ERRORS.keys())
def test_qtm_usage_errors_exit_2_without_traceback(monkeypatch, capsys, args):
    status, _, stderr = run_main(monkeypatch, capsys, cli.main, "qtm", *args)
    assert status == 2
    assert "Traceback" not in stderr
    if args:  # without a command the help is the whole answer
        assert len(error_lines(stderr)) == 1 and error_lines(stderr)[0].startswith("qtm: error: ")


def test_a_usage_error_names_the_option_and_where_to_find_help(monkeypatch, capsys):
    _, _, stderr = run_main(monkeypatch, capsys, cli.main, "qtm", "map", "--bogus", "1")
    assert stderr.splitlines()[-1] == "qtm: error: No such option: --bogus (see 'qtm map --help')"


CHAIN_USAGE_ERRORS = {
    "no command": [],
    "missing argument": ["validate"],
    "unknown option": ["run", "x", "--bogus", "1"],
    "bad type": ["run", "x", "--iterations", "abc"],
}


@pytest.mark.parametrize("args", CHAIN_USAGE_ERRORS.values(), ids=CHAIN_USAGE_ERRORS.keys())
def test_chain_usage_errors_exit_2_without_traceback(monkeypatch, capsys, tmp_path, args):
    from commands import chain_program as chain_cli

    monkeypatch.chdir(tmp_path)  # "x" must never become a run directory of the repository
    status, _, stderr = run_main(monkeypatch, capsys, chain_cli.main, "chain", *args)
    assert status == 2
    assert "Traceback" not in stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("program", "args"),
    [
        ("qtm", []),
        ("qtm", ["map", "--bogus", "1"]),
        ("chain", ["validate"]),
        ("chain", ["run", "x", "--iterations", "abc"]),
    ],
)
def test_installed_programs_report_usage_errors_with_exit_2(tmp_path, program, args):
    """End to end through the console scripts (the bug was a traceback and exit 1 here)."""
    done = subprocess.run(
        [str(BIN / program), *args], capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr


def test_bad_input_exits_2_and_a_failure_exits_1(monkeypatch, capsys):
    from commands.common import exit_status
    from qtm.errors import FailureError, QTMError

    assert exit_status(QTMError("--cfg must be >= 0, got -1"), "qtm") == 2
    assert exit_status(FailureError("1 passed, 1 failed"), "qtm") == 1
    assert capsys.readouterr().err.splitlines() == [
        "qtm: error: --cfg must be >= 0, got -1",
        "qtm: error: 1 passed, 1 failed",
    ]


def test_failing_verify_checks_exit_1(monkeypatch, capsys, tmp_path):
    """``qtm verify`` exits 1 when a check fails or cannot run (it exited 0: typer.Exit was returned, not raised)."""
    import qtm.verify

    def run_checks(names, **options):
        return [types.SimpleNamespace(status=status) for status in ("pass", "fail", "error")]

    # qtm.verify.run_checks is the name cli_verify looks up at each call, module or package alike.
    monkeypatch.setattr(qtm.verify, "run_checks", run_checks)
    out = tmp_path / "verify"
    status, stdout, stderr = run_main(monkeypatch, capsys, cli.main, "qtm", "verify", "--out", str(out))
    assert status == 1
    assert "1 passed, 1 failed, 1 could not run" in stdout
    assert stderr.splitlines() == [
        f"qtm: error: 1 passed, 1 failed, 1 could not run, 0 skipped; see {out / 'verify.json'}"
    ]


def test_an_unwritable_output_is_refused_before_any_work(monkeypatch, capsys, tmp_path):
    import qtm.verify

    def run_checks(names, **options):
        raise AssertionError("verify ran although its --out cannot be written")

    monkeypatch.setattr(qtm.verify, "run_checks", run_checks)
    blocker = tmp_path / "file"
    blocker.write_text("")
    status, _, stderr = run_main(monkeypatch, capsys, cli.main, "qtm", "verify", "--out", str(blocker / "verify"))
    assert status == 2
    assert (
        stderr == f"qtm: error: --out: {str(blocker)!r} is a file, so {str(blocker / 'verify')!r} cannot be created\n"
    )
    status, _, stderr = run_main(monkeypatch, capsys, cli.main, "qtm", "figures", "--out", str(blocker))
    assert status == 2 and stderr == f"qtm: error: --out {str(blocker)!r} is a file; give a folder\n"


def _make_figures_raising(error):
    def make_figures(*args, **kwargs):
        raise error

    return make_figures


def test_ctrl_c_in_a_command_exits_130_with_one_line(monkeypatch, capsys, tmp_path):
    import qtm.figures

    monkeypatch.setattr(qtm.figures, "make_figures", _make_figures_raising(KeyboardInterrupt()))
    status, _, stderr = run_main(monkeypatch, capsys, cli.main, "qtm", "figures", "--out", str(tmp_path))
    assert status == 130
    assert stderr == "qtm: interrupted\n"


@pytest.mark.parametrize("debug", [False, True])
def test_an_unexpected_exception_is_one_line_and_its_traceback_needs_qtm_debug(monkeypatch, capsys, tmp_path, debug):
    import qtm.figures

    monkeypatch.setattr(
        qtm.figures, "make_figures", _make_figures_raising(ZeroDivisionError("float division\nby zero"))
    )
    if debug:
        monkeypatch.setenv("QTM_DEBUG", "1")
    else:
        monkeypatch.delenv("QTM_DEBUG", raising=False)
    status, _, stderr = run_main(monkeypatch, capsys, cli.main, "qtm", "figures", "--out", str(tmp_path))
    assert status == 1
    last = stderr.splitlines()[-1]
    assert last.startswith("qtm: internal error: ZeroDivisionError: float division by zero (a bug")
    assert "report it" in last
    if debug:
        assert "Traceback (most recent call last)" in stderr and "make_figures" in stderr
        assert "QTM_DEBUG" not in last
    else:
        assert stderr.count("\n") == 1 and "QTM_DEBUG=1" in last


def test_an_error_of_the_system_exits_1_with_its_message(monkeypatch, capsys, tmp_path):
    import qtm.figures

    full = OSError(28, "No space left on device", str(tmp_path / "a.png"))
    monkeypatch.setattr(qtm.figures, "make_figures", _make_figures_raising(full))
    status, _, stderr = run_main(monkeypatch, capsys, cli.main, "qtm", "figures", "--out", str(tmp_path))
    assert status == 1
    assert stderr == f"qtm: error: [Errno 28] No space left on device: {str(tmp_path / 'a.png')!r}\n"
