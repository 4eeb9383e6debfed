"""The schema of a run directory's ``run.json``: what every command that reads one checks first.

``chain run`` writes ``run.json`` as its provenance record (:func:`qtm.provenance.provenance`): a JSON object
whose ``parameters`` object holds the run's parameters (:data:`qtm.params.ALL_PARAMETERS`), beside ``seed``,
versions and the backend's description. A folder of images from elsewhere may carry a flat ``run.json`` of a few
parameters (``{"cfg": 3.0}``). :func:`check_run_record` refuses anything else in one line that names the file and
the field (exit 2): ``chain run`` (resuming), ``chain validate`` and every generator of its samples read a
``run.json`` only through it. Fields it does not know are kept unread, as provenance.
"""

from __future__ import annotations

import math

from qtm.errors import QTMError, RunDirectoryError
from qtm.params import ALL_PARAMETERS

#: The sections that hold the run's parameters (``chain run`` writes ``parameters``; older tools ``params``).
PARAMETER_SECTIONS = ("config", "params", "parameters")
_JSON_TYPES = {"float": (int, float), "int": (int,), "text": (str,), "flag": (bool,)}
_WORDS = {"float": "a number", "int": "a whole number", "text": "a text", "flag": "true or false"}


def check_run_record(record, path) -> dict:
    """Check a parsed ``run.json`` and return it unchanged; a field of the wrong type or range raises.

    Parameters
    ----------
    record : object
        What ``json.loads`` made of the file.
    path : path-like
        The file, for the error message.

    Returns
    -------
    dict
        ``record``.

    Raises
    ------
    qtm.errors.RunDirectoryError
        One line naming the file and the field: not an object, a parameter section that is not an object, a
        parameter of the wrong type or out of its range, a ``seed`` that is not a whole number >= 0.

    Examples
    --------
    >>> check_run_record({"parameters": {"cfg": 3.0}, "seed": 1}, "run.json")["seed"]
    1
    >>> check_run_record({"cfg": "hello"}, "runs/a/run.json")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    qtm.errors.RunDirectoryError: runs/a/run.json: field 'cfg' must be a number, got 'hello' (str); the file ...
    """
    if not isinstance(record, dict):
        _refuse(path, f"must hold a JSON object, got {_json_name(record)}")
    sections = [(section + ".", record[section]) for section in PARAMETER_SECTIONS if section in record]
    for section, inner in sections:
        if not isinstance(inner, dict):
            _refuse(path, f"field {section[:-1]!r} must be an object of parameters, got {_json_name(inner)}")
    for prefix, fields in (("", record), *sections):
        for name, value in fields.items():
            parameter = ALL_PARAMETERS.get(name)
            if parameter is None or (not prefix and any(name in inner for _, inner in sections)):
                continue  # unknown fields are provenance; a top-level one the parameters override is a description
            _check_field(parameter, value, f"{prefix}{name}", path)
    seed = record.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        _refuse(path, f"field 'seed' must be a whole number >= 0, got {seed!r}")
    return record


def _check_field(parameter, value, field: str, path) -> None:
    if value is None and parameter.default is None:
        return
    expected = _JSON_TYPES[parameter.kind]
    wrong_type = (isinstance(value, bool) and parameter.kind != "flag") or not isinstance(value, expected)
    if wrong_type or (isinstance(value, float) and not math.isfinite(value)):
        _refuse(path, f"field {field!r} must be {_WORDS[parameter.kind]}, got {value!r} ({type(value).__name__})")
    try:
        parameter.check(value, label=f"field {field!r}")
    except QTMError as error:
        _refuse(path, str(error))


def _json_name(value) -> str:
    names = {dict: "an object", list: "a list", str: "a text", bool: "true/false", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _refuse(path, problem: str) -> None:
    raise RunDirectoryError(f"{path}: {problem}; the file is damaged, edited or not written by `chain run` (give "
                            "an intact run directory, or a new one)")
