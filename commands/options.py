"""Command-line options derived from the one parameter model (:mod:`qtm.params`).

A command declares which parameters it takes; :func:`parameter_options` appends one
typer option per parameter to the command's signature, with the parameter's flag,
type, help text (range included) and default. Every option defaults to ``None`` on the
command line, so that a ``--config`` file can set it and the command line still wins
(:func:`qtm.grid.merge_options`); ``--help`` shows the real default.

Examples
--------
>>> import typer
>>> @parameter_options("cfg", "steps")
... def command(**options):
...     print(options)
>>> app = typer.Typer()
>>> _ = app.command()(command)
>>> from typer.testing import CliRunner
>>> CliRunner().invoke(app, ["--cfg", "3"]).output
"{'cfg': 3.0, 'steps': None}\\n"
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path

import typer

from qtm.io import path_name_problem
from qtm.params import ALL_PARAMETERS, Parameter

_TYPES = {"float": float, "int": int, "text": str, "flag": bool}


def parameter_options(
    *names: str,
    text: bool = False,
    defaults: Mapping[str, object] | None = None,
    registry: Mapping[str, Parameter] = ALL_PARAMETERS,
):
    """Decorate a command that takes ``**options``: add one typer option per named parameter.

    Parameters
    ----------
    *names : str
        The parameters, in the order ``--help`` lists them.
    text : bool
        Take every value as text (a comma list or ``start:stop:step`` range of a grid, parsed
        by :mod:`qtm.grid`), instead of one typed value.
    defaults : mapping, optional
        Defaults to show where the command's differ from :attr:`Parameter.default` (a preset).
    registry : mapping, optional
        Where the names are looked up (a command's own options may be added to the model's).
    """
    shown = dict(defaults or {})

    def decorate(function):
        own = [p for p in inspect.signature(function).parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
        arguments = [p for p in own if isinstance(p.default, typer.models.ArgumentInfo)]
        others = [p for p in own if p not in arguments]
        annotations = {p.name: p.annotation for p in own}
        added = []
        for name in names:
            p = registry[name]
            default = shown.get(name, p.default)
            # The default is part of the help text: typer would wrap a default given as text in parentheses.
            if p.kind == "flag":
                info = typer.Option(None, f"{p.flag}/--no-{p.flag[2:]}", show_default=False,
                                    help=f"{p.help_text()} Default: {p.flag if default else '--no-' + p.flag[2:]}.")
                annotation = bool | None
            else:
                shown_default = "" if default is None else f" Default: {default}."
                info = typer.Option(None, p.flag, help=p.help_text() + shown_default, show_default=False)
                annotation = (str if text else _TYPES[p.kind]) | None
            added.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info,
                                           annotation=annotation))
            annotations[name] = annotation
        function.__signature__ = inspect.Signature(
            [*arguments, *[p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in added],
             *[p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in others]]
        )
        function.__annotations__ = annotations
        return function

    return decorate


def path_text(value) -> Path:
    """typer's ``parser=`` of every path option and argument: the text as a :class:`~pathlib.Path`, or a usage
    error (exit 2) for a path no file can have (:func:`qtm.io.path_name_problem`); typer alone would read an
    empty path as the current folder.

    Examples
    --------
    >>> path_text("runs/a")
    PosixPath('runs/a')
    >>> path_text("")
    Traceback (most recent call last):
    ...
    typer._click.exceptions.BadParameter: the path is empty; give a path
    """
    if isinstance(value, Path):
        return value
    problem = path_name_problem(value)
    if problem is not None:
        raise typer.BadParameter(problem)
    return Path(value)
