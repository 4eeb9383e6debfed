"""Errors a user sees as one line.

Every problem that bad input can cause is raised as a :class:`QTMError` (or a
subclass) with a message that says what is wrong and what to do. The command
line programs print that message on one line and exit with status 2; :func:`quoted` and :func:`shortened` keep
a long value (a 5000-character path) from filling that line.
"""

#: Longest value an error message quotes whole; a longer one is cut to its first :data:`QUOTED_HEAD` characters.
QUOTED_LENGTH = 100
QUOTED_HEAD = 60


class QTMError(ValueError):
    """Bad input or an impossible request, explained in one line."""


class ImproperDistributionError(QTMError):
    """An operator's result is not a proper distribution (e.g. non-positive precision)."""


class RunDirectoryError(QTMError):
    """A run directory (or a folder of images in it) that cannot be read as ``qtm.rundir`` lays it out."""


class FailureError(QTMError):
    """The command ran on good input but did not succeed (e.g. a verification check failed); exit status 1."""


def shortened(text: str) -> str:
    """``text`` cut to its first :data:`QUOTED_HEAD` characters and an ellipsis when longer than :data:`QUOTED_LENGTH`,
    with line breaks and other unprintable characters escaped as Python writes them.

    Examples
    --------
    >>> shortened("name"), len(shortened("x" * 5000)), shortened("a\\nb")
    ('name', 61, 'a\\\\nb')
    """
    text = _cut(str(text))
    return text if text.isprintable() else repr(text)[1:-1]


def quoted(spec: str) -> str:
    """``spec`` quoted for an error message, cut short when long, so that the message stays one readable line.

    Examples
    --------
    >>> quoted("emoji:32")
    "'emoji:32'"
    >>> quoted("x" * 5000)
    "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…' (5000 characters)"
    """
    spec = str(spec)
    cut = _cut(spec)
    return repr(cut) if cut == spec else f"{cut!r} ({len(spec)} characters)"


def _cut(text: str) -> str:
    return text if len(text) <= QUOTED_LENGTH else text[:QUOTED_HEAD] + "…"
