"""The runs a validate reads: their finished iterations, the captions' grouping, the columns naming a run.

:func:`read_runs` reads the run directories (finished iterations only, :mod:`qtm.rundir`) and
refuses what cannot be validated in one line; :func:`default_group` chooses ``--group`` when it is
not given; :func:`image_set` finds a population's images; :func:`run_columns` are the setting
columns every table row of a run carries.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from qtm.rundir import ImageSet, Run, read_run
from validate.errors import ValidateError
from validate.statistics import MIN_GROUP_SIZE

GROUPS = ("caption", "none")


def read_runs(run_dirs, *, reference=None, real=None, warn: Callable[[str], None]) -> list[Run]:
    """The runs of ``run_dirs`` that have a finished iteration; ``warn`` hears of what is left out.

    Examples
    --------
    >>> read_runs(["/nonexistent"], warn=print)
    Traceback (most recent call last):
    ...
    qtm.errors.RunDirectoryError: run directory '/nonexistent' does not exist; give the folder that `chain run` wrote
    """
    runs = []
    for path in run_dirs:
        run = read_run(path, reference=reference, real=real)
        if run.skipped:
            warn(f"{run.name}: skipped unfinished iterations: {', '.join(run.skipped)}")
        if not run.iterations:
            warn(f"{run.name}: no finished iteration; left out of the report")
            continue
        runs.append(run)
    if not runs:
        raise ValidateError("no run directory has a finished iteration; wait for `chain run` to finish one")
    if len({run.name for run in runs}) < len(runs):
        raise ValidateError("two run directories have the same name; give runs with distinct folder names")
    for run in runs:
        for what, images in (
            ("real-data folder", run.real),
            *((f"reference folder ({kind})", images) for kind, images in run.reference.items()),
        ):
            if images is not None and not images.files:
                raise ValidateError(
                    f"the {what} {str(images.path)!r} has no images (png, jpg, webp); give a folder of images"
                )
    differ = [
        f"{key}s {', '.join(sorted(values))}"
        for key in ("data", "backend")
        if len(values := {str(run.params.get(key)) for run in runs}) > 1
    ]
    if differ:
        warn(
            f"the runs were made with different {' and '.join(differ)}; their statistics are compared "
            "and fitted together as if they were one setup"
        )
    return runs


def default_group(runs: list[Run], captions: list[str], warn) -> str:
    """``caption`` with several captions, unless some iteration has too few images of one caption."""
    if len(captions) <= 1:
        return "none"
    smallest = min(
        (min(Counter(images.captions).values()), run.name, index)
        for run in runs
        for index, images in run.iterations.items()
    )
    if smallest[0] < MIN_GROUP_SIZE:
        warn(
            f"{smallest[1]} iteration {smallest[2]} has a caption with only {smallest[0]} image(s); "
            f"traits are pooled over captions (--group none), since per-caption statistics need at least "
            f"{MIN_GROUP_SIZE} images per caption"
        )
        return "none"
    return "caption"


def image_set(run: Run, population: str, key: int) -> ImageSet:
    if population == "generated":
        return run.iterations[key]
    return run.real if population == "real" else run.reference[population.removeprefix("reference_")]


def run_columns(run: Run) -> dict:
    params = run.params
    return {
        "run": run.name,
        "label": run.label(),
        "cfg": run.cfg,
        "schedule": str(params.get("schedule", "constant")),
        "drop": float(params.get("drop", 0.0) or 0.0),
        "real_fraction": float(params.get("real_fraction", 0.0) or 0.0),
        "finetune": str(params.get("finetune", "base")),
    }
