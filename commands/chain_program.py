"""The ``chain`` command line program: ``chain run``, ``chain validate``, ``chain data``, ``chain verify-sampler``.

Each command lives in its own module; this file only registers them.
"""

from __future__ import annotations

import typer

from commands.chain_data import data_command
from commands.chain_run import run as run_command
from commands.chain_validate import validate_command
from commands.chain_verify_sampler import verify_sampler_command
from commands.common import run_app

app = typer.Typer(
    name="chain",
    help="Run the real Chain of Diffusion and validate the theory against it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("run")(run_command)
app.command("validate")(validate_command)
app.command("data")(data_command)
app.command("verify-sampler")(verify_sampler_command)


def main() -> None:
    """Entry point of the ``chain`` console script."""
    run_app(app, "chain")


if __name__ == "__main__":
    main()
