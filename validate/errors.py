"""The error of ``validate``; the command line prints it as one line (see :mod:`commands.common`)."""

from qtm.errors import QTMError


class ValidateError(QTMError):
    """Bad input or an impossible request for a validation, explained in one line.

    Examples
    --------
    >>> issubclass(ValidateError, QTMError)
    True
    """
