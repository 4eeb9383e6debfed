"""The data set a loader returns, and the ``?k=v&...`` options of a ``--data`` spec that the loaders share.

Below both :mod:`chain.data` (folders, Hugging Face, digits, and the dispatch on ``--data``) and
:mod:`chain.npm_data` (emoji and Pokémon), so that neither imports the other back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chain.errors import ChainError
from qtm.errors import quoted


@dataclass
class Dataset:
    """Images (decoded PIL images), their captions and file names, and where they came from.

    ``labels`` holds, where the source has them, one dict per image of the labels that are not
    the caption (a name, a category, types, ...); ``notice`` the licence or terms of use of the images.
    """

    images: list
    captions: list[str]
    file_names: list[str]
    source: str
    labels: list[dict] = field(default_factory=list)
    notice: str = ""

    def __len__(self) -> int:
        return len(self.captions)


def parse_query(spec: str, query: str, allowed) -> dict[str, str]:
    """The options ``k=v&k=v`` after the ``?`` of a data spec, each key one of ``allowed`` and given once.

    Examples
    --------
    >>> parse_query("hf:x?caption=text", "caption=text", ("image", "caption"))
    {'caption': 'text'}
    >>> parse_query("emoji?max=24&max=2", "max=24&max=2", ("min", "max"))
    Traceback (most recent call last):
    ...
    chain.errors.ChainError: --data 'emoji?max=24&max=2': max= is given 2 times; give each option once
    """
    options = {}
    items = [item for item in query.split("&") if item]
    for item in items:
        key, equals, value = item.partition("=")
        if key not in allowed or not equals or not value:
            choices = ", ".join(k + "=..." for k in allowed)
            raise ChainError(f"--data {quoted(spec)}: {quoted(item)} is not an option; use {choices}")
        if key in options:
            count = sum(other.partition("=")[0] == key for other in items)
            raise ChainError(f"--data {quoted(spec)}: {key}= is given {count} times; give each option once")
        options[key] = value
    return options
