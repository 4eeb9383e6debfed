"""validate: measure trait statistics of chain runs and check the theory against them.

Importing ``validate`` is light: each function below is imported on first use.

Public API (the same options and errors as ``chain validate``):

- :func:`validate_runs`: measure runs, fit the theory, forecast, and write a report folder (``chain validate``).
- :func:`read_report`: a report folder read back as data (statistics, decomposition, diversity, fit, skill).
- :func:`fit_theory`: the theory's maximum-likelihood fit to measured trajectories (``validate_runs(...,
  forecast_from=K)`` also forecasts iterations K and later from a fit to the earlier ones).
- :func:`predict`: the shared model (one for every setting) fitted on training trajectories predicts held-out
  runs from their iteration 0, scored against baselines (``validate_runs(..., predict=HELD_OUT)``,
  ``chain validate --predict``).

Examples
--------
>>> import validate
>>> sorted(validate.__all__)
['fit_theory', 'predict', 'read_report', 'validate_runs']
"""

from qtm.exports import lazy_exports

#: Each public name and the module that defines it.
_HOMES = {
    "validate_runs": "validate.pipeline",
    "read_report": "validate.report_folder",
    "fit_theory": "validate.optimiser",
    "predict": "validate.prediction",
}
# A name of this package that is also a submodule's (validate.forecast) would be replaced by that module once it
# loads, so the forecast is reached through validate_runs(forecast_from=K).
__all__ = list(_HOMES)


# The pipeline loads the embedders and the fit (torch, numba) when used: a bare `import validate` loads neither.
__getattr__, __dir__ = lazy_exports("validate", _HOMES, globals())
