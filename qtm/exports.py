"""A package's public names, imported on first use (PEP 562), so that importing the package stays light.

Examples
--------
>>> getattr_, dir_ = lazy_exports("demo", {"sqrt": "math"}, {})
>>> getattr_("sqrt")(4.0), "sqrt" in dir_()
(2.0, True)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module


def lazy_exports(package: str, homes: Mapping[str, str], namespace: dict, *,
                 computed: Mapping[str, Callable[[], object]] | None = None):
    """The module-level ``__getattr__`` and ``__dir__`` of a package whose public names load on first use.

    Parameters
    ----------
    package : str
        The package's name, for the error of an unknown attribute.
    homes : mapping of str to str
        Each public name and the module that defines it.
    namespace : dict
        The package's ``globals()``: a loaded name is stored there, so the next access finds it directly.
    computed : mapping of str to callable, optional
        Attributes computed on each access (``__version__``).
    """
    computed = dict(computed or {})

    def __getattr__(name: str):
        if name in homes:
            value = namespace[name] = getattr(import_module(homes[name]), name)
            return value
        if name in computed:
            return computed[name]()
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*namespace, *homes, *computed})

    return __getattr__, __dir__
