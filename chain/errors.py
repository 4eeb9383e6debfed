"""Errors of the chain runner; the command line prints them as one line (see commands.common)."""

from qtm.errors import QTMError


class ChainError(QTMError):
    """Bad input or an impossible request for a chain run, explained in one line."""
