"""Atomic file output: a file appears under its final name only when it is complete."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path

from qtm.errors import QTMError, quoted

TABLE_SUFFIXES = (".parquet", ".csv")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    On any error the temporary file is removed and ``path`` is left as it was,
    so a reader never sees a half-written file.
    """
    path = Path(path)
    tmp = _temporary(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _temporary(path: Path) -> Path:
    """A new, empty ``.NAME.*.part`` file beside ``path``, with a new file's permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    # mkstemp makes the file private (0600); the finished file gets the permissions any new file would.
    os.chmod(tmp, 0o666 & ~_umask())
    return Path(tmp)


@contextlib.contextmanager
def atomic_table(path, *, provenance: dict | None = None):
    """Yield a temporary path for the table ``path``; make the table and its provenance appear together.

    A ``.parquet`` table holds its provenance in its metadata (the caller writes it there).
    For a ``.csv`` table the provenance goes to :func:`provenance_path`: both are written to
    temporary files first; on success the old table (if any) is removed, the provenance
    renamed into place and the table last. So a table is never seen beside another
    table's provenance, and a table without its provenance (a process killed between the
    two renames) is refused by :func:`read_provenance`. On error both temporaries are
    removed and the old files are left as they were.
    """
    path = Path(path)
    side = provenance_path(path) if path.suffix == ".csv" else None
    text = to_json(provenance, path=side, indent=2) + "\n" if side is not None and provenance is not None else None
    tmp = _temporary(path)
    side_tmp = None
    try:
        yield tmp
        if side is not None:
            if text is not None:
                side_tmp = _temporary(side)
                side_tmp.write_text(text)
            # From here on only renames and removals: no old table beside a new provenance, ever.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            if side_tmp is None:  # an old table's provenance must not pass for this one's
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(side)
            else:
                os.replace(side_tmp, side)
        os.replace(tmp, path)
    except BaseException:
        for leftover in (tmp, side_tmp):
            if leftover is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)
        raise


def provenance_path(path) -> Path:
    """Where the provenance of the ``.csv`` table ``path`` is kept.

    Examples
    --------
    >>> provenance_path("runs/sweep.csv").name
    'sweep.provenance.json'
    """
    return Path(path).with_suffix(".provenance.json")


#: The lock file of a folder that one process at a time writes (:func:`locked`).
LOCK_FILE = ".lock"


@contextlib.contextmanager
def locked(folder, *, what: str):
    """Hold the lock of ``folder`` (created if needed) for the block; ``what`` names what holds it (a command).

    Another process holding it is a one-line :class:`QTMError` naming that process (pid, host and what it is, as
    :data:`LOCK_FILE` records them). The lock is an ``fcntl.flock``, which the system
    releases when its holder dies, so the lock of a killed process is simply taken over; the
    file is removed on release. Under the lock, what killed writers left behind
    (:func:`stale_parts`) may be removed. A folder this call created is removed again if it is
    still empty at the end.

    Examples
    --------
    >>> import tempfile
    >>> with locked(Path(tempfile.mkdtemp()) / "report", what="demo") as folder:
    ...     (folder / LOCK_FILE).read_text().startswith("pid ")
    True
    """
    import fcntl
    import socket

    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "a process starting up"
            os.close(fd)
            raise QTMError(
                f"{str(folder)!r} is in use ({holder}); wait for it to finish or stop it, then rerun"
            ) from None
        # The holder removes the file when it lets go: a lock on a removed file locks nothing.
        try:
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}: {what}\n".encode())
        yield folder
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()


def remove_stale_parts(folder) -> None:
    """Remove :func:`stale_parts` of ``folder``; call it holding the folder's lock (:func:`locked`)."""
    import shutil

    for stale in stale_parts(folder):
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink()


