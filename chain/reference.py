"""Base-model reference points: what the base model generates conditionally (CFG 1) and unconditionally.

Embedded (``chain validate``), they measure the theory's p_c and p_u in trait space
directly, so the fit need not treat them as unknowns. :func:`make_reference`
generates them for a run directory with the run's own backend and settings, the
captions of its first finished iteration and seeds of their own, and writes them
to ``RUN/reference/cond`` (caption, CFG 1) and ``RUN/reference/uncond`` (empty
prompt, CFG 1: the unconditional branch alone), and writes the run's data set to ``RUN/real`` when the run has
no real data (:func:`write_real_data`): validate takes the real data as the reference population of its features
and as the training set of iteration 0, so a validation must not depend on whether an earlier call (the
decomposition's) happened to write it. The layout is :mod:`qtm.rundir`'s.
Each folder appears under its final name only when complete; existing folders
are left as they are. The generators of the run directory's extra samples (this one, the decomposition's and the
selection curve's) write holding the run's lock (:func:`locked_run`): one process at a time writes a run directory,
so a second generator, or a ``chain run`` on it, is refused at once in one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from chain.errors import ChainError
from chain.rundir import RunDirectory
from chain.runner import make_backend
from qtm.random import derive_seed
from qtm.rundir import METADATA_FILE, REAL_FOLDER, REFERENCE_FOLDER, REFERENCE_KINDS, read_parameters, read_run
from qtm.schedules import CFGSchedule

#: The stream tag of the reference seeds: reference images never share noise with the run's own images.
REFERENCE_TAG = 0x5EF


def reference_seeds(run_seed: int, count: int) -> list[int]:
    """Seeds of the ``count`` reference images of a run with seed ``run_seed`` (one per caption).

    Examples
    --------
    >>> len(set(reference_seeds(0, 100)))  # all distinct
    100
    """
    return [derive_seed(run_seed, REFERENCE_TAG, i) for i in range(count)]


def make_reference(run_dir, *, backend=None, progress=None, real_data: bool = True) -> dict[str, Path]:
    """Generate the missing reference folders of ``run_dir`` from the base model; return all reference folders.

    Parameters
    ----------
    run_dir : path-like
        A run directory with at least one finished iteration.
    backend : chain.backends.base.Backend, optional
        A backend holding the base model; by default built from ``run.json`` with
        :func:`chain.runner.make_backend` (for ``tiny``, the cached base model).
    progress : callable, optional
        ``progress(done, total)`` during generation.
    real_data : bool, default True
        Also write the run's data set to ``RUN/real`` where the run has no real data. False where the caller
        measures the real data from a folder of its own (``chain validate --real DIR``).

    Examples
    --------
    >>> make_reference("/nonexistent")
    Traceback (most recent call last):
    ...
    qtm.errors.RunDirectoryError: run directory '/nonexistent' does not exist; give the folder that `chain run` wrote
    """
    with locked_run(run_dir) as run:
        return _make_reference(run, backend, progress, real_data)


def _make_reference(run, backend, progress, real_data) -> dict[str, Path]:
    """:func:`make_reference` on the run read under its lock."""
    if not run.iterations:
        raise ChainError(f"{run.name}: no finished iteration to take the captions from; run `chain run` first")
    if real_data:
        write_real_data(run)
    folders = {kind: run.path / REFERENCE_FOLDER / kind for kind in REFERENCE_KINDS}
    wanted = [kind for kind in REFERENCE_KINDS if kind not in run.reference]
    if not wanted:
        return folders
    params = run.params
    backend = backend if backend is not None else make_backend(params)
    captions = run.iterations[min(run.iterations)].captions
    seeds = reference_seeds(int(params.get("seed", 0) or 0), len(captions))
    for kind in wanted:
        prompts = list(captions) if kind == "cond" else [""] * len(captions)
        images = backend.generate(
            prompts,
            cfg=1.0,
            schedule=CFGSchedule.parse("constant"),
            seeds=seeds,
            steps=int(params.get("steps", 50) or 50),
            sampler=str(params.get("sampler", "ddim")),
            progress=progress,
        )
        write_image_folder(folders[kind], images, prompts, seeds)
    return folders


def write_real_data(run) -> None:
    """Write the run's data set to ``RUN/real`` as images with captions (its real data, the training set of
    iteration 0) where the run has no real data and names its data set (as a run that `chain run` made does)."""
    if run.real is not None or "data" not in run.params:
        return
    from chain.data import load_dataset

    data = load_dataset(run.params["data"])
    write_image_folder(run.path / REAL_FOLDER, data.images, data.captions, [None] * len(data))


@contextlib.contextmanager
def locked_run(run_dir):
    """Hold the lock of the run directory ``run_dir`` (the one ``chain run`` holds) and yield it, read under the lock.

    Another process holding it is a one-line error naming that process; a missing run directory is its own
    one-line error (the lock would create the folder).
    """
    read_parameters(run_dir)
    with RunDirectory(Path(run_dir)).lock(what="chain validate, generating the run's samples"):
        yield read_run(run_dir)


def write_image_folder(folder: Path, images, prompts, seeds, *, cfg: float = 1.0) -> None:
    """Write images and their ``metadata.jsonl`` into a staging folder, then rename it onto ``folder``.

    The folder appears under its name only when complete. Generated images (a seed) record their seed
    and peak CFG ``cfg``; real images (seed None) record their caption only.
    """
    staging = folder.with_name(f".{folder.name}.part")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        lines = []
        for i, (image, prompt, seed) in enumerate(zip(images, prompts, seeds, strict=True)):
            name = f"{i:06d}.png"
            image.save(staging / name)
            record = {"file_name": name, "caption": prompt}
            if seed is not None:
                record.update(seed=seed, cfg=cfg)
            lines.append(json.dumps(record))
        (staging / METADATA_FILE).write_text("\n".join(lines) + "\n")
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
