"""Parameter grids from the command line or a TOML file.

A numeric option takes a comma list of values and ``start:stop:step`` ranges
(``"1,3,7.5"``, ``"0:1:0.25"``, ``"1,2:8:2"``); the stop is included when the
range lands on it within a relative tolerance, so ``0:1:0.1`` ends at 1. A text
option takes a comma list only, because its values may contain colons
(``"constant,cutoff:0.5"``). The grid is the Cartesian product of the options'
values, one row per point.

A ``--config FILE.toml`` gives the same options by name (``cfg = [1, 3, 7.5]``,
``schedule = "constant,cosine"``, ``real-fraction = 0.1``); an option given on
the command line overrides the file.

Examples
--------
>>> parse_numbers("1,2:3:0.5", name="cfg")
[1.0, 2.0, 2.5, 3.0]
>>> grid_frame({"cfg": [1.0, 7.5], "schedule": ["constant", "cosine"]}).shape
(4, 2)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from qtm.errors import QTMError
from qtm.params import Parameter

try:  # Python >= 3.11 ships tomllib; tomli is the same parser for 3.10
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - depends on the interpreter
    import tomli as tomllib

#: Relative tolerance under which a range's stop counts as reached.
RANGE_TOLERANCE = 1e-9
#: Values one range may expand to, and points one grid may have: beyond these a typo
#: (``0:1e308:1``) would hang the machine instead of computing anything useful.
MAX_RANGE_VALUES = 1_000_000
MAX_GRID_POINTS = 10_000_000


def parse_numbers(spec, *, name: str, integer: bool = False) -> list:
    """Values of a numeric option: comma lists and ``start:stop:step`` ranges.

    Parameters
    ----------
    spec : str, number or sequence of those
        The option as the command line or a TOML file gives it.
    name : str
        The option's name, for error messages.
    integer : bool
        Require whole numbers (and return ints).

    Returns
    -------
    list of float (or int), in the order given.

    Examples
    --------
    >>> parse_numbers("0:1:0.25", name="drop")
    [0.0, 0.25, 0.5, 0.75, 1.0]
    >>> parse_numbers("10:1:-3", name="steps", integer=True)
    [10, 7, 4, 1]
    """
    values: list = []
    for item in _items(spec, name):
        if isinstance(item, bool):
            raise QTMError(f"--{_flag(name)} must be numbers, got {item!r}")
        if isinstance(item, (int, float)):
            values.append(float(item))
        elif ":" in item:
            values.extend(_parse_range(item, name))
        else:
            values.append(_number(item, name))
    if not values:
        raise QTMError(f"--{_flag(name)} needs at least one value")
    if integer:
        if any(v != round(v) for v in values):
            raise QTMError(f"--{_flag(name)} must be whole numbers, got {_text(spec)!r}")
        return [round(v) for v in values]
    return values


def parse_strings(spec, *, name: str) -> list[str]:
    """Values of a text option: a comma list (or a TOML list of strings).

    Examples
    --------
    >>> parse_strings("constant, cutoff:0.5", name="schedule")
    ['constant', 'cutoff:0.5']
    """
    values = [str(item) for item in _items(spec, name)]
    if not values:
        raise QTMError(f"--{_flag(name)} needs at least one value")
    return values


def parse_axes(specs: Mapping[str, object]) -> dict:
    """Per-axis model options (one value per trait axis), broadcast to a common number of axes.

    Each option is a comma list (or a TOML list) of numbers; an option with one value
    applies to every axis.

    Returns
    -------
    dict mapping each option to a float array of shape (axes,).

    Examples
    --------
    >>> {k: v.tolist() for k, v in parse_axes({"cond_mean": "1,2", "cond_var": "1"}).items()}
    {'cond_mean': [1.0, 2.0], 'cond_var': [1.0, 1.0]}
    """
    import numpy as np

    values = {}
    for name, spec in specs.items():
        items = [_number(str(v), name) for v in _items(spec, name)]
        if not items:
            raise QTMError(f"--{_flag(name)} needs at least one value")
        values[name] = items
    axes = max(len(v) for v in values.values())
    for name, items in values.items():
        if len(items) not in (1, axes):
            raise QTMError(
                f"--{_flag(name)} gives {len(items)} values but another model option gives {axes}; "
                "give one value per trait axis, or one value for all axes"
            )
    return {name: np.broadcast_to(np.array(items), (axes,)).copy() for name, items in values.items()}


def grid_frame(axes: Mapping[str, Sequence]):
    """The Cartesian product of the axes' values as a pandas DataFrame, one row per point.

    The first axis varies slowest; the columns keep the axes' order.

    Examples
    --------
    >>> grid_frame({"cfg": [1.0, 7.5], "drop": [0.0]}).to_dict("list")
    {'cfg': [1.0, 7.5], 'drop': [0.0, 0.0]}
    """
    import pandas as pd

    names = list(axes)
    size = math.prod(len(axes[n]) for n in names)
    if size > MAX_GRID_POINTS:
        counts = " x ".join(f"{len(axes[n])} {n}" for n in names if len(axes[n]) > 1)
        raise QTMError(f"the grid has {size:.3g} points ({counts}), more than {MAX_GRID_POINTS:.0e}; "
                       "split the sweep into several runs")
    rows = list(itertools.product(*(list(axes[n]) for n in names)))
    return pd.DataFrame(rows, columns=names)


def load_config(path, *, allowed: Mapping[str, Parameter]) -> dict:
    """Read a TOML file of options; keys are option names (``real-fraction`` or ``real_fraction``).

    Each value's TOML type must be its parameter's, exactly as its flag would take it
    (:meth:`qtm.params.Parameter.read`): ``redifine = "false"`` is an error, not ``True``.

    Parameters
    ----------
    path : str or Path
        The ``--config`` file.
    allowed : mapping of str to Parameter
        The options the command takes, by name (with underscores); any other key is an error.

    Returns
    -------
    dict mapping option names (with underscores) to the file's values.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise QTMError(f"--config file {str(path)!r} does not exist") from None
    except OSError as error:
        raise QTMError(f"--config file {str(path)!r} cannot be read ({error.strerror or error})") from None
    except tomllib.TOMLDecodeError as error:
        raise QTMError(f"--config file {str(path)!r} is not valid TOML: {error}") from None
    except UnicodeDecodeError:
        raise QTMError(f"--config file {str(path)!r} is not UTF-8 text; save it as UTF-8") from None
    config = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in allowed:
            raise QTMError(
                f"--config file {str(path)!r}: unknown option {key!r}; "
                f"known: {', '.join(_flag(a) for a in allowed)}"
            )
        if isinstance(value, dict):
            raise QTMError(
                f"--config file {str(path)!r}: option {key!r} must be a value or a list, not a table"
            )
        config[name] = allowed[name].read(value, label=f"--config file {str(path)!r}: option {key!r}")
    return config


