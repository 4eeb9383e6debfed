"""Atomic file output: a file appears under its final name only when it is complete."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path

from qtm.errors import QTMError

TABLE_SUFFIXES = (".parquet", ".csv")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    On any error the temporary file is removed and ``path`` is left as it was,
    so a reader never sees a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    # mkstemp makes the file private (0600); the finished file gets the permissions any new file would.
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path, data) -> None:
    """Write ``data`` as indented JSON, atomically; NaN or infinity anywhere in it is a :class:`QTMError`."""
    with atomic_path(path) as tmp:
        tmp.write_text(to_json(data, path=path, indent=2) + "\n")


def to_json(data, *, path, indent: int | None = None) -> str:
    """``data`` as standard JSON text (numpy values and paths allowed, see :func:`json_default`).

    Raises a one-line :class:`QTMError` naming ``path`` (the file the text is for) and the first
    NaN or infinite number: standard JSON has no such numbers and many readers reject them.

    Examples
    --------
    >>> to_json({"z": [1.5, float("nan")]}, path="verify.json")
    Traceback (most recent call last):
    ...
    qtm.errors.QTMError: cannot write 'verify.json': the value at z/1 is nan and JSON has no NaN or Infinity
    """
    try:
        return json.dumps(data, indent=indent, default=json_default, allow_nan=False)
    except ValueError as error:
        where = _first_nonfinite(data)
        if where is None:
            raise QTMError(f"cannot write {str(path)!r} as JSON: {error}") from error
        at, value = where
        raise QTMError(
            f"cannot write {str(path)!r}: the value at {at or 'the top'} is {value} and JSON has no NaN or Infinity"
        ) from error


def _first_nonfinite(value, at: str = ""):
    """(where, value) of the first NaN or infinite number in nested dicts, lists and arrays, else None."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        finite = not isinstance(value, float) or math.isfinite(value)
        return None if finite else (at, value)
    for key, item in items:
        found = _first_nonfinite(item, f"{at}/{key}" if at else str(key))
        if found is not None:
            return found
    return None


def check_output_dir(path, *, flag: str) -> Path:
    """Refuse an output folder that could not be written, before any computation starts.

    The folder may exist or not (it is created when the first file is written); an existing
    file of that name, or a nearest existing parent that is a file or not writable, is a
    one-line :class:`QTMError` naming ``flag``.

    Examples
    --------
    >>> check_output_dir("runs/new-report", flag="--report").name
    'new-report'
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise QTMError(f"{flag} {str(path)!r} is a file; give a folder")
    _check_writable_parent(path, flag=flag)
    return path


def check_output_file(path, *, flag: str) -> Path:
    """Refuse an output file that could not be written, before any computation starts.

    An existing folder of that name, or a nearest existing parent folder that is a file or not
    writable, is a one-line :class:`QTMError` naming ``flag``. An existing file is fine: it is
    replaced atomically (:func:`atomic_path`).

    Examples
    --------
    >>> check_output_file("runs/report.json", flag="--report").name
    'report.json'
    """
    path = Path(path)
    if path.is_dir():
        raise QTMError(f"{flag} {str(path)!r} is a folder; give a file name")
    _check_writable_parent(path.parent, flag=flag)
    return path


def _check_writable_parent(folder: Path, *, flag: str) -> None:
    """The nearest existing ancestor of ``folder`` (itself included) is a folder we may create files in."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise QTMError(f"{flag}: {str(existing)!r} is a file, so {str(folder)!r} cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise QTMError(f"{flag}: no permission to write in {str(existing)!r}")


def check_table_path(path, *, flag: str = "--out") -> Path:
    """Refuse a table output path before any computation: a suffix we do not write, or a path we cannot write.

    Examples
    --------
    >>> check_table_path("sweep.csv").suffix
    '.csv'
    """
    path = Path(path)
    if path.suffix not in TABLE_SUFFIXES:
        raise QTMError(f"{flag} must end in .parquet or .csv, got {str(path)!r}")
    return check_output_file(path, flag=flag)


def write_table(frame, path, *, provenance: dict | None = None) -> Path:
    """Write a pandas table to .parquet (provenance in its metadata) or .csv (provenance in a JSON beside it)."""
    path = check_table_path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            if provenance is not None:
                meta = dict(table.schema.metadata or {})
                meta[b"provenance"] = to_json(provenance, path=path).encode()
                table = table.replace_schema_metadata(meta)
            pq.write_table(table, tmp)
        else:
            frame.to_csv(tmp, index=False)
    if provenance is not None and path.suffix == ".csv":
        write_json(path.with_suffix(".provenance.json"), provenance)
    return path


def read_provenance(path) -> dict | None:
    """The provenance stored with a table written by :func:`write_table`."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        meta = pq.read_schema(path).metadata or {}
        raw = meta.get(b"provenance")
        return json.loads(raw) if raw else None
    side = path.with_suffix(".provenance.json")
    return json.loads(side.read_text()) if side.exists() else None


def json_default(value):
    """``json.dumps`` fallback for numpy scalars and arrays and paths (use as ``default=json_default``)."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
