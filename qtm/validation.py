"""Parameter validation in one place: each check raises :class:`QTMError` naming the parameter."""

from __future__ import annotations

import numpy as np

from qtm.errors import QTMError


def as_float_array(value, name: str) -> np.ndarray:
    """Return ``value`` as a float array, refusing NaN and infinities."""
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise QTMError(f"{name} must be a number or an array of numbers, got {value!r}") from None
    if not np.all(np.isfinite(array)):
        raise QTMError(f"{name} must be finite, got {value!r}")
    return array


def check_positive(value, name: str) -> np.ndarray:
    array = as_float_array(value, name)
    if np.any(array <= 0):
        raise QTMError(f"{name} must be > 0, got {_show(array)}")
    return array


def check_nonnegative(value, name: str) -> np.ndarray:
    array = as_float_array(value, name)
    if np.any(array < 0):
        raise QTMError(f"{name} must be >= 0, got {_show(array)}")
    return array


def check_unit_interval(
    value, name: str, *, closed_right: bool = True, closed_left: bool = True
) -> np.ndarray:
    """Check ``value`` lies in [0, 1] (ends open or closed as asked)."""
    array = as_float_array(value, name)
    low_bad = array < 0 if closed_left else array <= 0
    high_bad = array > 1 if closed_right else array >= 1
    if np.any(low_bad | high_bad):
        interval = ("[" if closed_left else "(") + "0, 1" + ("]" if closed_right else ")")
        raise QTMError(f"{name} must lie in {interval}, got {_show(array)}")
    return array


def check_int(value, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or int(value) != value:
        raise QTMError(f"{name} must be a whole number, got {value!r}")
    if value < minimum:
        raise QTMError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_choice(value: str, name: str, choices) -> str:
    if value not in choices:
        raise QTMError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")
    return value


def _show(array: np.ndarray) -> str:
    flat = array.ravel()
    bad = flat if flat.size <= 4 else flat[:4]
    text = ", ".join(f"{x:g}" for x in bad)
    return text if flat.size <= 4 else text + ", ..."
