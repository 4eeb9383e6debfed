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
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from chain.backends.base import Backend, Progress
from chain.data import Dataset, load_dataset
from chain.errors import ChainError
from chain.rundir import ITERATION_FILE, METADATA_FILE, RunDirectory, disk_full_error
from chain.seeds import finetune_seed, image_seed, real_mix_seed, subsample_seed
from qtm.errors import QTMError
from qtm.io import atomic_path
from qtm.params import ALL_PARAMETERS, BACKEND_DEFAULTS, NETWORK_SAMPLERS, RUN_DEFAULTS, RUN_OPTIONS, check_options
from qtm.schedules import REDIFINE_DROP, REDIFINE_SCHEDULE, CFGSchedule

WEIGHTS_DIR = "weights"
#: ``chain run`` options that take a backend's own default when not given (:data:`qtm.params.BACKEND_DEFAULTS`),
#: and the two that ``--redifine`` sets.
_BY_BACKEND = (*BACKEND_DEFAULTS["tiny"], "schedule", "drop")


def _resolve(self) -> dict:
    """Check every parameter and fill in the defaults; the result is what run.json records."""
    given = {name: getattr(self, name) for name in RUN_OPTIONS if getattr(self, name) is not None}
    checked = {name: _scalar(value) for name, value in check_options(given, flags=True).items()}
    backend = checked["backend"]
    defaults = BACKEND_DEFAULTS[backend]
    if checked["redifine"] and ("drop" in checked or "schedule" in checked):
        raise ChainError("--redifine sets --drop and --schedule itself; give either --redifine or those two")
    drop = REDIFINE_DROP if checked["redifine"] else checked.get("drop", 0.0)
    schedule = REDIFINE_SCHEDULE if checked["redifine"] else checked.get("schedule", "constant")
    try:
        schedule = CFGSchedule.parse(schedule).spec
    except QTMError as error:  # qtm's message does not know the option's name
        raise ChainError(f"--schedule: {error}") from None
    if checked["full_finetune"] and "lora_rank" in checked:
        raise ChainError("give either --lora-rank or --full-finetune, not both")
    if backend == "tiny" and "lora_rank" in checked:
        raise ChainError("the tiny backend always finetunes the whole model; leave out --lora-rank")
    if checked.get("sampler", "ddim") not in NETWORK_SAMPLERS:
        raise ChainError(f"--sampler {checked['sampler']}: the chain's backends sample with "
                         f"{' or '.join(NETWORK_SAMPLERS)}; the others are the theory's (qtm map, qtm simulate)")
    if backend == "tiny" and "model" in checked:
        raise ChainError("--model is for the sd backend; the tiny backend trains its own base model")
    resolved = {name: checked.get(name, defaults.get(name)) for name in RUN_OPTIONS}
    resolved.update(
        schedule=schedule,
        drop=float(drop),
        learning_rate=float(resolved["learning_rate"]),
        lora_rank=None if checked["full_finetune"] else resolved["lora_rank"],
        device=check_device(checked.get("device")),
    )
    resolved.pop("full_finetune")
    limit = training_timesteps(backend, resolved["model"])
    if resolved["steps"] > limit:
        raise ChainError(f"--steps {resolved['steps']}: the {backend} model was trained with {limit} diffusion "
                         f"timesteps, so it samples with at most {limit} steps")
    return resolved


#: The diffusion timesteps Stable Diffusion models are trained with (their schedulers' ``num_train_timesteps``).
SD_TRAINING_TIMESTEPS = 1000


def training_timesteps(backend: str, model: str | None = None) -> int:
    """The diffusion timesteps ``backend``'s model was trained with: the most denoising steps it can sample with.

    Known without loading the model: the tiny backend's configuration, a local Stable Diffusion
    folder's scheduler configuration, else :data:`SD_TRAINING_TIMESTEPS`.

    Examples
    --------
    >>> training_timesteps("sd", "stable-diffusion-v1-5/stable-diffusion-v1-5")
    1000
    """
    if backend == "tiny":
        from chain.backends.tiny import TinyConfig

        return TinyConfig().num_train_timesteps
    config = Path(model) / "scheduler" / "scheduler_config.json" if model else None
    if config is not None and config.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            return int(json.loads(config.read_text())["num_train_timesteps"])
    return SD_TRAINING_TIMESTEPS


def _scalar(value):
    """A run parameter as run.json records it: a plain float, not a 0-d array."""
    if isinstance(value, np.ndarray):
        if value.ndim:
            raise ChainError(f"a chain run takes one value per option, got {value.tolist()}")
        return float(value)
    return value


def _run_parameter_fields() -> list:
    fields = []
    for name in RUN_OPTIONS:
        p = ALL_PARAMETERS[name]
        default = None if name in _BY_BACKEND else RUN_DEFAULTS.get(name, p.default)
        fields.append((name, object, dataclasses.field(default=default)))
    return fields


_RUN_PARAMETERS_DOC = """Everything that decides what a chain run computes (the options of ``chain run``).

    Examples
    --------
    >>> resolved = RunParameters(cfg=3.0, redifine=True, device="cpu").resolve()
    >>> resolved["drop"], resolved["schedule"], resolved["steps"]
    (0.2, 'cosine', 25)
    """

