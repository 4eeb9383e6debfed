"""Atomic file output: a file appears under its final name only when it is complete."""

from __future__ import annotations

import contextlib
import json
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
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=json_default) + "\n")


def check_table_path(path) -> Path:
    """Refuse an output path whose suffix names no table format we write."""
    path = Path(path)
    if path.suffix not in TABLE_SUFFIXES:
        raise QTMError(f"--out must end in .parquet or .csv, got {str(path)!r}")
    return path


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
                meta[b"provenance"] = json.dumps(provenance, default=json_default).encode()
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
