"""Base-model reference points: what the base model generates conditionally (CFG 1) and unconditionally.

Embedded, they measure the theory's p_c and p_u in trait space directly, so the fit
need not treat them as unknowns. :func:`make_reference` generates them for a run
directory with the run's own backend and settings, the captions of its first
finished iteration and seeds of their own, and writes them to
``RUN/reference/cond`` (caption, CFG 1) and ``RUN/reference/uncond`` (empty
prompt, CFG 1: the unconditional branch alone). Each folder appears under its
final name only when complete; existing folders are left as they are.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from chain.errors import ChainError
from qtm.schedules import CFGSchedule
from validate.runs import read_run

#: Mixed into the seeds so that reference images never share noise with the run's own images.
_REFERENCE_TAG = 0x5EF


def make_reference(run_dir, *, backend=None, progress=None) -> dict[str, Path]:
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

    Examples
    --------
    >>> make_reference("/nonexistent")
    Traceback (most recent call last):
    ...
    chain.errors.ChainError: run directory '/nonexistent' does not exist; give the folder that `chain run` wrote
    """
    run = read_run(run_dir)
    if not run.iterations:
        raise ChainError(f"{run.name}: no finished iteration to take the captions from; run `chain run` first")
    wanted = [kind for kind in ("cond", "uncond") if kind not in run.reference]
    if wanted:
        params = run.params
        if backend is None:
            from chain.runner import make_backend

            backend = make_backend(params)
        captions = run.iterations[min(run.iterations)].captions
        seed = int(params.get("seed", 0) or 0)
        seeds = [
            int(np.random.SeedSequence([seed, _REFERENCE_TAG, i]).generate_state(1, dtype=np.uint32)[0])
            for i in range(len(captions))
        ]
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
            _write_folder(run.path / "reference" / kind, images, prompts, seeds)
    return {kind: run.path / "reference" / kind for kind in ("cond", "uncond")}


def _write_folder(folder: Path, images, prompts, seeds) -> None:
    staging = folder.with_name(f".{folder.name}.part")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        lines = []
        for i, (image, prompt, seed) in enumerate(zip(images, prompts, seeds, strict=True)):
            name = f"{i:06d}.png"
            image.save(staging / name)
            lines.append(json.dumps({"file_name": name, "caption": prompt, "seed": seed, "cfg": 1.0}))
        (staging / "metadata.jsonl").write_text("\n".join(lines) + "\n")
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
