"""The samples the decomposition of ``chain validate --decompose`` needs, generated into the run directory.

For every finished iteration ``t`` the model finetuned there (``iter-NNN/weights``) is
loaded and sampled at CFG 1 with the iteration's own captions (``samples/cfg1``; not for a
run that itself sampled at CFG 1 with a constant schedule, whose images already are those)
and with the empty prompt (``samples/uncond``). The guided samples are the iteration's own
images and are never regenerated. The real data set is written to ``RUN/real`` (the
training set of iteration 0) when the run has none. Optionally (``finetune_noise=K``) the
training set of one iteration is finetuned on K more times with seeds of their own and each
model sampled at CFG 1 (``samples/replicate-00`` ...): the finetuning-seed noise.

Every folder appears under its final name only when complete (written beside it, then
renamed), existing folders are kept, so an interrupted call resumes where it stopped.
Seeds come from :func:`qtm.random.derive_seed` under stream tags of their own: the samples
never share noise with the run's images or the reference points. The layout is
:mod:`qtm.rundir`'s.
"""

from __future__ import annotations

import time

import numpy as np

from chain.errors import ChainError
from chain.reference import locked_run, write_image_folder, write_real_data
from chain.runner import WEIGHTS_DIR, make_backend
from qtm.random import derive_seed
from qtm.rundir import (
    iteration_folder,
    read_samples,
    replicate_name,
    sampled_at_cfg1,
    samples_folder,
)
from qtm.schedules import CFGSchedule

#: Stream tags: image seeds of the samples (then iteration, kind, image) and the replicates' finetuning seeds.
SAMPLES_TAG = 0xDEC0
REPLICATE_TAG = 0xDEC1
#: CFG-1 samples per caption by default. The decomposition must cost at most as much again as `chain validate`
#: itself; on a 5-iteration tiny run (10 captions, 25 steps, one CPU thread) validate took 11 s of CPU and 3750
#: samples (50 per caption and half as many unconditional) 36 s, so 15 per caption (1125 samples, ~11 s).
DEFAULT_PER_CAPTION = 15
#: The kinds in the seed address (a replicate k is kind 2 + k).
_KIND_INDEX = {"cfg1": 0, "uncond": 1}


def sample_seeds(run_seed: int, iteration: int, kind: int, count: int) -> list[int]:
    """Seeds of the ``count`` samples of ``kind`` (0 cfg1, 1 uncond, 2 + k replicate k) of ``iteration``.

    Examples
    --------
    >>> a, b = sample_seeds(0, 1, 0, 50), sample_seeds(0, 1, 1, 50)
    >>> len(set(a) | set(b))
    100
    """
    return [derive_seed(run_seed, SAMPLES_TAG, iteration, kind, i) for i in range(count)]


def make_decomposition_samples(
    run_dir,
    *,
    backend=None,
    per_caption: int = DEFAULT_PER_CAPTION,
    uncond: int | None = None,
    finetune_noise: int = 0,
    noise_iteration: int = 0,
    progress=None,
    real_data: bool = True,
) -> dict:
    """Generate the missing decomposition samples of every finished iteration of ``run_dir``.

    Parameters
    ----------
    run_dir : path-like
        A run directory written by ``chain run`` with at least one finished iteration.
    backend : chain.backends.base.Backend, optional
        Built from ``run.json`` with :func:`chain.runner.make_backend` by default.
    per_caption : int
        CFG-1 samples per caption of the iteration (its distinct captions, in order).
    uncond : int, optional
        Unconditional samples per iteration (default: half as many as the CFG-1 samples; they are pooled
        over captions, so half suffices).
    finetune_noise : int
        K: also finetune K more models on the training set of ``noise_iteration`` and sample each at CFG 1.
    noise_iteration : int
        The iteration whose training set the replicates are finetuned on.
    progress : callable, optional
        ``progress(done, total)`` during each generation.
    real_data : bool, default True
        Also write the run's data set to ``RUN/real`` where the run has no real data (False: the caller measures
        the real data from a folder of its own, ``chain validate --real DIR``).

    Returns
    -------
    dict
        ``images`` generated, ``seconds`` spent generating and finetuning, ``finetunes`` made.

    Examples
    --------
    >>> make_decomposition_samples("/nonexistent")
    Traceback (most recent call last):
    ...
    qtm.errors.RunDirectoryError: run directory '/nonexistent' does not exist; give the folder that `chain run` wrote
    """
    with locked_run(run_dir) as run:
        return _make_samples(run, backend, per_caption, uncond, finetune_noise, noise_iteration, progress, real_data)


