"""Reading chain run directories from their files alone (no import of the runner).

A run directory (see ``chain run`` and :mod:`chain.rundir`) holds ``run.json``
and one folder per iteration (``iter-000``, ``iter-001``, ...; ``iteration_000``
is read too), each with PNG images, a
``metadata.jsonl`` (one JSON object per image: ``file_name``, ``caption``, ...)
and an ``iteration.json`` whose ``"status"`` is ``"complete"`` once the
iteration finished. Only finished iterations are validated.

Base-model reference points (generations of the base model used to measure
p_c and p_u in trait space) are looked for in ``RUN/reference/cond`` (CFG 1)
and ``RUN/reference/uncond`` (empty prompt), or in the folder given by
``--reference``; real data in ``RUN/real``, the folder given by ``--real``, or the
run's training-data folder (``data`` in ``run.json``, when it is a folder).
Such a folder holds images and, optionally, a ``metadata.jsonl`` of captions.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from chain.errors import ChainError

_ITERATION_NAME = re.compile(r"^iter(?:ation)?[_-]?(\d+)$")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
COMPLETE = "complete"


@dataclass
class ImageSet:
    """A folder of images with their captions (empty captions where none are recorded)."""

    path: Path
    files: list[Path]
    captions: list[str]

    def __len__(self) -> int:
        return len(self.files)


@dataclass
class Run:
    """One run directory: its parameters and its finished iterations."""

    path: Path
    params: dict
    iterations: dict[int, ImageSet] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    reference: dict[str, ImageSet] = field(default_factory=dict)
    real: ImageSet | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def cfg(self) -> float:
        return float(self.params.get("cfg", float("nan")))

    def label(self) -> str:
        """A short label naming the settings that differ between runs of a sweep."""
        parts = [f"cfg={self.params.get('cfg', '?')}"]
        schedule = self.params.get("schedule", "constant")
        if schedule not in (None, "constant"):
            parts.append(f"schedule={schedule}")
        for key in ("drop", "real_fraction"):
            if self.params.get(key):
                parts.append(f"{key}={self.params[key]}")
        if self.params.get("finetune", "base") != "base":
            parts.append(f"finetune={self.params['finetune']}")
        return f"{self.name} ({', '.join(parts)})"


def read_image_set(path, *, what: str) -> ImageSet:
    """Read a folder of images; captions come from its ``metadata.jsonl`` when there is one.

    Examples
    --------
    >>> import tempfile, PIL.Image
    >>> folder = Path(tempfile.mkdtemp())
    >>> PIL.Image.new("RGB", (4, 4)).save(folder / "a.png")
    >>> len(read_image_set(folder, what="example"))
    1
    """
    path = Path(path)
    if not path.is_dir():
        raise ChainError(f"{what} {str(path)!r} is not a directory; give a folder of images")
    metadata = path / "metadata.jsonl"
    files, captions = [], []
    if metadata.exists():
        for number, line in enumerate(metadata.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                name = record["file_name"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ChainError(
                    f"{metadata}: line {number} is not a JSON object with a file_name; fix or remove the file"
                ) from None
            if not (path / name).exists():
                raise ChainError(f"{metadata}: line {number} names {name!r}, which is not in {path}")
            files.append(path / name)
            captions.append(str(record.get("caption", "")))
    else:
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        captions = [""] * len(files)
    return ImageSet(path=path, files=files, captions=captions)


def read_run(path, *, reference=None, real=None) -> Run:
    """Read a run directory: parameters, finished iterations, reference points and real data.

    Parameters
    ----------
    path : path-like
        The run directory.
    reference : path-like, optional
        A folder with ``cond`` and/or ``uncond`` subfolders of base-model generations;
        defaults to ``RUN/reference`` when it exists.
    real : path-like, optional
        A folder of real-data images; defaults to ``RUN/real`` when it exists, else to
        the run's ``data`` parameter when that is a folder.

    Unfinished iterations (no ``iteration.json`` with status ``complete``, or no
    images) are listed in :attr:`Run.skipped`, not read.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "run.json").write_text('{"cfg": 3.0}')
    >>> run = read_run(folder)
    >>> run.cfg, run.iterations
    (3.0, {})
    """
    path = Path(path)
    if not path.is_dir():
        raise ChainError(f"run directory {str(path)!r} does not exist; give the folder that `chain run` wrote")
    run_json = path / "run.json"
    if not run_json.exists():
        raise ChainError(f"{path} has no run.json; give a run directory written by `chain run`")
    try:
        params = json.loads(run_json.read_text())
    except json.JSONDecodeError as error:
        raise ChainError(f"{run_json} is not valid JSON ({error.msg}); the run directory is damaged") from None
    if not isinstance(params, dict):
        raise ChainError(f"{run_json} must hold a JSON object")
    run = Run(path=path, params=_flatten_parameters(params))
    found = []
    for child in path.iterdir():
        match = _ITERATION_NAME.match(child.name)
        if child.is_dir() and match:
            found.append((int(match.group(1)), child))
    for index, folder in sorted(found):
        status = _iteration_status(folder)
        if status != COMPLETE:
            run.skipped.append(f"{folder.name} ({status})")
            continue
        images = read_image_set(folder, what="iteration folder")
        if not images.files:
            run.skipped.append(f"{folder.name} (no images)")
            continue
        run.iterations[index] = images
    reference = Path(reference) if reference is not None else path / "reference"
    for kind in ("cond", "uncond"):
        if (reference / kind).is_dir():
            run.reference[kind] = read_image_set(reference / kind, what=f"reference folder ({kind})")
    if real is None:
        # The run's own training data, when it was a folder (``chain run --data DIR``), is the real data.
        data = run.params.get("data")
        real = path / "real" if (path / "real").is_dir() or not isinstance(data, str) else Path(data)
    real = Path(real)
    if real.is_dir():
        run.real = read_image_set(real, what="real-data folder")
    return run


def _iteration_status(folder: Path) -> str:
    info = folder / "iteration.json"
    if not info.exists():
        return "no iteration.json"
    try:
        status = json.loads(info.read_text()).get("status", "no status")
    except (json.JSONDecodeError, AttributeError):
        return "unreadable iteration.json"
    return str(status)


def _flatten_parameters(params: dict) -> dict:
    """Lift a nested ``parameters`` (or ``params``) section to the top level, so lookups ignore nesting.

    The nested run parameters win over top-level entries of the same name (``chain run``
    writes e.g. a ``backend`` description at the top and the backend's name inside).
    """
    flat = dict(params)
    for key in ("config", "params", "parameters"):
        inner = params.get(key)
        if isinstance(inner, dict):
            flat.update(inner)
    return flat
