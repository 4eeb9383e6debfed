"""The documentation stays honest: the CLI reference matches the apps, and the README's commands work.

Every line of every ```bash block in README.md is a command (a trailing ``\\`` joins
lines; ``$ `` prompts and comments are dropped). How a command is checked:

- ``qtm ...`` / ``chain ...``: run, in order, in a sandbox folder that links the
  repository's files (outputs such as ``runs/`` and ``figures/`` land in the sandbox);
  the command must exit 0. With a ``# slow`` or ``# gpu`` marker at the end of the
  line it is only parsed by the program's own command line parser (unknown options,
  bad types and missing arguments fail), not run.
- ``make TARGET``: ``make -n TARGET`` (the target exists and its recipe expands;
  running it here would recurse into the test suite or reinstall the environment).
- ``python FILE ...``: run (or, with a marker, compiled only).
- set-up lines (``git``, ``cd``, ``pip``, ``source``, ``export``, ...): parsed only.
"""

import importlib
import os
import py_compile
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import load_tool

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
#: A comment that starts with one of these words marks a command as not to be run.
MARKER = re.compile(r"\s*(slow|gpu)\b")
SETUP_PROGRAMS = {"git", "cd", "pip", "pip3", "source", "export", "python3", "conda", "nvidia-smi", "ls", "cat"}
#: Seconds one README command may run.
COMMAND_TIMEOUT = 600
#: Top-level entries not linked into the sandbox: the outputs README commands write.
OUTPUTS = {"runs", "figures", ".git", ".venv"}


@dataclass(frozen=True)
class Command:
    line: int
    text: str
    argv: tuple
    marker: str | None

    @property
    def id(self) -> str:
        return f"L{self.line}:{' '.join(self.argv)[:60]}"


def parse_commands(markdown: str) -> list[Command]:
    """The commands of the ```bash (or sh, shell, console) blocks of a Markdown text."""
    commands = []
    lines = markdown.splitlines()
    inside = False
    pending, start = "", 0
    for number, raw in enumerate(lines, start=1):
        stripped = raw.strip()
        if stripped.startswith("```"):
            inside = not inside and stripped[3:].strip() in ("bash", "sh", "shell", "console")
            continue
        if not inside:
            continue
        if not pending:
            start = number
            stripped = stripped.removeprefix("$ ")
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = (pending + stripped).strip()
        pending = ""
        argv = tuple(shlex.split(text, comments=True))
        if not argv:
            continue
        marker = MARKER.match(text.partition("#")[2])
        commands.append(Command(start, text, argv, marker.group(1) if marker else None))
    return commands


README_COMMANDS = parse_commands((REPO / "README.md").read_text())


def test_cli_reference_is_in_sync_with_the_apps():
    reference = load_tool("cli_reference")
    assert reference.TARGET.read_text() == reference.render(), "run: python tools/cli_reference.py"


def test_cli_reference_covers_every_command():
    import typer

    from commands.chain_program import app as chain_app
    from commands.qtm_program import app as qtm_app

    text = (REPO / "docs" / "cli.md").read_text()
    for prog, app in (("qtm", qtm_app), ("chain", chain_app)):
        for name, command in typer.main.get_command(app).commands.items():
            assert f"### `{prog} {name}`" in text
            for param in command.params:
                for opt in param.opts if param.param_type_name == "option" else ():
                    assert f"`{opt}`" in text


def test_the_parser_reads_continuations_prompts_comments_and_markers():
    text = "\n".join([
        "Text with `qtm nothing` inline.",
        "```bash",
        "# a comment line",
        "$ qtm simulate --cfg 1,3 \\",
        "    --out runs/a.parquet   # writes a table",
        "",
        "chain run runs/sd --backend sd  # gpu",
        "make demo   # slow, one minute",
        "```",
        "```python",
        "qtm not_a_command",
        "```",
    ])  # fmt: skip
    commands = parse_commands(text)
    assert [c.argv for c in commands] == [
        ("qtm", "simulate", "--cfg", "1,3", "--out", "runs/a.parquet"),
        ("chain", "run", "runs/sd", "--backend", "sd"),
        ("make", "demo"),
    ]
    assert [c.marker for c in commands] == [None, "gpu", "slow"]
    assert commands[0].line == 4


