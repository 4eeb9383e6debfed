"""The calibration file: one fitted model of the chain, shared by every CFG setting, for ``qtm simulate``.

A calibration holds what a fit of real chains found (``chain validate``): the inheritance and guidance
parameters that every setting shares, the base model and the real data in trait space, the fit's process
noise, the standard errors and where the fit came from. ``qtm simulate --calibration FILE`` sweeps with it,
so that a CFG value, a schedule or a condition drop no chain has run is predicted by the same model;
its default is the calibration shipped in the package (:func:`shipped_calibration`).

The file is JSON (version 4)::

    {"format": "chain-of-diffusion calibration", "version": 4,
     "parameters": {"fidelity": 0.8, "uncond_drift": 0.1, "var_fidelity": 0.8, "var_shift": 0.3,
                    "guidance_gain": 0.5, "selection_slope": -0.1, "sampler": "ddim", "steps": 25},
     "model": {"cond_mean": [...], "cond_var": [...], "uncond_mean": [...], "uncond_var": [...],
               "data_mean": [...], "data_var": [...]},
     "noise": {"process_sd_mean": 0.1, "process_sd_log_var": 0.2,
               "process_sd_common_mean": 0.05, "process_sd_common_log_var": 0.1},
     "standard_errors": {"fidelity": 0.05, "guidance_gain": null, ...},
     "provenance": {...}}

``parameters`` are chain parameters of :data:`qtm.params.PARAMETERS` (each checked by its own range;
``var_fidelity`` may be null: the variance then moves linearly; ``selection_slope`` may be null: the sampler's
law then selects on the variance too, as in version 1, whose files lack it; version 2 took the slope per unit of the
schedule's arithmetic mean scale above 1, version 3 per unit of its mean log scale, so a version-2 file with a slope
is refused, one without is read); ``model`` holds one value per trait axis,
every list of the same length (:data:`qtm.params.MODEL_PARAMETERS`); ``noise`` is the fit's per-iteration
process noise, SD on the mean (trait units) and on ln var, which the moments engine does not use (it
computes expectations), and (from version 4, optional) the SDs of its run-level part, the shock a run's captions
share at an iteration (``chain validate --forecast-from K --calibration FILE`` draws both parts);
``standard_errors`` maps names of ``parameters`` or ``noise`` to an SD or null
(not identified; an infinite SD is written as null); ``provenance`` is any JSON object.

Examples
--------
>>> import tempfile
>>> calibration = Calibration(
...     parameters={"fidelity": 0.8, "uncond_drift": 0.1, "var_fidelity": 0.8, "var_shift": 0.3,
...                 "guidance_gain": 0.5, "selection_slope": -0.1, "sampler": "ddim", "steps": 25},
...     model={"cond_mean": [0.2], "cond_var": [0.6], "uncond_mean": [0.0], "uncond_var": [1.0],
...            "data_mean": [0.2], "data_var": [0.6]},
...     noise={"process_sd_mean": 0.1, "process_sd_log_var": 0.2},
...     standard_errors={"fidelity": 0.05, "guidance_gain": float("inf")},
...     provenance={"fit": "example"})
>>> path = write_calibration(tempfile.mkdtemp() + "/calibration.json", calibration)
>>> again = read_calibration(path)
>>> again.options()["guidance_gain"], again.options()["cond_var"], again.standard_errors["guidance_gain"]
(0.5, [0.6], None)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import numpy as np

from qtm.errors import QTMError
from qtm.io import to_json, write_json
from qtm.params import MODEL_PARAMETERS, PARAMETERS

FORMAT = "chain-of-diffusion calibration"
VERSION = 4
#: The chain parameters a calibration fixes, in the file's order.
CALIBRATED = ("fidelity", "uncond_drift", "var_fidelity", "var_shift", "guidance_gain", "selection_slope", "sampler",
              "steps")
#: What version 2 added to :data:`CALIBRATED`: a version-1 file lacks it (null, the sampler's law).
ADDED_IN_VERSION_2 = ("selection_slope",)
#: The fit's process noise: SD per iteration on the conditional mean (trait units) and on ln var.
NOISE = ("process_sd_mean", "process_sd_log_var")
#: The run-level part of :data:`NOISE` (a shock shared by a run's captions), each at most its total; from version 4.
COMMON_NOISE = ("process_sd_common_mean", "process_sd_common_log_var")
SECTIONS = ("parameters", "model", "noise", "standard_errors", "provenance")
#: The calibration shipped in the package (``qtm/data``): the default of ``qtm simulate``.
SHIPPED = "calibration_digits.json"
#: What the error lines tell a user to do about a broken file.
_FIX = "fix it or write it again with chain validate"


@dataclasses.dataclass(frozen=True, eq=False)
class Calibration:
    """A fitted model of the chain (see the module's docstring for each part).

    Compared by identity: its model holds arrays, which have no single truth value for ``==``.

    Attributes
    ----------
    parameters : dict
        Chain parameters by name (:data:`CALIBRATED`).
    model : dict of numpy.ndarray
        The base model and the real data, one value per trait axis (:data:`qtm.params.MODEL_PARAMETERS`).
    noise : dict
        The fit's process noise (:data:`NOISE`).
    standard_errors : dict
        SDs of parameters or noise terms by name; None where not identified.
    provenance : dict
        Where the fit came from (any JSON).
    source : dict
        The file it was read from (``path``, ``sha256``); empty when built in Python.
    """

    parameters: dict
    model: dict
    noise: dict
    standard_errors: dict = dataclasses.field(default_factory=dict)
    provenance: dict = dataclasses.field(default_factory=dict)
    source: dict = dataclasses.field(default_factory=dict)

    def options(self) -> dict:
        """The ``qtm simulate`` options it sets: its parameters and its model (lists, one value per axis)."""
        return {**self.parameters, **{name: np.asarray(values, dtype=float).tolist()
                                      for name, values in self.model.items()}}

    def record(self) -> dict:
        """What an output made with it records: the file's path and sha256 (when read from one), its provenance."""
        return {**self.source, "provenance": self.provenance}


def read_calibration(path, *, label: str = "calibration") -> Calibration:
    """Read and check a calibration file.

    Parameters
    ----------
    path : str or Path
    label : str
        How error lines name the file's option (``--calibration``).

    Returns
    -------
    Calibration
        With ``source`` the path and the sha256 of the bytes read.

    Raises
    ------
    QTMError
        One line saying what to do: a missing or unreadable file, not JSON, another format, a newer
        version, a missing or unknown key, model lists of different lengths or empty, a non-finite
        number, a value outside its parameter's range (variances > 0) or an unknown sampler.
    """
    path = Path(path)
    where = f"{label} {str(path)!r}"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise QTMError(f"{where} does not exist; give a calibration file written by chain validate") from None
    except OSError as error:
        raise QTMError(f"{where} cannot be read ({error.strerror or error})") from None
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        detail = f"{error.msg} at line {error.lineno}" if isinstance(error, json.JSONDecodeError) else "not UTF-8"
        raise QTMError(f"{where} is not JSON ({detail}); give a calibration file written by chain validate") from None
    source = {"path": str(path), "sha256": hashlib.sha256(raw).hexdigest()}
    return dataclasses.replace(_checked(document, where=where), source=source)


def write_calibration(path, calibration: Calibration) -> Path:
    """Check ``calibration`` as :func:`read_calibration` would and write it atomically as JSON.

    Non-finite standard errors are written as null (standard JSON has no infinity). Returns the path.
    """
    path = Path(path)
    standard_errors = {name: None if value is None or not math.isfinite(value) else float(value)
                       for name, value in calibration.standard_errors.items()}
    document = {
        "format": FORMAT,
        "version": VERSION,
        "parameters": {name: value.item() if hasattr(value, "item") else value
                       for name, value in calibration.parameters.items()},
        "model": {name: np.asarray(values, dtype=float).tolist() for name, values in calibration.model.items()},
        "noise": {name: float(value) for name, value in calibration.noise.items()},
        "standard_errors": standard_errors,
        "provenance": calibration.provenance,
    }
    _checked(json.loads(to_json(document, path=path)), where=f"calibration {str(path)!r}")
    write_json(path, document)
    return path


def shipped_calibration() -> Calibration:
    """The calibration shipped in the package (:data:`SHIPPED`), ``qtm simulate``'s default.

    Examples
    --------
    >>> shipped_calibration().source["path"].endswith("calibration_digits.json")
    True
    """
    with resources.as_file(resources.files("qtm") / "data" / SHIPPED) as path:
        return read_calibration(path, label="the shipped calibration")


def _checked(document, *, where: str) -> Calibration:
    """The one check of a calibration document (parsed JSON); a one-line QTMError naming ``where``."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise QTMError(f"{where} is not a calibration (its \"format\" is {found!r}, not {FORMAT!r}); "
                       "give a calibration file written by chain validate")
    version = document.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise QTMError(f"{where} has no valid format version (got {version!r}); {_FIX}")
    if version > VERSION:
        raise QTMError(f"{where} has format version {version}, written by a newer version of the toolkit; "
                       f"upgrade (this one reads version {VERSION})")
    sections = {}
    for name in SECTIONS:
        if not isinstance(document.get(name), dict):
            state = "lacks" if name not in document else "has no JSON object as"
            raise QTMError(f"{where} {state} \"{name}\"; {_FIX}")
        sections[name] = document[name]
    added = ADDED_IN_VERSION_2 if version < 2 else ()
    _keys(sections["parameters"], "parameters", required=[n for n in CALIBRATED if n not in added], where=where)
    _keys(sections["model"], "model", required=MODEL_PARAMETERS, where=where)
    _keys(sections["noise"], "noise", required=NOISE, allowed=COMMON_NOISE if version >= 4 else (), where=where)
    _keys(sections["standard_errors"], "standard_errors", allowed=(*CALIBRATED, *NOISE), where=where)
    parameters = {}
    for name in CALIBRATED:
        value, p = sections["parameters"].get(name), PARAMETERS[name]
        optional = value is None and p.default is None
        if not optional and not (isinstance(value, str) if p.kind == "text" else _is_number(value)):
            raise QTMError(f"{where}: parameters.{name} must be {'a text' if p.kind == 'text' else 'a number'}, "
                           f"got {value!r}; {_FIX}")
        checked = _check(p, value, f"parameters.{name}", where)
        parameters[name] = float(checked) if p.kind == "float" and checked is not None else checked
    if version == 2 and parameters["selection_slope"] is not None:
        raise QTMError(f"{where} has format version 2, whose selection slope is per unit of the schedule's mean "
                       "scale; this version's is per unit of its mean log scale: write it again with chain validate "
                       "--guidance shared")
    model = {}
    for name in MODEL_PARAMETERS:
        values = sections["model"][name]
        if not isinstance(values, list) or not values or not all(_is_number(v) for v in values):
            raise QTMError(f"{where}: model.{name} must be a non-empty list of numbers, one per trait axis; {_FIX}")
        model[name] = _check(PARAMETERS[name], values, f"model.{name}", where)
    lengths = {name: len(values) for name, values in model.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{name} {count}" for name, count in lengths.items())
        raise QTMError(f"{where}: the model lists differ in length ({shown}); give one value per trait axis in each")
    noise = {}
    for name in (*NOISE, *(n for n in COMMON_NOISE if n in sections["noise"])):
        value = sections["noise"][name]
        if not _is_number(value) or not math.isfinite(value) or value < 0:
            raise QTMError(f"{where}: noise.{name} must be a finite number >= 0, got {value!r}; {_FIX}")
        noise[name] = float(value)
    for part, total in zip(COMMON_NOISE, NOISE, strict=True):
        if noise.get(part, 0.0) > noise[total]:
            raise QTMError(f"{where}: noise.{part} ({noise[part]:g}) exceeds noise.{total} ({noise[total]:g}), the "
                           f"whole process noise it is part of; {_FIX}")
    standard_errors = {}
    for name, value in sections["standard_errors"].items():
        if value is not None and not (_is_number(value) and value >= 0):  # NaN fails the comparison
            raise QTMError(f"{where}: standard_errors.{name} must be a number >= 0 or null, got {value!r}; {_FIX}")
        standard_errors[name] = None if value is None else float(value)
    return Calibration(parameters, model, noise, standard_errors, sections["provenance"])


def _keys(section: Mapping, name: str, *, where: str, required=(), allowed=None) -> None:
    missing = [key for key in required if key not in section]
    if missing:
        raise QTMError(f"{where} lacks {', '.join(f'{name}.{key}' for key in missing)}; {_FIX}")
    known = tuple(required) + tuple(allowed or ())
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise QTMError(f"{where} has unknown {', '.join(f'{name}.{key}' for key in unknown)} "
                       f"(known: {', '.join(known)}); {_FIX}")


def _check(parameter, value, at: str, where: str):
    """``parameter.check`` with the file and the key in the error line."""
    try:
        return parameter.check(value, label=at)
    except QTMError as error:
        raise QTMError(f"{where}: {error}; {_FIX}") from None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