def _make_samples(run, backend, per_caption, uncond, finetune_noise, noise_iteration, progress, real_data) -> dict:
    """:func:`make_decomposition_samples` on the run read under its lock."""
    if not run.iterations:
        raise ChainError(f"{run.name}: no finished iteration to sample; run `chain run` first")
    if finetune_noise and noise_iteration not in run.iterations:
        raise ChainError(f"--finetune-noise: iteration {noise_iteration} of {run.name} is not finished")
    params = run.params
    if backend is None and "backend" not in params:
        raise ChainError(f"{run.path / 'run.json'} names no backend; it was not written by `chain run`")
    seed = int(params.get("seed", 0) or 0)
    settings = {
        "steps": int(params.get("steps", 50) or 50),
        "sampler": str(params.get("sampler", "ddim")),
        "schedule": CFGSchedule.parse("constant"),
        "cfg": 1.0,
    }
    done = {"images": 0, "seconds": 0.0, "finetunes": 0}
    began = time.perf_counter()

    def get_backend():
        nonlocal backend
        if backend is None:
            backend = make_backend(params)
        return backend

    if real_data:
        write_real_data(run)
    for t, images in run.iterations.items():
        have = read_samples(run.path, t)
        wanted = [kind for kind in ("cfg1", "uncond") if kind not in have]
        if sampled_at_cfg1(params):
            wanted = [kind for kind in wanted if kind != "cfg1"]
        if not wanted:
            continue
        get_backend().load_weights(iteration_folder(run.path, t) / WEIGHTS_DIR)
        cfg1_prompts = [c for c in dict.fromkeys(images.captions) for _ in range(per_caption)]
        for kind in wanted:
            prompts = cfg1_prompts if kind == "cfg1" else [""] * (uncond or max(len(cfg1_prompts) // 2, 2))
            seeds = sample_seeds(seed, t, _KIND_INDEX[kind], len(prompts))
            generated = backend.generate(prompts, seeds=seeds, progress=progress, **settings)
            write_image_folder(samples_folder(run.path, t, kind), generated, prompts, seeds)
            done["images"] += len(prompts)
    if finetune_noise:
        _replicates(run, get_backend, finetune_noise, noise_iteration, seed, settings, progress, done, per_caption)
    done["seconds"] = time.perf_counter() - began
    return done


def _replicates(run, get_backend, count, t, seed, settings, progress, done, per_caption) -> None:
    """Finetune ``count`` models on iteration ``t``'s training set with replicate seeds; sample each at CFG 1.

    Counts what it makes into ``done``."""
    have = read_samples(run.path, t)
    missing = [k for k in range(count) if replicate_name(k) not in have]
    if not missing:
        return
    params = run.params
    if t > 0 and float(params.get("real_fraction", 0.0) or 0.0) > 0:
        raise ChainError("--finetune-noise with --real-fraction: only iteration 0's training set can be rebuilt")
    if t > 0 and str(params.get("data_workflow") or "replace") != "replace":
        raise ChainError("--finetune-noise with an accumulating --data-workflow: only iteration 0's training set "
                         "can be rebuilt")
    if str(params.get("finetune", "base")) != "base" and t > 0:
        raise ChainError("--finetune-noise with finetune=continue: only iteration 0 (finetuned from the base) can")
    from PIL import Image

    from chain.data import load_dataset

    if t == 0:
        data = load_dataset(params["data"])
        train, captions = list(data.images), list(data.captions)
    else:
        previous = run.iterations[t - 1]
        train = []
        for file in previous.files:
            with Image.open(file) as image:
                image.load()
                train.append(image.copy())
        captions = list(previous.captions)
    backend = get_backend()
    prompts = [c for c in dict.fromkeys(run.iterations[t].captions) for _ in range(per_caption)]
    for k in missing:
        result = backend.finetune(
            train,
            captions,
            drop=float(params.get("drop", 0.0) or 0.0),
            start="base",
            seed=derive_seed(seed, REPLICATE_TAG, t, k),
        )
        done["finetunes"] += 1
        if not np.all(np.isfinite(result.losses)):
            raise ChainError(f"replicate {k} of iteration {t}: the finetuning diverged")
        seeds = sample_seeds(seed, t, 2 + k, len(prompts))
        generated = backend.generate(prompts, seeds=seeds, progress=progress, **settings)
        write_image_folder(samples_folder(run.path, t, replicate_name(k)), generated, prompts, seeds)
        done["images"] += len(prompts)
