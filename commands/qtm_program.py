"""The ``qtm`` command line program.

Each command lives in its own module (``qtm/cli_*.py``); this file only
registers them, so that the commands stay independent of each other.
"""

from __future__ import annotations

import typer

from commands.common import run_app
from commands.qtm_figures import figures_command
from commands.qtm_map import map_command
from commands.qtm_simulate import simulate
from commands.qtm_verify import verify_command

app = typer.Typer(
    name="qtm",
    help="Quantitative-genetics theory of model collapse in the Chain of Diffusion.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("map")(map_command)
app.command("simulate")(simulate)
app.command("verify")(verify_command)
app.command("figures")(figures_command)


def main() -> None:
    """Entry point of the ``qtm`` console script."""
    run_app(app, "qtm")


if __name__ == "__main__":
    main()
