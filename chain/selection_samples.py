"""The samples the selection curve of ``chain validate --selection-curve`` needs, generated into the run directory.

For the base model and every finished iteration's model, and for each peak CFG value ``w`` of the curve, the
model is sampled with the run's sampler, steps and CFG schedule shape (``RUN/selection/<model>/cfg-<w>``). The
samples at ``w`` are *paired* with the model's CFG-1 samples: for each caption, the first ``paired`` (caption,
seed) pairs of the CFG-1 folder, in its order, are drawn again at ``w`` (the layout is :mod:`qtm.rundir`'s). The
same initial noise at both scales makes the selection differential ``S(w) = stat(w) - stat(1)`` far less noisy
than two independent sets would, so a few images per caption and scale suffice, and the curve costs about what
the decomposition's sampling costs (``benchmarks/bench_selection_curve.py``).

An iteration's CFG-1 and unconditional samples are the decomposition's (``iter-NNN/samples``; a run sampled at
CFG 1 has its own images as CFG-1 samples); the base model's are drawn here (``RUN/selection/base/cfg1`` and
``uncond``) with the decomposition's counts. ``RUN/selection/law.json`` records the sampler law the samples were
drawn with (sampler, steps, CFG schedule and the backend's scheduler configuration), so that ``validate``
predicts with the scheduler the backend really steps with, without importing ``chain``.

Every folder appears under its final name only when complete; existing folders are kept, so an interrupted call
resumes where it stopped and a second call generates nothing.
"""

from __future__ import annotations

import json
import time

from chain.errors import ChainError
from chain.reference import locked_run, write_image_folder
from chain.runner import WEIGHTS_DIR, make_backend
from qtm.io import write_json
from qtm.random import derive_seed
from qtm.rundir import (
    METADATA_FILE,
    SELECTION_FOLDER,
    SELECTION_LAW_FILE,
    iteration_folder,
    read_samples,
    read_selection,
    sampled_at_cfg1,
    selection_folder,
    selection_kind,
)
from qtm.schedules import CFGSchedule

#: Stream tag of the base model's CFG-1 and unconditional samples (then kind, image).
SELECTION_TAG = 0x5E1C
#: The scheduler fields that decide the sampler law (:class:`qtm.solvers.SchedulerConfig`'s names).
LAW_FIELDS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type",
              "timestep_spacing", "steps_offset", "set_alpha_to_one")


def make_selection_samples(
    run_dir, cfgs, *, per_caption: int, paired: int, backend=None, progress=None
) -> dict:
    """Generate the missing selection samples of the base model and every finished iteration of ``run_dir``.

    Parameters
    ----------
    run_dir : path-like
        A run directory written by ``chain run`` with at least one finished iteration.
    cfgs : sequence of float
        The peak CFG values of the curve (checked by the caller: positive, distinct).
    per_caption : int
        The base model's CFG-1 samples per caption (half as many unconditional): the decomposition's count.
    paired : int
        Samples per caption at each CFG value, paired with the first ``paired`` CFG-1 samples of the caption.
    backend : chain.backends.base.Backend, optional
        Holding the base model; built from ``run.json`` with :func:`chain.runner.make_backend` by default.
    progress : callable, optional
        ``progress(done, total)`` during each generation.

    Returns
    -------
    dict
        ``images`` generated, ``seconds`` spent, ``skipped``: iterations without CFG-1 samples to pair with.

    Examples
    --------
    >>> make_selection_samples("/nonexistent", [2.0], per_caption=6, paired=3)
    Traceback (most recent call last):
    ...
    qtm.errors.RunDirectoryError: run directory '/nonexistent' does not exist; give the folder that `chain run` wrote
    """
    with locked_run(run_dir) as run:
        return _make_samples(run, cfgs, per_caption, paired, backend, progress)


