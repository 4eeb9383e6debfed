"""Every ``--help`` of both programs: no type noise on flags (``<bool>``, ``<str>``), an example, and
``--version`` prints the package version (and the git commit of a checkout)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qtm.provenance import package_version

REPO = Path(__file__).resolve().parents[1]
#: typer's type labels: ``<bool>``, ``<str>``, ``<list[Path]>``, ...
TYPE_NOISE = re.compile(r"<(bool|str|int|float|path|Path|list\[[^\]]*\])>")


def _programs():
    from commands.qtm_program import app as qtm_app

    programs = {"qtm": qtm_app}
    try:
        from commands.chain_program import app as chain_app
    except ImportError:  # the chain extra is missing: the qtm program is still checked
        return programs
    programs["chain"] = chain_app
    return programs


def _commands():
    for name, app in _programs().items():
        yield name, app, []
        for info in app.registered_commands:
            yield name, app, [info.name]


@pytest.mark.parametrize(("program", "app", "command"), list(_commands()),
                         ids=lambda value: value if isinstance(value, str) else " ".join(value) if isinstance(
                             value, list) else "")
def test_help_has_no_type_noise_and_an_example(program, app, command):
    result = CliRunner().invoke(app, [*command, "--help"], prog_name=program, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert not TYPE_NOISE.search(result.output), TYPE_NOISE.search(result.output).group(0)
    assert "(1.0)" not in result.output and "[default: (" not in result.output
    if command:
        assert "Example:" in result.output and f"{program} {command[0]} " in result.output.split("Example:")[1]


@pytest.mark.parametrize("program", ["qtm", "chain"])
def test_version_prints_the_package_version_and_the_commit(program):
    if program not in _programs():
        pytest.skip("the chain extra is not installed")
    out = subprocess.run([sys.executable, "-m", f"commands.{program}_program", "--version"], capture_output=True,
                         text=True, check=True, cwd=REPO)
    line = out.stdout.strip()
    assert line.startswith(f"{program} {package_version()}")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    if commit:
        assert line.endswith(f"(git {commit[:12]})")
    assert out.stderr == ""


def test_version_leaves_out_the_commit_outside_a_checkout(monkeypatch):
    from qtm import provenance

    monkeypatch.setattr(provenance, "git_commit", lambda: None)
    assert provenance.version_line("qtm") == f"qtm {package_version()}"
