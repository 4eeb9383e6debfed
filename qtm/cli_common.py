"""What both command line programs share: one-line errors and exit codes."""

from __future__ import annotations

import sys

import typer

from qtm.errors import QTMError

EXIT_BAD_INPUT = 2


def run_app(app: typer.Typer, prog_name: str) -> None:
    """Run a typer app; a :class:`QTMError` becomes one line on stderr and exit status 2."""
    try:
        app(prog_name=prog_name, standalone_mode=False)
    except QTMError as error:
        typer.echo(f"{prog_name}: error: {error}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        typer.echo(f"{prog_name}: interrupted", err=True)
        sys.exit(130)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.Abort:
        typer.echo(f"{prog_name}: aborted", err=True)
        sys.exit(1)
    except Exception as error:  # click's usage errors carry their own exit code
        import click

        if isinstance(error, click.ClickException):
            error.show()
            sys.exit(error.exit_code)
        raise