def merge_options(command_line: Mapping, config: Mapping, defaults: Mapping) -> dict:
    """Each option from the command line if given (not None), else from the config file, else its default.

    Examples
    --------
    >>> merge_options({"cfg": "2", "drop": None}, {"cfg": 5, "drop": 0.2}, {"cfg": "7.5", "drop": "0"})
    {'cfg': '2', 'drop': 0.2}
    """
    merged = {}
    for name, default in defaults.items():
        given = command_line.get(name)
        merged[name] = given if given is not None else config.get(name, default)
    return merged


def _items(spec, name: str) -> list:
    if isinstance(spec, (list, tuple)):
        items = []
        for element in spec:
            items.extend(_items(element, name))
        return items
    if isinstance(spec, str):
        parts = [part.strip() for part in spec.split(",")]
        if len(parts) > 1 and not all(parts):
            raise QTMError(f"--{_flag(name)}: {spec!r} has an empty item; separate values by single commas")
        return [part for part in parts if part]
    return [spec]


def _parse_range(item: str, name: str) -> list[float]:
    parts = item.split(":")
    if len(parts) != 3:
        raise QTMError(f"--{_flag(name)}: a range is start:stop:step, got {item!r}")
    start, stop, step = (_number(p, name) for p in parts)
    if step == 0:
        raise QTMError(f"--{_flag(name)}: range {item!r} has step 0; give a non-zero step")
    span = stop - start
    if span * step < 0:
        raise QTMError(
            f"--{_flag(name)}: range {item!r} never reaches its stop; the step's sign must match stop - start"
        )
    tolerance = RANGE_TOLERANCE * max(abs(start), abs(stop), abs(step))
    count = math.floor((abs(span) + tolerance) / abs(step)) + 1
    if count > MAX_RANGE_VALUES:
        raise QTMError(f"--{_flag(name)}: range {item!r} has {count:.3g} values, more than {MAX_RANGE_VALUES:.0e}; "
                       "use a larger step")
    # Rounding to 12 significant digits turns 0.30000000000000004 back into the 0.3 the user meant.
    return [float(f"{start + i * step:.12g}") for i in range(count)]


def _number(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise QTMError(f"--{_flag(name)}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise QTMError(f"--{_flag(name)} must be finite, got {text!r}")
    return value


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _text(spec) -> str:
    return spec if isinstance(spec, str) else repr(spec)


def single_value(parameter: Parameter, spec, *, too_many: str | None = None):
    """The one value an option given as text holds, checked by its parameter (None when not given).

    ``too_many`` is the error when the text holds a list; by default ``"--flag takes one value, got N"``.

    Examples
    --------
    >>> from qtm.params import PARAMETERS
    >>> single_value(PARAMETERS["steps"], "25"), single_value(PARAMETERS["cfg"], "7.5")
    (25, 7.5)
    """
    if spec is None:
        return None
    p = parameter
    if p.kind == "flag":
        return p.check(spec, label=p.flag)
    if p.kind == "text":
        values = parse_strings(spec, name=p.name)
    else:
        values = parse_numbers(spec, name=p.name, integer=p.kind == "int")
    if len(values) != 1:
        raise QTMError((too_many or "{flag} takes one value, got {count}").format(flag=p.flag, count=len(values)))
    value = p.check(values[0], label=p.flag)
    return float(value) if p.kind == "float" else value
