"""Errors a user sees as one line.

Every problem that bad input can cause is raised as a :class:`QTMError` (or a
subclass) with a message that says what is wrong and what to do. The command
line programs print that message on one line and exit with status 2.
"""


class QTMError(ValueError):
    """Bad input or an impossible request, explained in one line."""


class ImproperDistributionError(QTMError):
    """An operator's result is not a proper distribution (e.g. non-positive precision)."""


class RunDirectoryError(QTMError):
    """A run directory (or a folder of images in it) that cannot be read as ``qtm.rundir`` lays it out."""


class FailureError(QTMError):
    """The command ran on good input but did not succeed (e.g. a verification check failed); exit status 1."""
