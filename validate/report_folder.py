"""A report folder read back as data: its tables as DataFrames and its ``fit.json``, for plotting in Python.

``chain validate --report FOLDER`` (:func:`validate.pipeline.validate_runs`) writes the tables; :func:`read_report`
opens them again. Each table a validation may write has a field of :class:`ReportFolder` (``None`` when that
stage did not run); any other table in the folder is in :attr:`ReportFolder.tables` under its file's stem.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from qtm.io import read_provenance
from validate.errors import ValidateError

#: The tables of a report, by field name: the file :func:`validate.report.write_report` writes.
TABLES = {
    "statistics": "statistics.parquet",
    "parameters": "parameters.csv",
    "predictions": "predicted_vs_measured.csv",
    "forecast": "forecast.csv",
    "skill": "skill.csv",
    "decomposition": "decomposition.csv",
    "diversity": "diversity.csv",
    "selection_curve": "selection_curve.csv",
}


@dataclass(frozen=True)
class ReportFolder:
    """What a report folder holds, as data.

    Attributes
    ----------
    folder : pathlib.Path
    statistics : pandas.DataFrame
        Trait statistics per run, iteration (caption) and axis, with their intervals.
    parameters, predictions : pandas.DataFrame or None
        The fit's parameters with intervals; its one-step predictions against the measurements.
    forecast, skill : pandas.DataFrame or None
        The forecast of the held-out iterations; its skill against persistence and the trend.
    decomposition, diversity, selection_curve : pandas.DataFrame or None
        Selection, response and inheritance per iteration; precision, recall, density, coverage and Vendi;
        the selection curve S(w).
    fit : dict
        ``fit.json``: reduced chi-squared, parameters and goodness of the fit and the forecast.
    provenance : dict
        How the report was made (parameters, versions, git commit), from its statistics table.
    tables : dict of str to pandas.DataFrame
        Every other ``.csv`` table of the folder, by its file's stem.
    """

    folder: Path
    statistics: object
    fit: dict
    provenance: dict
    parameters: object = None
    predictions: object = None
    forecast: object = None
    skill: object = None
    decomposition: object = None
    diversity: object = None
    selection_curve: object = None
    tables: dict = field(default_factory=dict)


def read_report(folder) -> ReportFolder:
    """Open a report folder written by ``chain validate`` (or :func:`validate.pipeline.validate_runs`).

    Parameters
    ----------
    folder : path-like
        The folder given to ``--report``.

    Returns
    -------
    ReportFolder
        Its tables as pandas DataFrames, ``fit.json`` as a dict, and the provenance.

    Raises
    ------
    validate.errors.ValidateError
        When ``folder`` holds no ``statistics.parquet`` (not a report folder, or an unfinished one).

    Examples
    --------
    >>> import tempfile
    >>> import pandas as pd
    >>> from qtm.io import write_json, write_table
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = write_table(pd.DataFrame({"iteration": [0, 1], "var": [1.0, 0.6]}), folder / "statistics.parquet",
    ...                 provenance={"software": "validate"})
    >>> write_json(folder / "fit.json", {"reduced_chi2": 1.1})
    >>> report = read_report(folder)
    >>> report.statistics["var"].tolist(), report.fit["reduced_chi2"], report.skill is None
    ([1.0, 0.6], 1.1, True)
    >>> read_report(folder / "missing")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    validate.errors.ValidateError: ... is not a report folder: it has no statistics.parquet ...
    """
    import pandas as pd

    folder = Path(folder)
    statistics = folder / TABLES["statistics"]
    if not statistics.is_file():
        raise ValidateError(f"{str(folder)!r} is not a report folder: it has no {statistics.name} "
                            "(see chain validate --report)")
    found = {name: pd.read_csv(folder / file) if file.endswith(".csv") else pd.read_parquet(folder / file)
             for name, file in TABLES.items() if (folder / file).is_file()}
    known = set(TABLES.values()) | {Path(TABLES["statistics"]).with_suffix(".csv").name}
    others = {path.stem: pd.read_csv(path) for path in sorted(folder.glob("*.csv")) if path.name not in known}
    fit_path = folder / "fit.json"
    fit = json.loads(fit_path.read_text()) if fit_path.is_file() else {}
    return ReportFolder(folder=folder, fit=fit, provenance=read_provenance(statistics), tables=others, **found)
