"""What both programs' apps share: ``--version``, and a help that shows flags without type noise and an example.

:func:`make_app` builds a program (``qtm``, ``chain``) whose ``--version`` prints the package version and, from a
checkout, its git commit; :func:`add_command` registers one command with its example, shown at the end of its
``--help``. Flags (``--json``, ``--help``, ``--decompose/--no-decompose``) take no value, so their help shows no
type (typer would print ``<bool>``).

Examples
--------
>>> from typer.testing import CliRunner
>>> app = make_app("demo", "A demo program.")
>>> def hello(loud: bool = typer.Option(False, "--loud", help="Shout.")) -> None:
...     '''Say hello.'''
>>> add_command(app, "hello", hello, example="demo hello --loud")
>>> help_text = CliRunner().invoke(app, ["hello", "--help"]).output
>>> "<bool>" in help_text, "demo hello --loud" in help_text
(False, True)
"""

from __future__ import annotations

from collections.abc import Callable

import typer
from typer.core import TyperCommand, TyperGroup

from qtm.provenance import version_line

#: typer's type labels and the plain word the help shows instead (a repeatable option shows its element's).
_WORDS = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "path": "PATH", "Path": "PATH"}


def _plain_types(command, ctx) -> None:
    """Flags (the help option too) show no type: they take no value; other options show a plain word (TEXT,
    PATH, ...) instead of typer's ``<str>`` or ``<list[Path]>``."""
    for param in command.get_params(ctx):
        if param.metavar is not None or "display_type_rich" in vars(param):
            continue
        if getattr(param, "is_flag", False):
            param.metavar = ""
            continue
        label = param.display_type(ctx).strip("<>").removeprefix("list[").removesuffix("]")
        word = _WORDS.get(label, label.upper())
        if param.param_type_name == "argument":
            # An argument's name already stands in the usage line and in its errors: only its type column changes.
            param.display_type_rich = lambda ctx, word=word: word
        else:
            param.metavar = word


class HelpCommand(TyperCommand):
    """A command whose help shows no type on its flags."""

    def format_help(self, ctx, formatter):
        _plain_types(self, ctx)
        return super().format_help(ctx, formatter)


class HelpGroup(TyperGroup):
    """A program whose help shows no type on its flags."""

    def format_help(self, ctx, formatter):
        _plain_types(self, ctx)
        return super().format_help(ctx, formatter)


def make_app(name: str, help_text: str) -> typer.Typer:
    """A program with ``--version`` and flags shown without a type.

    Parameters
    ----------
    name : str
        The program's name (the prefix of ``--version``'s line).
    help_text : str
        What ``PROG --help`` says the program does.
    """
    app = typer.Typer(name=name, help=help_text, no_args_is_help=True, add_completion=False,
                      pretty_exceptions_enable=False, cls=HelpGroup)

    def show_version(value: bool) -> None:
        if value:
            typer.echo(version_line(name))
            raise typer.Exit()

    @app.callback()
    def program(
        version: bool = typer.Option(False, "--version", callback=show_version, is_eager=True,
                                     help="Print the version (and the git commit of a checkout) and exit."),
    ) -> None:
        pass

    program.__doc__ = help_text
    return app


def add_command(app: typer.Typer, name: str, function: Callable, *, example: str) -> None:
    """Register ``function`` as the command ``name`` of ``app``, with ``example`` (one or more command lines,
    one per line) at the end of its help."""
    lines = "\n\n".join(f"  {line}" for line in example.strip().splitlines())
    app.command(name, cls=HelpCommand, epilog=f"Example:\n\n{lines}")(function)
