"""Writing and resuming a run directory, every file written atomically.

The layout (``run.json``, ``iter-NNN/`` with images, ``metadata.jsonl`` and
``iteration.json``) is defined in :mod:`qtm.rundir`, which ``validate`` reads
too; its names are re-exported here. An iteration counts as finished only once
its ``iteration.json`` says ``"complete"``; any other iteration folder is the
remains of an interrupted iteration and is removed before that iteration is redone.
One process at a time works in a run directory: it holds the lock ``RUN/.lock``
(:meth:`RunDirectory.lock`, :func:`qtm.io.locked`), under which the temporary files of killed runs are removed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
from pathlib import Path

from chain.errors import ChainError, DiskFullError
from qtm.io import LOCK_FILE, locked, remove_stale_parts, stale_parts, write_json
from qtm.params import ALL_PARAMETERS
from qtm.provenance import provenance
from qtm.run_record import check_run_record
from qtm.rundir import (
    COMPLETE,
    ITERATION_FILE,
    METADATA_FILE,
    REFERENCE_FOLDER,
    RUN_FILE,
    image_problem,
    iteration_folder,
    iteration_folders,
    iteration_status,
    read_json,
)

__all__ = [
    "COMPLETE",
    "ITERATION_FILE",
    "LOCK_FILE",
    "METADATA_FILE",
    "RESUMABLE",
    "RUN_FILE",
    "RunDirectory",
    "check_same_parameters",
    "disk_full_error",
]

#: Parameters that may change when a run is resumed: more iterations extend it; the
#: device only changes where it runs.
RESUMABLE = ("iterations", "device")


class RunDirectory:
    """A run directory at ``path`` (see the module docstring).

    Examples
    --------
    >>> import tempfile
    >>> run = RunDirectory(Path(tempfile.mkdtemp()) / "demo")
    >>> run.iteration_dir(3).name, run.completed()
    ('iter-003', [])
    """

    def __init__(self, path):
        self.path = Path(path)

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    def iteration_dir(self, iteration: int) -> Path:
        return iteration_folder(self.path, iteration)

    def lock(self, *, what: str = "chain run"):
        """Hold the run directory's lock for the block (:func:`qtm.io.locked`: another process holding it is a
        one-line error naming it and ``what`` it is; the lock of a killed run is taken over)."""
        return locked(self.path, what=what)

    def check(self, parameters: dict) -> None:
        """Refuse, before any slow work, a run made with other parameters or a folder that is no run."""
        if self.run_file.exists():
            check_same_parameters(self.read_run().get("parameters", {}), parameters, self.path)
        elif self.path.is_dir():
            leftovers = {LOCK_FILE, *(p.name for p in stale_parts(self.path))}
            if any(p.name not in leftovers for p in self.path.iterdir()):
                raise ChainError(
                    f"{str(self.path)!r} exists, is not empty and has no {RUN_FILE}; choose a new run directory"
                )

    def open(self, parameters: dict, *, seed: int, extra: dict) -> dict:
        """Create the run (writing run.json) or check that an existing one was made with ``parameters``.

        Call it holding :meth:`lock`: it removes what killed runs left behind (temporary files,
        staging folders). Raises :class:`ChainError` naming the first parameters that differ; the
        ones that may differ (:data:`RESUMABLE`) are updated in run.json. Returns the stored (or new)
        run record.
        """
        for folder in (self.path, self.path / REFERENCE_FOLDER):
            remove_stale_parts(folder)
        self.check(parameters)
        if self.run_file.exists():
            record = self.read_run()
            stored = record.get("parameters", {})
            changed = {key: parameters[key] for key in RESUMABLE
                       if key in parameters and stored.get(key) != parameters[key]}
            if changed:
                record["parameters"] = {**stored, **changed}
                record.update({key: value for key, value in extra.items() if key in changed})
                write_json(self.run_file, record)
            return record
        record = provenance(parameters, seed=seed, software="chain")
        record.update(extra)
        write_json(self.run_file, record)
        return record

    def read_run(self) -> dict:
        try:
            record = read_json(self.run_file)
        except OSError as error:
            raise ChainError(f"cannot read {str(self.run_file)!r} ({error}); choose a new run directory") from None
        return check_run_record(record, self.run_file)

    def is_complete(self, iteration: int) -> bool:
        return iteration_status(self.iteration_dir(iteration)) == COMPLETE

    def completed(self) -> list[int]:
        """Indices of the iterations whose folder is complete, in order."""
        if not self.path.is_dir():
            return []
        return [iteration for iteration in iteration_folders(self.path) if self.is_complete(iteration)]

    def start_iteration(self, iteration: int) -> Path:
        """Remove what an interrupted attempt left of ``iteration`` and return its fresh, empty folder."""
        folder = self.iteration_dir(iteration)
        self.discard(iteration)
        folder.mkdir(parents=True)
        return folder

    def damaged(self, iteration: int) -> str | None:
        """Why the images of a finished ``iteration`` are not all there and whole, or None if they are.

        Each image its metadata lists must exist and decode (PNG chunks' checksums included).
        """
        from PIL import Image

        folder = self.iteration_dir(iteration)
        try:
            rows = self.read_metadata(iteration)
        except (OSError, json.JSONDecodeError) as error:
            return f"{folder / METADATA_FILE} cannot be read ({type(error).__name__})"
        for row in rows:
            path = folder / str(row.get("file_name", "")) if isinstance(row, dict) else folder
            problem = image_problem(path)
            if problem is None:
                try:
                    with Image.open(path) as image:
                        image.verify()
                except Exception as error:  # PIL reports a damaged file with many exception types
                    problem = f"does not decode ({type(error).__name__})"
            if problem is not None:
                return f"{path} {problem}"
        return None

    def invalidate(self, iteration: int) -> None:
        """Delete ``iteration`` and every later one, finished or not (each depends on the one before).

        The last goes first and each loses its ``iteration.json`` before anything else, so an
        interruption never leaves a finished iteration after an unfinished one.
        """
        if not self.path.is_dir():
            return
        for index, folder in reversed(iteration_folders(self.path).items()):
            if index < iteration:
                break
            with contextlib.suppress(FileNotFoundError):
                (folder / ITERATION_FILE).unlink()
            shutil.rmtree(folder, ignore_errors=True)

    def discard(self, iteration: int) -> None:
        """Delete an unfinished iteration's folder (never a complete one)."""
        if self.is_complete(iteration):
            raise ChainError(f"iteration {iteration} of {str(self.path)!r} is complete and is kept")
        shutil.rmtree(self.iteration_dir(iteration), ignore_errors=True)

    def write_iteration_record(self, iteration: int, record: dict) -> None:
        write_json(self.iteration_dir(iteration) / ITERATION_FILE, record)

    def read_metadata(self, iteration: int) -> list[dict]:
        path = self.iteration_dir(iteration) / METADATA_FILE
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_same_parameters(stored: dict, requested: dict, path: Path) -> None:
    """Refuse to resume a run whose parameters (other than :data:`RESUMABLE`) differ.

    Examples
    --------
    >>> check_same_parameters({"cfg": 7.5}, {"cfg": 3.0}, Path("runs/a"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    chain.errors.ChainError: 'runs/a' was made with different parameters: cfg 7.5 there, 3.0 now; ...
    >>> check_same_parameters({"cfg": 7.5}, {"cfg": 7.5, "data_workflow": "replace"}, Path("runs/a"))
    """
    # A parameter added after the run was made is recorded there as its default (a run from before
    # --data-workflow existed replaced its data): it resumes under the default and nothing else.
    stored = {**{k: ALL_PARAMETERS[k].default for k in requested if k in ALL_PARAMETERS and k not in stored},
              **stored}
    keys = sorted(set(stored) | set(requested))
    differ = [k for k in keys if k not in RESUMABLE and stored.get(k) != requested.get(k)]
    if differ:
        shown = ", ".join(f"{k} {stored.get(k)!r} there, {requested.get(k)!r} now" for k in differ[:3])
        more = f" (and {len(differ) - 3} more)" if len(differ) > 3 else ""
        raise ChainError(
            f"{str(path)!r} was made with different parameters: {shown}{more}; "
            "use the same options to resume, or a new run directory"
        )


def disk_full_error(error: OSError, path: Path) -> DiskFullError | None:
    """The one-line failure (exit status 1) for a full disk, or None if ``error`` is something else."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            f"no space left on the device while writing the run {str(path)!r}; "
            "free some space and rerun the same command to resume"
        )
    return None