def test_a_marked_command_with_an_unknown_option_fails_the_parse():
    (command,) = parse_commands("```bash\nchain run runs/sd --backend sd --bogus 1  # gpu\n```")
    with pytest.raises(Exception, match="--bogus"):
        _parse_only(command)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    for entry in REPO.iterdir():
        if entry.name not in OUTPUTS:
            (root / entry.name).symlink_to(entry)
    return root


def _environment() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg")
    env.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))
    return env


def _parse_only(command: Command) -> None:
    """Let the program's own parser read a marked qtm/chain command without running it."""
    import typer

    module = {"qtm": "commands.qtm_program", "chain": "commands.chain_program"}[command.argv[0]]
    group = typer.main.get_command(importlib.import_module(module).app)
    name, *args = command.argv[1:]
    assert name in group.commands, f"README line {command.line}: {command.argv[0]} has no command {name!r}"
    sub = group.commands[name]
    sub.make_context(f"{command.argv[0]} {name}", list(args))


def _check(command: Command, sandbox: Path) -> None:
    program = command.argv[0]
    where = f"README line {command.line}: {command.text}"
    if program == "make":
        done = subprocess.run(["make", "-n", *command.argv[1:]], cwd=REPO, capture_output=True, text=True,
                              env=_environment(), check=False)  # fmt: skip
        assert done.returncode == 0, f"{where}\n{done.stderr}"
        return
    if program in ("qtm", "chain"):
        if command.marker:
            _parse_only(command)
            return
        argv = [str(BIN / program), *command.argv[1:]]
    elif program in ("python", "python3") and len(command.argv) > 1 and command.argv[1].endswith(".py"):
        script = REPO / command.argv[1]
        assert script.exists(), where
        if command.marker:
            py_compile.compile(str(script), doraise=True)
            return
        argv = [sys.executable, *command.argv[1:]]
    else:
        assert program in SETUP_PROGRAMS or shutil.which(program) or (REPO / program).exists(), (
            f"{where}: unknown program {program!r}"
        )
        return
    done = subprocess.run(argv, cwd=sandbox, capture_output=True, text=True, env=_environment(),
                          timeout=COMMAND_TIMEOUT, check=False)  # fmt: skip
    assert done.returncode == 0, f"{where}\nexit {done.returncode}\n{done.stderr[-3000:]}"


def test_the_readme_has_commands():
    assert README_COMMANDS, "README.md has no ```bash block"


@pytest.mark.xdist_group("readme")  # in order, in one sandbox: one worker runs them all
@pytest.mark.parametrize("index", range(len(README_COMMANDS)), ids=[c.id for c in README_COMMANDS])
def test_readme_command(index, sandbox):
    """Runs (or, for slow/GPU lines, parses) the README's commands in order; earlier ones first."""
    done = sandbox / ".done"
    ran = int(done.read_text()) if done.exists() else 0
    for earlier in range(ran, index):
        _check(README_COMMANDS[earlier], sandbox)
    _check(README_COMMANDS[index], sandbox)
    done.write_text(str(max(ran, index + 1)))


def test_theory_page_names_every_operator():
    """docs/theory.md documents every public operator and equilibrium of the theory layer."""
    import inspect

    from qtm import equilibria, gaussian

    text = (REPO / "docs" / "theory.md").read_text()
    for module in (gaussian, equilibria):
        for name, value in vars(module).items():
            if inspect.isfunction(value) and value.__module__ == module.__name__ and not name.startswith("_"):
                assert f"`{name}`" in text, f"docs/theory.md does not mention {module.__name__}.{name}"


@pytest.mark.parametrize("page", ["README.md", "docs/theory.md", "docs/cli.md", "figures/README.md"])
def test_local_links_and_images_resolve(page):
    """Every relative link or image in the documentation points at a file of the repository."""
    path = REPO / page
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
        if re.match(r"[a-z]+:|#", target):
            continue
        assert (path.parent / target.split("#")[0]).exists(), f"{page} links to a missing {target}"