#: Everything that decides what a chain run computes: the options of ``chain run``, one field per
#: parameter of :data:`qtm.params.RUN_OPTIONS` (a frozen dataclass derived from the parameter model).
#: ``None`` means "the backend's default" (:data:`qtm.params.BACKEND_DEFAULTS`; the sd backend's
#: resolution stays None, its model's own) or, for ``drop`` and ``schedule``, "0" and "constant"
#: unless ``redifine`` is set. :meth:`resolve` checks every value and fills in the defaults.
RunParameters = dataclasses.make_dataclass(
    "RunParameters", _run_parameter_fields(), frozen=True,
    namespace={"resolve": _resolve, "__module__": __name__, "__doc__": _RUN_PARAMETERS_DOC},
)


def check_device(device: str | None) -> str:
    """The torch device to run on: the one asked for if it exists, else CUDA when present, else the CPU.

    Examples
    --------
    >>> check_device("cpu")
    'cpu'
    """
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ChainError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
        try:
            torch.device(device)
        except RuntimeError:
            raise ChainError(f"--device {device!r} is not a device name; use cuda, cuda:N or cpu") from None
        index = torch.device(device).index
        if index is not None and index >= torch.cuda.device_count():
            raise ChainError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) here")
        return device
    if device == "cpu":
        return device
    raise ChainError(f"--device {device!r} is not supported; use cpu, cuda or cuda:N")


class Reporter:
    """How a run shows its progress; this one is silent (the CLI draws rich progress bars)."""

    @contextlib.contextmanager
    def task(self, description: str, total: int):
        """A context giving a ``progress(done, total)`` callback for one phase."""
        yield lambda done, total: None

    def line(self, text: str) -> None:
        """One line of news (the summary of a finished iteration)."""


def make_backend(parameters: dict, *, progress: Progress | None = None) -> Backend:
    """Build the backend that ``parameters`` (resolved) name; ``progress`` follows a base-model training."""
    if parameters["backend"] == "tiny":
        from chain.backends.tiny import TinyBackend, preset_config

        config = preset_config(parameters.get("preset"), text_encoder=parameters.get("text_encoder"),
                               resolution=parameters["resolution"], data=parameters["data"])
        return TinyBackend(
            config=config,
            learning_rate=parameters["learning_rate"],
            train_steps=parameters["train_steps"],
            batch_size=parameters["batch_size"],
            device=parameters["device"],
            progress=progress,
        )
    for name in ("preset", "text_encoder"):
        if parameters.get(name) is not None:
            raise ChainError(f"--{name.replace('_', '-')} is for the tiny backend; the sd backend uses its model's own")
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
    data = load_dataset(params["data"])
    run = RunDirectory(run_dir)
    run.check(params)  # refuse a mismatch before any slow work (and before the folder is touched)
    try:
        with run.lock():
            run.check(params)  # again, now that no other process can be writing run.json
            if backend is None:
                with reporter.task("preparing the base model (tiny: trained once, then cached)", 1) as progress:
                    backend = make_backend(params, progress=progress)
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
    for t in range(params["iterations"]):
        if run.is_complete(t):
            records.append(_read_record(run, t))
            continue
        try:
            record = _iteration(run, t, params, data, backend, reporter, model_from)
        except BaseException:
            # An interrupted iteration leaves nothing that could pass for a result.
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


def _iteration(run, t, params, data, backend, reporter, model_from) -> dict:
    began = time.perf_counter()
    folder = run.start_iteration(t)
    record = {"iteration": t, "status": "running"}
    run.write_iteration_record(t, record)

    images, captions, real_used, sources = _training_set(run, t, params, data)
    start = "base" if params["finetune"] == "base" or t == 0 else "continue"
    if start == "continue" and model_from != t - 1:
        backend.load_weights(run.iteration_dir(t - 1) / WEIGHTS_DIR)
    seed = finetune_seed(params["seed"], t)
    with reporter.task(f"iteration {t}: finetuning", params["train_steps"]) as progress:
        result = backend.finetune(images, captions, drop=params["drop"], start=start, seed=seed, progress=progress)
    if not np.all(np.isfinite(result.losses)):
        raise ChainError(f"iteration {t}: the finetuning diverged (its loss became inf or NaN); "
                         "lower --learning-rate and rerun the same command to resume")
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
    for image, caption, seed_i, i, j in zip(generated, gen_captions, seeds, caption_index, copies, strict=True):
        name = f"{i:06d}-{j}.png"
        with atomic_path(folder / name) as tmp:
            image.save(tmp, format="PNG")
        rows.append({"file_name": name, "caption": caption, "seed": seed_i, "caption_index": i,
                     "cfg": params["cfg"], "schedule": params["schedule"]})
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


def _training_set(run: RunDirectory, t: int, params: dict, data: Dataset):
    """D_t: images, captions, how many are real, and where each comes from (the iteration record's ``training_set``).

    The real data at t = 0. Later, by ``--data-workflow``: iteration t-1's images (``replace``); the
    real data and every earlier iteration's images (``accumulate``); or as many of those as one
    iteration generates, drawn without replacement (``accumulate-subsample``). Each iteration's
    images carry their real-data share (``--real-fraction``: that many of them replaced by the
    real image of the same caption), the same whichever later iteration uses them. A source is
    ``real:INDEX`` (the dataset's image) or the image's file name relative to the run directory.
    """
    real = (list(data.images), list(data.captions), [f"real:{i}" for i in range(len(data))])
    if t == 0:
        return (*real[:2], len(data), real[2])
    workflow = params["data_workflow"]
    if workflow == "replace":
        images, captions, sources = _generation(run, t - 1, params, data)
    else:
        sets = [real] + [_generation(run, s, params, data) for s in range(t)]
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
