"""The chain loop: finetune on D_t, generate D_{t+1}, repeat; resumable at any iteration.

Iteration ``t`` finetunes on the real data (``t = 0``) or on the images that
iteration ``t - 1`` generated, with the same captions (optionally with a fraction
of them replaced by their real images), starting from the base model
(``finetune="base"``, the reference setup) or from the previous iteration's model
(``finetune="continue"``), and then generates ``per_caption`` images per caption of
the data set with guidance ``cfg`` shaped per step by ``schedule``.

Everything an iteration needs is read back from the run directory, so a run
resumed after a crash computes exactly what an uninterrupted run computes.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import numpy as np

from chain.backends.base import Backend, Progress
from chain.backends.tiny_config import DEFAULT_PRESET, PRESETS
from chain.data import load_dataset
from chain.dataset import Dataset
from chain.errors import ChainError
from chain.run_parameters import RunParameters
from chain.rundir import ITERATION_FILE, METADATA_FILE, RunDirectory, disk_full_error
from chain.seeds import finetune_seed, image_seed, real_mix_seed, subsample_seed
from qtm.errors import quoted
from qtm.io import atomic_path
from qtm.params import BACKEND_DEFAULTS
from qtm.schedules import CFGSchedule

WEIGHTS_DIR = "weights"


class Reporter:
    """How a run shows its progress; this one is silent (the CLI draws rich progress bars)."""

    @contextlib.contextmanager
    def task(self, description: str, total: int):
        """A context giving a ``progress(done, total)`` callback for one phase."""
        yield lambda done, total: None

    def line(self, text: str) -> None:
        """One line of news (the summary of a finished iteration)."""


def make_backend(parameters: dict, *, data: Dataset | None = None, progress: Progress | None = None) -> Backend:
    """Build the backend that ``parameters`` (resolved: :meth:`RunParameters.resolve`) name.

    ``data`` is the run's data set when the caller has loaded it (the tiny RGB models learn their
    base model from it, so it is not read again); ``progress`` follows a base-model training.
    """
    if parameters["backend"] == "tiny":
        from chain.backends.tiny import TinyBackend
        from chain.backends.tiny_config import preset_config

        config = preset_config(parameters.get("preset"), text_encoder=parameters.get("text_encoder"),
                               resolution=parameters["resolution"], data=parameters["data"])
        return TinyBackend(
            config=config,
            dataset=data,
            learning_rate=parameters["learning_rate"],
            train_steps=parameters["train_steps"],
            batch_size=parameters["batch_size"],
            device=parameters["device"],
            progress=progress,
        )
    # Imported only when asked for: the Stable Diffusion pipelines are slow to import.
    from chain.backends.sd import StableDiffusionBackend

    return StableDiffusionBackend(
        parameters["model"],
        lora_rank=parameters["lora_rank"],
        full_finetune=parameters["lora_rank"] is None,
        learning_rate=parameters["learning_rate"],
        train_steps=parameters["train_steps"],
        batch_size=parameters["batch_size"],
        resolution=parameters["resolution"],
        device=parameters["device"],
    )


def run_chain(
    run_dir,
    parameters: RunParameters,
    *,
    reporter: Reporter | None = None,
    backend: Backend | None = None,
    data: Dataset | None = None,
) -> list[dict]:
    """Run (or resume) the chain in ``run_dir``; return the iteration records, finished ones included.

    Parameters
    ----------
    run_dir : path
        The run directory; created if missing, resumed if it holds a run made with the same parameters.
    parameters : RunParameters
    reporter : Reporter, optional
        Progress display.
    backend : Backend, optional
        A ready backend (otherwise built from ``parameters``).
    data : Dataset, optional
        The data set ``parameters.data`` names, already loaded (otherwise loaded here).

    Examples
    --------
    >>> import tempfile
    >>> records = run_chain(Path(tempfile.mkdtemp()) / "run",
    ...                     RunParameters(data="digits:20", iterations=1, train_steps=2, steps=2))  # doctest: +SKIP
    >>> records[0]["status"]  # doctest: +SKIP
    'complete'
    """
    reporter = reporter or Reporter()
    params = parameters.resolve()
    if params["backend"] == "tiny" and params["device"] == "cpu":
        from chain.backends.tiny_loops import cpu_threads

        cpu_threads()  # refuse a bad CHAIN_THREADS before the data is loaded and the run directory made
    if data is None:
        with reporter.task("loading the data set", 1):
            data = load_dataset(params["data"])
    run = RunDirectory(run_dir)
    run.check(params)  # refuse a mismatch before any slow work (and before the folder is touched)
    warning = preset_warning(params, data)
    if warning:
        reporter.line(f"chain: warning: {warning}")
    try:
        with run.lock():
            run.check(params)  # again, now that no other process can be writing run.json
            if backend is None:
                with reporter.task("preparing the base model (tiny: trained once, then cached)", 1) as progress:
                    backend = make_backend(params, data=data, progress=progress)
            run.open(
                params,
                seed=params["seed"],
                extra={"device": params["device"], "backend": backend.describe(), "data_size": len(data)},
            )
            return _loop(run, params, data, backend, reporter)
    except OSError as error:
        full = disk_full_error(error, run.path)
        if full is None:
            raise
        raise full from None


def _loop(run: RunDirectory, params: dict, data: Dataset, backend: Backend, reporter: Reporter) -> list[dict]:
    _repair(run, params, reporter)
    records = []
    model_from = None  # the iteration whose finetuned model the backend holds now
    generations = {}  # the earlier iterations' training images, each decoded once (accumulate)
    for t in range(params["iterations"]):
        if run.is_complete(t):
            records.append(_read_record(run, t))
            continue
        try:
            record = _iteration(run, t, params, data, backend, reporter, model_from, generations)
        except BaseException:
            # An interrupted iteration leaves nothing that could pass for a result; one whose record was written
            # complete before the interruption landed is a result, and stays.
            if not run.is_complete(t):
                run.discard(t)
            raise
        model_from = t
        records.append(record)
        reporter.line(_summary(record, params))
    return records


def _repair(run: RunDirectory, params: dict, reporter: Reporter) -> None:
    """Redo from the first finished iteration whose images are damaged (a deleted or truncated file)."""
    for t in run.completed():
        if t >= params["iterations"]:
            break
        problem = run.damaged(t)
        if problem is not None:
            reporter.line(f"chain: warning: {problem}; redoing iteration {t} and the later ones")
            run.invalidate(t)
            return


def _iteration(run, t, params, data, backend, reporter, model_from, generations) -> dict:
    began = time.perf_counter()
    folder = run.start_iteration(t)
    record = {"iteration": t, "status": "running"}
    run.write_iteration_record(t, record)

    with reporter.task(f"iteration {t}: reading the training set", 1):
        images, captions, real_used, sources = _training_set(run, t, params, data, generations=generations)
    start = "base" if params["finetune"] == "base" or t == 0 else "continue"
    if start == "continue" and model_from != t - 1:
        backend.load_weights(run.iteration_dir(t - 1) / WEIGHTS_DIR)
    seed = finetune_seed(params["seed"], t)
    with reporter.task(f"iteration {t}: finetuning", params["train_steps"]) as progress:
        result = backend.finetune(images, captions, drop=params["drop"], start=start, seed=seed, progress=progress)
    if not np.all(np.isfinite(result.losses)):
        raise ChainError(diverged_advice(t, params, run.path))
    with reporter.task(f"iteration {t}: saving the weights", 1):
        weights = backend.save_weights(folder / WEIGHTS_DIR)

    gen_captions, seeds, caption_index, copies = [], [], [], []
    for i, caption in enumerate(data.captions):
        for j in range(params["per_caption"]):
            gen_captions.append(caption)
            seeds.append(image_seed(params["seed"], t, i, j))
            caption_index.append(i)
            copies.append(j)
    gen_began = time.perf_counter()
    with reporter.task(f"iteration {t}: generating", len(gen_captions)) as progress:
        generated = backend.generate(
            gen_captions,
            cfg=params["cfg"],
            schedule=CFGSchedule.parse(params["schedule"]),
            seeds=seeds,
            steps=params["steps"],
            sampler=params["sampler"],
            progress=progress,
        )
    gen_seconds = time.perf_counter() - gen_began

    rows = []
    with reporter.task(f"iteration {t}: writing the images", len(generated)) as progress:
        for image, caption, seed_i, i, j in zip(generated, gen_captions, seeds, caption_index, copies, strict=True):
            name = f"{i:06d}-{j}.png"
            with atomic_path(folder / name) as tmp:
                image.save(tmp, format="PNG")
            rows.append({"file_name": name, "caption": caption, "seed": seed_i, "caption_index": i,
                         "cfg": params["cfg"], "schedule": params["schedule"]})
            progress(len(rows), len(generated))
        with atomic_path(folder / METADATA_FILE) as tmp:
            tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))

    record = {
        "iteration": t,
        "status": "complete",
        "finetune": {
            "start": start,
            "seed": seed,
            "train_images": len(images),
            "real_images": real_used,
            "data_workflow": params["data_workflow"],
            "training_set": sources,
            "seconds": result.seconds,
            "losses": result.losses,
            "final_loss": float(np.mean(result.losses[-10:])) if result.losses else None,
        },
        "generate": {"images": len(rows), "seconds": gen_seconds},
        "pixel_std": pixel_std(generated),
        "weights": weights,
        "seconds": time.perf_counter() - began,
    }
    run.write_iteration_record(t, record)
    return record


def diverged_advice(t: int, params: dict, run_dir: Path) -> str:
    """What to say when iteration ``t``'s finetuning diverged: the same command would diverge again (the run
    is deterministic) and the run directory keeps its learning rate, so the advice is a new directory with a
    lower rate (the backend's default, or a tenth of a rate already below it).

    Examples
    --------
    >>> print(diverged_advice(0, {"backend": "tiny", "learning_rate": 0.5}, Path("runs/a")))  # doctest: +ELLIPSIS
    iteration 0: the finetuning diverged (its loss became inf or NaN) at --learning-rate 0.5; ... --learning-rate 0.001
    """
    rate, default = params["learning_rate"], BACKEND_DEFAULTS[params["backend"]]["learning_rate"]
    lower = default if rate > default else rate / 10
    return (f"iteration {t}: the finetuning diverged (its loss became inf or NaN) at --learning-rate {rate:g}; "
            f"{str(run_dir)!r} keeps the rate it was made with, so rerun in a new run directory (or delete this "
            f"one) with a lower rate, e.g. --learning-rate {lower:g}")


def preset_warning(params: dict, data: Dataset) -> str | None:
    """Why the tiny backend's grey 8-pixel preset (``digits8``, the default) does not fit ``data``, or None.

    That preset turns every image into 8x8 grey: a colour set or one of another size loses what the
    run was meant to study, so the warning names the rgb presets.

    Examples
    --------
    >>> from PIL import Image
    >>> data = Dataset(images=[Image.new("RGB", (7, 7))], captions=["a"], file_names=["a.png"], source="emoji:7")
    >>> print(preset_warning({"backend": "tiny", "preset": None}, data))  # doctest: +ELLIPSIS
    --preset digits8 (the default) turns the 7x7 RGB images of 'emoji:7' into 8x8 grey; give --preset rgb16, ...
    """
    if params["backend"] != "tiny" or params.get("preset") not in (None, DEFAULT_PRESET):
        return None
    shapes = sorted({f"{image.width}x{image.height} {image.mode}" for image in data.images})
    if shapes == ["8x8 L"]:
        return None
    kinds = " and ".join(shapes) if len(shapes) <= 2 else f"{len(shapes)} kinds of"
    *others, last = (name for name in PRESETS if name != DEFAULT_PRESET)
    default = " (the default)" if params.get("preset") is None else ""
    return (f"--preset {DEFAULT_PRESET}{default} turns the {kinds} images of {quoted(data.source)} into 8x8 grey; "
            f"give --preset {', '.join(others)} or {last} for colour images of that side")


def _training_set(run: RunDirectory, t: int, params: dict, data: Dataset, *, generations: dict | None = None):
    """D_t: images, captions, how many are real, and where each comes from (the iteration record's ``training_set``).

    The real data at t = 0. Later, by ``--data-workflow``: iteration t-1's images (``replace``); the
    real data and every earlier iteration's images (``accumulate``); or as many of those as one
    iteration generates, drawn without replacement (``accumulate-subsample``). Each iteration's
    images carry their real-data share (``--real-fraction``: that many of them replaced by the
    real image of the same caption), the same whichever later iteration uses them. A source is
    ``real:INDEX`` (the dataset's image) or the image's file name relative to the run directory.

    ``generations`` keeps, under the accumulating workflows, each earlier iteration's part as it was
    read back from the run directory the first time, so that later iterations do not decode it
    again; a resumed run starts with it empty and reads the same files.
    """
    real = (list(data.images), list(data.captions), [f"real:{i}" for i in range(len(data))])
    if t == 0:
        return (*real[:2], len(data), real[2])
    workflow = params["data_workflow"]
    if workflow == "replace":
        images, captions, sources = _generation(run, t - 1, params, data)
    else:
        if generations is None:
            generations = {}
        for s in range(t):
            if s not in generations:
                generations[s] = _generation(run, s, params, data)
        sets = [real] + [generations[s] for s in range(t)]
        images, captions, sources = ([item for part in sets for item in part[k]] for k in range(3))
        if workflow == "accumulate-subsample":
            budget = len(run.read_metadata(t - 1))
            rng = np.random.default_rng(subsample_seed(params["seed"], t))
            chosen = np.sort(rng.choice(len(images), size=budget, replace=False))
            images, captions, sources = ([part[k] for k in chosen] for part in (images, captions, sources))
    return images, captions, sum(source.startswith("real:") for source in sources), sources


def _generation(run: RunDirectory, s: int, params: dict, data: Dataset):
    """Iteration ``s``'s images, captions and sources, with the real data mixed in as D_(s+1) takes it."""
    from PIL import Image

    rows = run.read_metadata(s)
    images = []
    for row in rows:
        with Image.open(run.iteration_dir(s) / row["file_name"]) as image:
            image.load()
            images.append(image.copy())
    captions = [row["caption"] for row in rows]
    folder = run.iteration_dir(s).relative_to(run.path)
    sources = [(folder / row["file_name"]).as_posix() for row in rows]
    count = round(params["real_fraction"] * len(rows))
    if count:
        rng = np.random.default_rng(real_mix_seed(params["seed"], s + 1))
        for k in rng.choice(len(rows), size=count, replace=False):
            images[k] = data.images[rows[k]["caption_index"]]
            sources[k] = f"real:{rows[k]['caption_index']}"
    return images, captions, sources


def pixel_std(images) -> float:
    """Mean over pixels of the standard deviation across images (grey, 0..1): a quick diversity read-out.

    Examples
    --------
    >>> from PIL import Image
    >>> pixel_std([Image.new("L", (2, 2), 0), Image.new("L", (2, 2), 255)])
    0.5
    """
    stack = np.stack([np.asarray(image.convert("L"), dtype=float) / 255.0 for image in images])
    return float(stack.std(axis=0).mean())


def _read_record(run: RunDirectory, t: int) -> dict:
    return json.loads((run.iteration_dir(t) / ITERATION_FILE).read_text())


def _summary(record: dict, params: dict) -> str:
    fine, gen = record["finetune"], record["generate"]
    return (
        f"iteration {record['iteration'] + 1}/{params['iterations']}: finetuned {len(fine['losses'])} steps "
        f"on {fine['train_images']} images (loss {fine['final_loss']:.4f}) in {fine['seconds']:.1f} s, "
        f"generated {gen['images']} images in {gen['seconds']:.1f} s, pixel std {record['pixel_std']:.3f}"
    )


def completed_iterations(run_dir) -> list[int]:
    """The finished iterations of the run in ``run_dir``.

    Examples
    --------
    >>> completed_iterations("runs/does-not-exist")
    []
    """
    return RunDirectory(Path(run_dir)).completed()
