"""Errors of the chain runner; the command line prints them as one line (see commands.common)."""

from qtm.errors import FailureError, QTMError


class ChainError(QTMError):
    """Bad input or an impossible request for a chain run, explained in one line."""


class DiskFullError(ChainError, FailureError):
    """The disk filled up under a run: not bad input but a failure of the system (exit status 1), explained in
    one line that says how to resume."""
