"""qtm: quantitative-genetics theory of model collapse in the Chain of Diffusion.

The theory layer needs numpy, scipy and numba only; it never imports torch. Importing ``qtm`` is light: each
function below is imported on first use.

Public API (keyword-only options, the same parameter model and errors as the ``qtm`` command line):

- :func:`sampler_law`: the exact law of one guided sampling, per trait axis, as a DataFrame (``qtm map``).
- :func:`sweep`: the chain over a parameter grid with either engine, its table and provenance (``qtm simulate``).
- :func:`run_checks`: the statistical verification suite (``qtm verify``).
- :func:`make_figures`: the theory figures and their index (``qtm figures``).

``qtm.__version__`` is the installed package's version.

Examples
--------
>>> import qtm
>>> qtm.sampler_law(cfg=7.5, sampler="tilt")["var"].round(3).tolist()
[0.316]
"""

from qtm.exports import lazy_exports

#: Each public name and the module that defines it.
_HOMES = {
    "sampler_law": "qtm.sampler_map",
    "sweep": "qtm.grid_sweep",
    "run_checks": "qtm.verify",
    "make_figures": "qtm.figures",
}
__all__ = list(_HOMES)


def _version() -> str:
    from qtm.provenance import package_version

    return package_version()


# The engines compile with numba and the figures load matplotlib: a bare `import qtm` loads neither.
__getattr__, __dir__ = lazy_exports("qtm", _HOMES, globals(), computed={"__version__": _version})
