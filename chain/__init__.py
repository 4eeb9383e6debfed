"""chain: runs the real Chain of Diffusion (generate with CFG, finetune on the result, repeat).

Importing ``chain`` is light (no torch): each function below is imported on first use.

Public API (the same parameter model and errors as ``chain run`` and ``chain data``):

- :class:`RunParameters`: a run's settings, checked once (every option of ``chain run``, by name).
- :func:`run_chain`: run or resume the chain in a run directory (``chain run``).
- :func:`read_run`: open a run directory and read its finished iterations (images, captions, parameters).
- :func:`load_dataset`, :func:`describe_dataset`: a data set as ``--data`` names it, and what it holds
  (``chain data``).

Examples
--------
>>> import chain
>>> chain.RunParameters(backend="tiny", cfg=3.0, iterations=2).resolve()["cfg"]
3.0
"""

from importlib import import_module

#: Each public name and the module that defines it.
_HOMES = {
    "RunParameters": "chain.run_parameters",
    "run_chain": "chain.runner",
    "read_run": "qtm.rundir",
    "load_dataset": "chain.data",
    "describe_dataset": "chain.data",
}
__all__ = list(_HOMES)


def __getattr__(name: str):
    # The backends import torch and diffusers when used: a bare `import chain` loads neither.
    if name in _HOMES:
        value = globals()[name] = getattr(import_module(_HOMES[name]), name)
        return value
    raise AttributeError(f"module 'chain' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
