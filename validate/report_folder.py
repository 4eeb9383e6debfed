"""A report folder read back as data: its tables as DataFrames and its ``fit.json``, for plotting in Python.

``chain validate --report FOLDER`` (:func:`validate.pipeline.validate_runs`) writes the tables; :func:`read_report`
opens them again. Each table a validation may write has a field of :class:`ReportFolder` (``None`` when that
stage did not run); any other table in the folder is in :attr:`ReportFolder.tables` under its file's stem.

A report folder holds one validation: the files :func:`validate.report.write_report` may write (:func:`is_report_file`)
and the folder's lock, nothing else. :func:`check_report_folder` refuses, before any work, a folder holding anything
else; :func:`remove_report` clears the previous validation's files before a new one is written, so that nothing
stale survives beside a new report.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path

from qtm.errors import QTMError
from qtm.io import LOCK_FILE, provenance_path, read_provenance, stale_parts
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
#: Every other file a report may hold: the statistics' .csv copy, the prediction's table, the fit's JSON files, the
#: page and the figures (``samples_RUN.png``: one per run). A .csv table's provenance is beside it (qtm.io).
OTHER_FILES = (
    "statistics.csv", "prediction.csv", "fit.json", "calibration.json", "report.md",
    "var.png", "mean.png", "summary.png", "strength.png", "forecast_var.png", "breeders.png", "diversity.png",
    "selection_curve.png", "selection_agreement.png", "prediction.png", "samples_*.png",
)
_REPORT_FILES = (*TABLES.values(), *OTHER_FILES)
_REPORT_FILES += tuple(provenance_path(name).name for name in _REPORT_FILES if name.endswith(".csv"))


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
    found = {name: _read(folder / file, pd.read_csv if file.endswith(".csv") else pd.read_parquet)
             for name, file in TABLES.items() if (folder / file).is_file()}
    known = set(TABLES.values()) | {Path(TABLES["statistics"]).with_suffix(".csv").name}
    others = {path.stem: _read(path, pd.read_csv) for path in sorted(folder.glob("*.csv"))
              if path.name not in known and path.is_file()}
    fit_path = folder / "fit.json"
    fit = _read(fit_path, lambda path: json.loads(path.read_text())) if fit_path.is_file() else {}
    if not isinstance(fit, dict):
        raise ValidateError(f"{str(fit_path)!r} holds no fit summary (a JSON object); rerun chain validate")
    return ReportFolder(folder=folder, fit=fit, provenance=_read(statistics, read_provenance), tables=others,
                        **found)


def _read(path: Path, reader):
    """``reader(path)``; a file that does not read as what the report wrote is one line naming it."""
    try:
        return reader(path)
    except QTMError:
        raise
    except (OSError, ValueError) as error:  # pandas', pyarrow's and json's parse errors are ValueErrors
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValidateError(f"{str(path)!r} does not read as a report file ({reason}); rerun chain validate") from None


def is_report_file(name: str) -> bool:
    """Whether a file named ``name`` is one that :func:`validate.report.write_report` may write.

    Examples
    --------
    >>> is_report_file("parameters.provenance.json"), is_report_file("samples_cfg5.png"), is_report_file("notes.txt")
    (True, True, False)
    """
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in _REPORT_FILES)


def check_report_folder(folder) -> Path:
    """Refuse, before any work, a ``--report`` folder that cannot hold a validation.

    It may be missing, empty, or hold a report (complete or not: what a killed validation left); a
    file, or a folder holding anything but report files, its lock and temporary files, is refused,
    as is a folder where the report writes a file.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "report.md").write_text("# an older report")
    >>> check_report_folder(folder) == folder
    True
    >>> _ = (folder / "notes.txt").write_text("mine")
    >>> check_report_folder(folder)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    validate.errors.ValidateError: --report '...' is not a report folder ('notes.txt' is no report's); choose ...
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValidateError(f"--report {str(folder)!r} is a file; give a folder for the report")
    if not folder.is_dir():
        return folder
    parts = set(stale_parts(folder))
    for entry in sorted(folder.iterdir()):
        if entry in parts:
            continue
        if entry.name != LOCK_FILE and not is_report_file(entry.name):
            raise ValidateError(f"--report {str(folder)!r} is not a report folder ({entry.name!r} is no report's); "
                                "choose an empty or new folder")
        if entry.is_dir():
            raise ValidateError(f"--report: {str(entry)!r} is a folder where the report writes a file; remove it "
                                "or choose an empty or new folder")
    return folder


def remove_report(folder) -> None:
    """Remove the report files of ``folder`` (an older validation's); call it holding the folder's lock.

    What :func:`check_report_folder` accepts is left: the lock, and nothing but report files besides.
    """
    for entry in Path(folder).iterdir():
        if is_report_file(entry.name) and not entry.is_dir():
            entry.unlink()
