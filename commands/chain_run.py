"""``chain run``: run or resume the Chain of Diffusion in a run directory."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer

from chain.run_parameters import RunParameters
from chain.runner import Reporter, run_chain
from commands.options import parameter_options, path_text
from qtm.grid import load_config
from qtm.params import ALL_PARAMETERS, RUN_DEFAULTS, RUN_OPTIONS


class RichReporter(Reporter):
    """Rich progress bars on stderr for each phase, and one summary line per finished iteration."""

    def __init__(self):
        from rich.console import Console

        self.console = Console(stderr=True)

    @contextlib.contextmanager
    def task(self, description: str, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=self.console, transient=True) as bars:
            task = bars.add_task(description, total=total)
            yield lambda done, total: bars.update(task, completed=done, total=total)

    def line(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True)


@parameter_options(*RUN_OPTIONS, defaults=RUN_DEFAULTS)
def run(
    run_dir: Path = typer.Argument(
        ..., help="Run directory (created, or resumed if it exists), e.g. runs/NAME.", parser=path_text
    ),
    config: Path = typer.Option(None, help="TOML file of options; options given here win.", parser=path_text),
    **given,
) -> None:
    """Run the chain: finetune on the data, generate, finetune on what was generated, repeat.

    Rerunning the same command on the same run directory resumes it: finished
    iterations are kept, an unfinished one is redone. More --iterations extend a finished run.
    """
    from qtm.io import check_output_dir

    check_output_dir(run_dir, flag="RUN_DIR")
    allowed = {name: ALL_PARAMETERS[name] for name in RUN_OPTIONS}
    options = load_config(config, allowed=allowed) if config else {}
    options.update({key: value for key, value in given.items() if value is not None})
    reporter = RichReporter()
    records = run_chain(run_dir, RunParameters(**options), reporter=reporter)
    reporter.line(f"{run_dir}: {len(records)} iteration(s) complete")
