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

from qtm.exports import lazy_exports

#: Each public name and the module that defines it.
_HOMES = {
    "RunParameters": "chain.run_parameters",
    "run_chain": "chain.runner",
    "read_run": "qtm.rundir",
    "load_dataset": "chain.data",
    "describe_dataset": "chain.data",
}
__all__ = list(_HOMES)


# The backends import torch and diffusers when used: a bare `import chain` loads neither.
__getattr__, __dir__ = lazy_exports("chain", _HOMES, globals())