def stale_parts(folder) -> list[Path]:
    """The temporary files (``.NAME.*.part``) and staging folders (``.NAME.part``) directly in ``folder``.

    Only a process killed outright leaves them behind; a writer that may still be running
    must not be cleaned up after, so call this only when no writer can be at work (a lock).

    Examples
    --------
    >>> stale_parts("runs/does-not-exist")
    []
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".part"))


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
    path = check_path_name(path, flag=flag)
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
    path = check_path_name(path, flag=flag)
    if path.is_dir():
        raise QTMError(f"{flag} {str(path)!r} is a folder; give a file name")
    _check_writable_parent(path.parent, flag=flag)
    return path


def check_path_name(path, *, flag: str) -> Path:
    """Refuse an empty path, one with a NUL character, or one whose name or length the file system would refuse,
    in one short line (see :func:`path_name_problem`).

    Examples
    --------
    >>> check_path_name("runs/sweep.csv", flag="--out").name
    'sweep.csv'
    >>> check_path_name("a" * 300, flag="--out")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    qtm.errors.QTMError: --out: the name 'aaaa...…' (300 characters) is longer than the 255 bytes ...
    """
    problem = path_name_problem(path)
    if problem is not None:
        raise QTMError(f"{flag}: {problem}")
    return Path(path)


def path_name_problem(path) -> str | None:
    """What is wrong with ``path`` as a name, before the file system is asked (which would echo all of it in a
    raw error), or None.

    The limits are the file system's (``os.pathconf``: ``PC_NAME_MAX`` bytes per name, ``PC_PATH_MAX`` in all)
    where the path starts; an over-long path is quoted cut short (:func:`qtm.errors.quoted`).

    Examples
    --------
    >>> path_name_problem(""), path_name_problem("runs/sweep.csv")
    ('the path is empty; give a path', None)
    """
    text = os.fspath(path)
    if not text.strip():
        return "the path is empty; give a path"
    if "\0" in text:
        return f"the path {quoted(text)} holds a NUL character, which no path can"
    path = Path(text)
    start = Path("/") if path.is_absolute() else Path.cwd()
    path_max = _path_limit(start, "PC_PATH_MAX", 4096)
    if _bytes(str(path.absolute())) >= path_max:
        return f"the path {quoted(text)} is longer than the {path_max - 1} bytes this file system allows; give a " \
               "shorter path"
    name_max = _path_limit(start, "PC_NAME_MAX", 255)
    for part in path.parts:
        if _bytes(part) > name_max:
            return (f"the name {quoted(part)} is longer than the {name_max} bytes this file system allows in one "
                    "name; give a shorter name")
    return None


def _bytes(text: str) -> int:
    # A lone surrogate (from a command line of undecodable bytes) has its length too.
    return len(text.encode(errors="surrogatepass"))


def _path_limit(folder: Path, key: str, default: int) -> int:
    try:
        return os.pathconf(folder, key)
    except (OSError, ValueError):
        return default


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
    path = check_output_file(path, flag=flag)
    if path.suffix not in TABLE_SUFFIXES:
        raise QTMError(f"{flag} must end in .parquet or .csv, got {str(path)!r}")
    return path


def write_table(frame, path, *, provenance: dict | None = None) -> Path:
    """Write a pandas table to .parquet (provenance in its metadata) or .csv (provenance in a JSON beside it).

    The table and its provenance appear together (:func:`atomic_table`).
    """
    path = check_table_path(path)
    with atomic_table(path, provenance=provenance) as tmp:
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
    return path


def read_provenance(path) -> dict:
    """The provenance stored with a table written by :func:`write_table`.

    A table without its provenance (an interrupted write, or a file from elsewhere) is a
    one-line :class:`QTMError`: a result whose origin is unknown is not used.
    """
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        meta = pq.read_schema(path).metadata or {}
        raw = meta.get(b"provenance")
        if not raw:
            raise QTMError(f"{str(path)!r} holds no provenance; rerun the command that wrote it")
        return json.loads(raw)
    side = provenance_path(path)
    if not side.exists():
        raise QTMError(
            f"{str(path)!r} has no provenance file {side.name!r} beside it (an interrupted write?); "
            "rerun the command that wrote it"
        )
    return json.loads(side.read_text())


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
