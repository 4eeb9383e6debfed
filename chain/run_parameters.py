"""What decides a chain run: :class:`RunParameters`, the options of ``chain run``, checked once here.

Every field is a parameter of :data:`qtm.params.RUN_OPTIONS`, defined once there with its type,
range, default and help (``tests/test_chain_inputs.py`` checks that the fields are exactly those,
in that order, with those defaults). :meth:`RunParameters.resolve` is the edge: it checks every
value and every combination, fills in the defaults, and returns the plain dict that ``run.json``
records and everything below it reads without checking again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import numpy as np

from chain.backends.tiny_config import TinyConfig
from chain.data import check_data_spec
from chain.errors import ChainError
from qtm.errors import QTMError
from qtm.params import ALL_PARAMETERS, BACKEND_DEFAULTS, NETWORK_SAMPLERS, RUN_DEFAULTS, RUN_OPTIONS, check_options
from qtm.schedules import REDIFINE_DROP, REDIFINE_SCHEDULE, CFGSchedule

#: The diffusion timesteps Stable Diffusion models are trained with (their schedulers' ``num_train_timesteps``).
SD_TRAINING_TIMESTEPS = 1000


def _default(name: str):
    """``chain run``'s default of ``name``, from :mod:`qtm.params` (the one definition)."""
    return RUN_DEFAULTS.get(name, ALL_PARAMETERS[name].default)


@dataclasses.dataclass(frozen=True)
class RunParameters:
    """Everything that decides what a chain run computes (the options of ``chain run``).

    ``None`` means "the backend's default" (:data:`qtm.params.BACKEND_DEFAULTS`: ``model``, ``steps``,
    ``learning_rate``, ``train_steps``, ``batch_size``, ``resolution``, ``lora_rank``; the sd backend's
    resolution stays None, its model's own) or, for ``drop`` and ``schedule``, "0" and "constant"
    unless ``redifine`` is set. :meth:`resolve` checks every value and fills in the defaults.

    Examples
    --------
    >>> resolved = RunParameters(cfg=3.0, redifine=True, device="cpu").resolve()
    >>> resolved["drop"], resolved["schedule"], resolved["steps"]
    (0.2, 'cosine', 25)
    """

    data: str = _default("data")
    backend: str = _default("backend")
    model: str | None = None
    iterations: int = _default("iterations")
    cfg: float = _default("cfg")
    schedule: str | None = None
    drop: float | None = None
    redifine: bool = _default("redifine")
    finetune: str = _default("finetune")
    per_caption: int = _default("per_caption")
    real_fraction: float = _default("real_fraction")
    steps: int | None = None
    sampler: str = _default("sampler")
    lora_rank: int | None = None
    full_finetune: bool = _default("full_finetune")
    learning_rate: float | None = None
    train_steps: int | None = None
    batch_size: int | None = None
    resolution: int | None = None
    seed: int = _default("seed")
    device: str | None = _default("device")
    preset: str | None = _default("preset")
    text_encoder: str | None = _default("text_encoder")
    data_workflow: str = _default("data_workflow")

    def resolve(self) -> dict:
        """Check every parameter and fill in the defaults; the result is what run.json records."""
        given = {name: getattr(self, name) for name in RUN_OPTIONS if getattr(self, name) is not None}
        checked = {name: _scalar(value) for name, value in check_options(given, flags=True).items()}
        backend = checked["backend"]
        defaults = BACKEND_DEFAULTS[backend]
        check_data_spec(checked["data"])
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
        if backend == "sd":
            for name in ("preset", "text_encoder"):
                if name in checked:
                    raise ChainError(f"--{name.replace('_', '-')} is for the tiny backend; the sd backend uses its "
                                     "model's own")
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
