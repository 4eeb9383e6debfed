"""What both command line programs share: one error path, one line per error, documented exit codes.

Every failure a user can expect ends in one line on stderr, ``PROG: error: ...``, and an exit status
(see ``docs/errors.md``):

==== ==================================================================================
0    success
1    the command ran but failed (:class:`~qtm.errors.FailureError`, an error of the
     system such as a full disk, or an unexpected exception: a bug)
2    bad input: a :class:`~qtm.errors.QTMError` or a usage error (unknown option,
     missing argument, bad type, no command)
130  interrupted (Ctrl-C)
143  terminated (SIGTERM): handled as Ctrl-C is, temporary files removed and locks released
==== ==================================================================================

``QTM_DEBUG=1`` in the environment adds the traceback of the error above its line.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading
import traceback

import typer

from qtm.errors import FailureError, QTMError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
#: Set this environment variable to 1 to see the traceback behind an error line.
DEBUG_VARIABLE = "QTM_DEBUG"
#: typer >= 0.2x carries its own copy of click (``typer._click``); older typer raises click's own classes.
_CLICK_EXCEPTION_MODULES = ("typer._click.exceptions", "click.exceptions")


def run_app(app: typer.Typer, prog_name: str) -> None:
    """Run a typer app as a console script: every error becomes one line on stderr and an exit status.

    Parameters
    ----------
    app : typer.Typer
        The program.
    prog_name : str
        Its name, the prefix of every error line.

    Examples
    --------
    >>> app = typer.Typer()
    >>> @app.command()
    ... def fail() -> None:
    ...     raise QTMError("--size must be > 0, got -1")
    >>> import sys; sys.argv = ["demo"]; sys.stderr = sys.stdout
    >>> try:
    ...     run_app(app, "demo")
    ... except SystemExit as done:
    ...     print("exit", done.code)
    demo: error: --size must be > 0, got -1
    exit 2
    >>> sys.stderr = sys.__stderr__
    """
    try:
        with _terminate_as_interrupt():
            # Outside standalone mode typer raises usage errors instead of printing them, and returns
            # (does not raise) the code of a typer.Exit: 130 when it caught a Ctrl-C (or SIGTERM, see below).
            result = app(prog_name=prog_name, standalone_mode=False)
    except SystemExit:
        raise
    except BaseException as error:  # the one place where every error becomes an exit status
        status = exit_status(error, prog_name)
    else:
        status = result if isinstance(result, int) and not isinstance(result, bool) else EXIT_OK
        if status == EXIT_INTERRUPTED:
            status = _say_interrupted(prog_name, terminated=_TERMINATED.is_set())
    if status != EXIT_OK:
        sys.exit(status)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it unwinds as it does for Ctrl-C (exit 143)."""


#: Set once SIGTERM arrived: typer reports an interrupt as exit 130 whichever signal caused it.
_TERMINATED = threading.Event()


@contextlib.contextmanager
def _terminate_as_interrupt():
    """While a command runs, SIGTERM raises :class:`Terminated`: temporary files are removed and locks released
    on the way out, as for Ctrl-C. A second SIGTERM kills at once (the default action)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        _TERMINATED.set()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Terminated()

    _TERMINATED.clear()
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_status(error: BaseException, prog_name: str) -> int:
    """Print the one line ``error`` deserves on stderr and return the exit status for it.

    Parameters
    ----------
    error : BaseException
        What a command raised.
    prog_name : str
        The program's name, the prefix of the line.

    Returns
    -------
    int
        :data:`EXIT_BAD_INPUT`, :data:`EXIT_FAILURE` or :data:`EXIT_INTERRUPTED` (a usage error of click's
        keeps its own code, 2 for every usage error).

    Examples
    --------
    >>> import sys; sys.stderr = sys.stdout
    >>> exit_status(FailureError("2 checks failed"), "qtm")
    qtm: error: 2 checks failed
    1
    >>> sys.stderr = sys.__stderr__
    """
    usage_errors = _click_classes("ClickException")
    if _debugging() and not isinstance(error, usage_errors):
        traceback.print_exception(error)
    if _interrupted(error):
        return _say_interrupted(prog_name, terminated=_TERMINATED.is_set() or isinstance(error, Terminated))
    if isinstance(error, QTMError):
        _say(prog_name, f"error: {error}")
        return EXIT_FAILURE if isinstance(error, FailureError) else EXIT_BAD_INPUT
    if isinstance(error, usage_errors):
        return _show_usage_error(error, prog_name)
    if isinstance(error, typer.Abort):
        _say(prog_name, "aborted")
        return EXIT_FAILURE
    if isinstance(error, OSError):
        # The system refused (disk full, permission changed mid-run): not bad input and not a bug.
        _say(prog_name, f"error: {error}")
        return EXIT_FAILURE
    detail = f": {error}" if str(error) else ""
    hint = "" if _debugging() else f"; rerun with {DEBUG_VARIABLE}=1 to see the traceback"
    _say(
        prog_name,
        f"internal error: {type(error).__name__}{detail} (a bug{hint}; please report it with the command line "
        "and the traceback)",
    )
    return EXIT_FAILURE


def _interrupted(error: BaseException) -> bool:
    # click before typer's copy turned Ctrl-C into Abort (from KeyboardInterrupt) instead of Exit(130).
    return isinstance(error, KeyboardInterrupt) or (
        isinstance(error, typer.Abort) and isinstance(error.__cause__, KeyboardInterrupt)
    )


def _say_interrupted(prog_name: str, *, terminated: bool) -> int:
    _say(prog_name, "terminated" if terminated else "interrupted")
    return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED


def _show_usage_error(error, prog_name: str) -> int:
    """Usage line and one error line for a click usage error; the help text when no command was given."""
    if isinstance(error, _click_classes("NoArgsIsHelpError")):
        # The help is its message; with rich installed typer already printed it (to stdout) and the message is empty.
        if error.format_message().strip():
            error.show()
        return error.exit_code
    context = getattr(error, "ctx", None)
    hint = ""
    if context is not None:
        typer.echo(context.get_usage(), err=True)
        if context.command.get_help_option(context) is not None:
            hint = f" (see '{context.command_path} {context.help_option_names[0]}')"
    _say(prog_name, f"error: {error.format_message().rstrip('.')}{hint}")
    return error.exit_code


def _click_classes(name: str) -> tuple[type, ...]:
    """The exception class ``name`` of every copy of click that is installed (typer's own and click)."""
    found = []
    for module_name in _CLICK_EXCEPTION_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, name):
            found.append(getattr(module, name))
    return tuple(found)


def _debugging() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


def _say(prog_name: str, message: str) -> None:
    # A message with a line break (an exception's text) would break the one-line promise.
    typer.echo(f"{prog_name}: {' '.join(message.split())}", err=True)