def _make_samples(run, cfgs, per_caption, paired, backend, progress) -> dict:
    """:func:`make_selection_samples` on the run read under its lock."""
    if not run.iterations:
        raise ChainError(f"{run.name}: no finished iteration to sample; run `chain run` first")
    params = run.params
    if backend is None and "backend" not in params:
        raise ChainError(f"{run.path / 'run.json'} names no backend; it was not written by `chain run`")
    backend = backend if backend is not None else make_backend(params)
    seed = int(params.get("seed", 0) or 0)
    settings = {"steps": int(params.get("steps", 50) or 50), "sampler": str(params.get("sampler", "ddim"))}
    schedule = CFGSchedule.parse(str(params.get("schedule", "constant") or "constant"))
    done = {"images": 0, "seconds": 0.0, "skipped": []}
    began = time.perf_counter()
    _write_law(run.path, backend, settings, schedule)

    def generate(folder, prompts, seeds, cfg, shape):
        images = backend.generate(prompts, seeds=seeds, cfg=cfg, schedule=shape, progress=progress, **settings)
        write_image_folder(folder, images, prompts, seeds, cfg=cfg)
        done["images"] += len(prompts)

    def at_each_cfg(t, source):
        have = read_selection(run.path, t)
        missing = [w for w in cfgs if float(w) not in have]
        if missing:
            prompts, seeds = _paired(source, paired)
            for w in missing:
                generate(selection_folder(run.path, t, selection_kind(w)), prompts, seeds, float(w), schedule)

    # The base model first: the backend holds it until an iteration's weights are loaded.
    constant = CFGSchedule.parse("constant")
    captions = list(dict.fromkeys(run.iterations[min(run.iterations)].captions))
    have = read_selection(run.path, -1)
    for index, kind in enumerate(("cfg1", "uncond")):
        if kind not in have:
            count = len(captions) * per_caption
            prompts = [c for c in captions for _ in range(per_caption)] if kind == "cfg1" else [""] * max(count // 2, 2)
            seeds = [derive_seed(seed, SELECTION_TAG, index, i) for i in range(len(prompts))]
            generate(selection_folder(run.path, -1, kind), prompts, seeds, 1.0, constant)
    at_each_cfg(-1, selection_folder(run.path, -1, "cfg1"))
    for t, images in run.iterations.items():
        source = images if sampled_at_cfg1(params) else read_samples(run.path, t).get("cfg1")
        if source is None:
            done["skipped"].append(t)
            continue
        if all(float(w) in read_selection(run.path, t) for w in cfgs):
            continue
        backend.load_weights(iteration_folder(run.path, t) / WEIGHTS_DIR)
        at_each_cfg(t, source.path)
    done["seconds"] = time.perf_counter() - began
    return done


def _paired(folder, paired: int) -> tuple[list[str], list[int]]:
    """The first ``paired`` (caption, seed) pairs of each caption of the image folder ``folder``, in its order."""
    prompts, seeds, taken = [], [], {}
    for number, line in enumerate((folder / METADATA_FILE).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raise ChainError(f"{folder / METADATA_FILE}: line {number} is not a JSON object; the samples are "
                             f"damaged: delete {folder} and rerun chain validate to make them again")
        caption = str(record.get("caption", ""))
        if record.get("seed") is None:
            raise ChainError(f"{folder / METADATA_FILE}: an image without a seed; the selection curve pairs seeds")
        if taken.get(caption, 0) < paired:
            taken[caption] = taken.get(caption, 0) + 1
            prompts.append(caption)
            seeds.append(int(record["seed"]))
    return prompts, seeds


def _write_law(run_path, backend, settings: dict, schedule: CFGSchedule) -> None:
    """``RUN/selection/law.json``: the sampler, steps, schedule and the backend's scheduler configuration."""
    from diffusers import DDIMScheduler

    if backend.name == "tiny":
        from chain.backends.tiny_loops import make_sampler

        config = make_sampler(backend.config.num_train_timesteps, prediction_type=backend.config.prediction_type).config
    else:  # the sd backend steps with a DDIM scheduler made from its pipeline's configuration
        config = DDIMScheduler.from_config(backend.pipe.scheduler.config).config
    law = {
        **settings,
        "schedule": schedule.spec,
        "scheduler": {name: config[name] for name in LAW_FIELDS if name in config},
    }
    path = run_path / SELECTION_FOLDER / SELECTION_LAW_FILE
    try:
        same = json.loads(path.read_bytes()) == json.loads(json.dumps(law))
    except (OSError, ValueError):  # missing, or damaged: written again
        same = False
    if not same:
        write_json(path, law)
