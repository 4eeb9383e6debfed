"""The layout of a chain run directory, and reading one from its files alone.

``chain`` writes run directories (:class:`chain.rundir.RunDirectory`) and
``validate`` reads them; both take the names from here, so that neither needs the
other (and reading one needs no torch). Layout::

    RUN/run.json                  parameters, seeds, versions, git commit, device
    RUN/iter-000/000000-0.png     generated images (caption index, copy)
    RUN/iter-000/metadata.jsonl   file_name, caption, seed, cfg, schedule per image
    RUN/iter-000/weights/         what the finetuning produced
    RUN/iter-000/iteration.json   timings, losses, status ("complete" is written last)
    RUN/iter-000/samples/cfg1/    that iteration's model at CFG 1 (the decomposition; not for CFG-1 runs)
    RUN/iter-000/samples/uncond/  that iteration's model with the empty prompt
    RUN/iter-000/samples/replicate-00/  CFG 1, the model refinetuned on the same data with another seed
    RUN/reference/cond/           base-model generations at CFG 1 (the theory's p_c)
    RUN/reference/uncond/         base-model generations with the empty prompt (p_u)
    RUN/real/                     real-data images
    RUN/selection/law.json        the sampler law the selection samples were drawn with (chain writes it)
    RUN/selection/base/cfg1/      the base model at CFG 1 with its captions (``uncond/``: the empty prompt)
    RUN/selection/iter-000/cfg-5/ that iteration's model at peak CFG 5 (``base/cfg-5/``: the base model's)

An iteration counts as finished only once its ``iteration.json`` says
``"complete"``. Iteration folders named ``iteration_000`` are read too. A folder
of images holds, optionally, a ``metadata.jsonl`` of captions. Bad input raises
:class:`qtm.errors.RunDirectoryError` with a one-line message.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from qtm.errors import RunDirectoryError
from qtm.run_record import PARAMETER_SECTIONS, check_run_record

RUN_FILE = "run.json"
ITERATION_FILE = "iteration.json"
METADATA_FILE = "metadata.jsonl"
COMPLETE = "complete"
ITERATION_PREFIX = "iter-"
REFERENCE_FOLDER = "reference"
#: The reference folders: the base model conditionally at CFG 1, and with the empty prompt.
REFERENCE_KINDS = ("cond", "uncond")
REAL_FOLDER = "real"
#: The decomposition's samples of each iteration's model (written by ``chain.decomposition_samples``): at CFG 1
#: with the iteration's captions and with the empty prompt. The guided samples are the iteration's own images.
SAMPLES_FOLDER = "samples"
SAMPLE_KINDS = ("cfg1", "uncond")
#: Folders ``replicate-00``, ``replicate-01``, ...: CFG-1 samples of models finetuned on the iteration's training
#: set with other seeds (finetuning-seed noise).
REPLICATE_PREFIX = "replicate-"

#: The selection curve's samples (written by ``chain.selection_samples``): per model, a folder per CFG value
#: (:func:`selection_kind`) holding, for each caption, the first ``m`` (caption, seed) pairs of that model's
#: CFG-1 samples in folder order, so image ``j`` of a caption pairs with the caption's ``j``-th CFG-1 image. The
#: base model's CFG-1 and unconditional samples lie beside them; an iteration's are the decomposition's.
SELECTION_FOLDER = "selection"
SELECTION_LAW_FILE = "law.json"
SELECTION_BASE = "base"
_SELECTION_KIND = re.compile(r"^cfg-(\d+(?:\.\d+)?)$")

_ITERATION_NAME = re.compile(r"^iter(?:ation)?[_-]?(\d+)$")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def iteration_folder(run_path, iteration: int) -> Path:
    """The folder of ``iteration`` in the run directory ``run_path``.

    Examples
    --------
    >>> iteration_folder("runs/a", 7).as_posix()
    'runs/a/iter-007'
    """
    return Path(run_path) / f"{ITERATION_PREFIX}{iteration:03d}"


def iteration_folders(run_path) -> dict[int, Path]:
    """The iteration folders of ``run_path``, finished or not, by iteration index in increasing order.

    Examples
    --------
    >>> import tempfile
    >>> run = Path(tempfile.mkdtemp())
    >>> for name in ("iter-001", "iter-000", "notes"):
    ...     (run / name).mkdir()
    >>> [(index, folder.name) for index, folder in iteration_folders(run).items()]
    [(0, 'iter-000'), (1, 'iter-001')]
    """
    found = {}
    for child in Path(run_path).iterdir():
        match = _ITERATION_NAME.match(child.name)
        if match and child.is_dir():
            found[int(match.group(1))] = child
    return dict(sorted(found.items()))


def iteration_status(folder) -> str:
    """The status an iteration folder records (:data:`COMPLETE` once finished), or why there is none.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> iteration_status(folder)
    'no iteration.json'
    >>> _ = (folder / ITERATION_FILE).write_text('{"status": "complete"}')
    >>> iteration_status(folder) == COMPLETE
    True
    """
    info = Path(folder) / ITERATION_FILE
    if not info.exists():
        return f"no {ITERATION_FILE}"
    try:
        return str(json.loads(info.read_text()).get("status", "no status"))
    except (OSError, json.JSONDecodeError, AttributeError):
        return f"unreadable {ITERATION_FILE}"


def samples_folder(run_path, iteration: int, kind: str) -> Path:
    """The folder of the decomposition samples ``kind`` (``cfg1``, ``uncond`` or ``replicate-NN``) of ``iteration``.

    Each such folder appears under its final name only once complete.

    Examples
    --------
    >>> samples_folder("runs/a", 2, "uncond").as_posix()
    'runs/a/iter-002/samples/uncond'
    """
    return iteration_folder(run_path, iteration) / SAMPLES_FOLDER / kind


def selection_kind(cfg: float) -> str:
    """The folder name of the selection samples at peak CFG ``cfg``.

    Examples
    --------
    >>> selection_kind(7.5), selection_kind(2.0)
    ('cfg-7.5', 'cfg-2')
    """
    return f"cfg-{float(cfg):g}"


def selection_folder(run_path, iteration: int, kind: str) -> Path:
    """The folder of the selection samples ``kind`` of model ``iteration`` (-1: the base model).

    Examples
    --------
    >>> selection_folder("runs/a", -1, "cfg-5").as_posix(), selection_folder("runs/a", 2, "cfg-5").as_posix()
    ('runs/a/selection/base/cfg-5', 'runs/a/selection/iter-002/cfg-5')
    """
    model = SELECTION_BASE if iteration < 0 else iteration_folder("", iteration).name
    return Path(run_path) / SELECTION_FOLDER / model / kind


def read_selection(run_path, iteration: int) -> dict:
    """The complete selection folders of model ``iteration`` (-1: base): CFG values to ImageSets, and the base
    model's ``cfg1`` and ``uncond`` under those names.

    Examples
    --------
    >>> import tempfile
    >>> read_selection(tempfile.mkdtemp(), -1)
    {}
    """
    folder = selection_folder(run_path, iteration, "")
    if not folder.is_dir():
        return {}
    found = {}
    for child in sorted(folder.iterdir()):
        match = _SELECTION_KIND.match(child.name)
        if child.is_dir() and (match or child.name in SAMPLE_KINDS):
            key = float(match.group(1)) if match else child.name
            found[key] = read_image_set(child, what=f"selection folder ({child.name})")
    return found


def replicate_name(index: int) -> str:
    """The samples folder name of finetuning replicate ``index``.

    Examples
    --------
    >>> replicate_name(3)
    'replicate-03'
    """
    return f"{REPLICATE_PREFIX}{index:02d}"


def sampled_at_cfg1(params: dict) -> bool:
    """Whether a run with parameters ``params`` sampled at CFG 1 (constant): its images are its CFG-1 samples.

    Such a run has no ``samples/cfg1`` folders; the decomposition reads its iterations' images instead.

    Examples
    --------
    >>> sampled_at_cfg1({"cfg": 1.0, "schedule": "constant"}), sampled_at_cfg1({"cfg": 3.0})
    (True, False)
    """
    return float(params.get("cfg", 1.0)) == 1.0 and str(params.get("schedule", "constant")) == "constant"


def read_samples(run_path, iteration: int) -> dict[str, ImageSet]:
    """The complete decomposition sample folders of ``iteration``, by kind (replicates by their folder name).

    Examples
    --------
    >>> import tempfile
    >>> run = Path(tempfile.mkdtemp())
    >>> read_samples(run, 0)
    {}
    """
    folder = iteration_folder(run_path, iteration) / SAMPLES_FOLDER
    if not folder.is_dir():
        return {}
    found = {}
    for child in sorted(folder.iterdir()):
        if child.is_dir() and (child.name in SAMPLE_KINDS or child.name.startswith(REPLICATE_PREFIX)):
            found[child.name] = read_image_set(child, what=f"samples folder ({child.name})")
    return found


#: How a complete PNG file ends: its IEND chunk (length 0, type, CRC).
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def image_problem(path) -> str | None:
    r"""Why the image file ``path`` is not whole, or None: missing, empty, or a PNG cut short.

    A cheap check (no decoding): it reads the last bytes of a PNG, enough to see a file
    truncated by a crash or a full disk.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> image_problem(folder / "gone.png")
    'is missing'
    >>> _ = (folder / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    >>> image_problem(folder / "cut.png")
    'is truncated (no PNG end chunk)'
    """
    # Descriptor-level calls: validate checks every image of every run (72 000 for the study's 24 runs), and a
    # buffered open with stat through pathlib cost 100 µs a file against 12.
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return "is missing"
    try:
        size = os.fstat(descriptor).st_size
        if size == 0:
            return "is empty"
        if os.fspath(path).lower().endswith(".png"):
            os.lseek(descriptor, max(0, size - len(_PNG_END)), os.SEEK_SET)
            if os.read(descriptor, len(_PNG_END)) != _PNG_END:
                return "is truncated (no PNG end chunk)"
    finally:
        os.close(descriptor)
    return None


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


def read_image_set(path, *, what: str, finished: bool = False) -> ImageSet:
    """Read a folder of images; captions come from its ``metadata.jsonl`` when there is one.

    The images are listed, not decoded. ``finished``: the folder is a finished iteration
    of ``chain run``, whose every image must be whole (:func:`image_problem`); a damaged one
    is an error that says how to repair the run.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.png").write_bytes(b"")
    >>> len(read_image_set(folder, what="example"))
    1
    """
    path = Path(path)
    if not path.is_dir():
        raise RunDirectoryError(f"{what} {str(path)!r} is not a directory; give a folder of images")
    metadata = path / METADATA_FILE
    files, captions = [], []
    if metadata.exists():
        for number, line in enumerate(metadata.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                name = record["file_name"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise RunDirectoryError(
                    f"{metadata}: line {number} is not a JSON object with a file_name; fix or remove the file"
                ) from None
            problem = image_problem(path / name) if finished else None
            if problem is not None:
                raise RunDirectoryError(
                    f"{path / name} {problem}; rerun `chain run` on {str(path.parent)!r} with its options to "
                    "repair it (that iteration and the later ones are redone)"
                )
            if not (path / name).exists():
                raise RunDirectoryError(f"{metadata}: line {number} names {name!r}, which is not in {path}")
            files.append(path / name)
            captions.append(str(record.get("caption", "")))
    else:
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        captions = [""] * len(files)
    return ImageSet(path=path, files=files, captions=captions)


def read_parameters(path) -> dict:
    """A run directory's parameters (its ``run.json``, flattened), without reading any image.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "run.json").write_text('{"cfg": 3.0}')
    >>> read_parameters(folder)
    {'cfg': 3.0}
    """
    path = Path(path)
    if not path.is_dir():
        raise RunDirectoryError(f"run directory {str(path)!r} does not exist; give the folder that `chain run` wrote")
    run_json = path / RUN_FILE
    if not run_json.exists():
        raise RunDirectoryError(f"{path} has no {RUN_FILE}; give a run directory written by `chain run`")
    return _flatten_parameters(check_run_record(read_json(run_json), run_json))


def read_json(path):
    """The JSON value a run directory's file (``run.json``, ``law.json``) holds; a file that is not UTF-8 JSON is
    one line naming it.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "law.json"
    >>> _ = path.write_text('{"steps": 25')
    >>> read_json(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    qtm.errors.RunDirectoryError: .../law.json is not valid JSON (Expecting ',' delimiter); the run directory is ...
    """
    try:
        return json.loads(Path(path).read_bytes())
    except ValueError as error:  # not JSON, or not text at all
        reason = error.msg if isinstance(error, json.JSONDecodeError) else "not UTF-8 text"
        raise RunDirectoryError(f"{path} is not valid JSON ({reason}); the run directory is damaged") from None


def read_run(path, *, reference=None, real=None) -> Run:
    """Read a run directory: parameters, finished iterations, reference points and real data.

    Unfinished iterations (no ``iteration.json`` with status ``complete``, or no
    images) are listed in :attr:`Run.skipped`, not read.

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

    Returns
    -------
    Run

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
    run = Run(path=path, params=read_parameters(path))
    for index, folder in iteration_folders(path).items():
        status = iteration_status(folder)
        if status != COMPLETE:
            run.skipped.append(f"{folder.name} ({status})")
            continue
        images = read_image_set(folder, what="iteration folder", finished=True)
        if not images.files:
            run.skipped.append(f"{folder.name} (no images)")
            continue
        run.iterations[index] = images
    reference = Path(reference) if reference is not None else path / REFERENCE_FOLDER
    for kind in REFERENCE_KINDS:
        if (reference / kind).is_dir():
            run.reference[kind] = read_image_set(reference / kind, what=f"reference folder ({kind})")
    if real is None:
        # The run's own training data, when it was a folder (``chain run --data DIR``), is the real data.
        data = run.params.get("data")
        own = path / REAL_FOLDER
        real = own if own.is_dir() or not isinstance(data, str) else Path(data)
    real = Path(real)
    if real.is_dir():
        run.real = read_image_set(real, what="real-data folder")
    return run


def _flatten_parameters(params: dict) -> dict:
    """Lift a nested ``parameters`` (or ``params``) section to the top level, so lookups ignore nesting.

    The nested run parameters win over top-level entries of the same name (``chain run``
    writes e.g. a ``backend`` description at the top and the backend's name inside).
    """
    flat = dict(params)
    for key in PARAMETER_SECTIONS:
        inner = params.get(key)
        if isinstance(inner, dict):
            flat.update(inner)
    return flat
