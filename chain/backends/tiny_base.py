"""The tiny backend's base ("pretrained") model: trained once from scratch, with the condition dropped at
random so that the unconditional branch exists, and cached on disk under ``$CHAIN_TINY_CACHE`` (default
``~/.cache/chain-of-diffusion``), keyed by a hash of its configuration (and of its training data's content).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import NamedTuple

import torch

from chain.backends.base import Progress, disk_full_as_os_error
from chain.backends.tiny_config import DIGITS_BASE, TinyConfig
from chain.backends.tiny_loops import pin_cpu, seeded_global_rng, train_diffusion
from chain.backends.tiny_model import TinyModel, images_to_tensor
from chain.data import digits_arrays, load_dataset
from chain.dataset import Dataset
from qtm.io import atomic_path


class BaseModel(NamedTuple):
    """A base model's state dict and the cache file it was read from or written to."""

    state: dict
    path: Path


def cache_dir() -> Path:
    """Where trained base models are kept (``$CHAIN_TINY_CACHE`` or ``~/.cache/chain-of-diffusion``)."""
    return Path(os.environ.get("CHAIN_TINY_CACHE") or Path.home() / ".cache" / "chain-of-diffusion")


def base_model(config: TinyConfig, *, dataset: Dataset | None = None, progress: Progress | None = None) -> BaseModel:
    """The base model of ``config``: read from the cache, or trained once and cached.

    Parameters
    ----------
    config : TinyConfig
    dataset : Dataset, optional
        The data set that ``config.base_data`` names, when the caller has loaded it already (a run's own
        data set): it is not read again. Read from ``config.base_data`` when not given; not needed for
        the digits.
    progress : callable, optional
        ``progress(done, total)`` while the base model trains (only the first time).
    """
    training_set = None if config.base_data == DIGITS_BASE else base_training_set(config, dataset)
    path = base_model_path(config, training_set)
    if path.exists():
        try:
            return BaseModel(torch.load(path, map_location="cpu", weights_only=True), path)
        except (OSError, RuntimeError):
            pass  # a damaged cache file is simply retrained and replaced
    state = train_base_model(config, training_set=training_set, progress=progress)
    save_state(state, path)
    return BaseModel(state, path)


def base_model_path(config: TinyConfig, training_set: tuple[torch.Tensor, list[str]] | None = None) -> Path:
    """The cache file of the base model: named by the config's key and, unless it learns from the digits,
    by a hash of its training set's content (:func:`base_training_set`; a folder's images can change under
    the same name)."""
    if config.base_data == DIGITS_BASE:
        return cache_dir() / f"tiny-{config.key()}.pt"
    images, captions = training_set if training_set is not None else base_training_set(config)
    digest = hashlib.sha256(images.numpy().tobytes())
    digest.update(json.dumps(captions).encode())
    return cache_dir() / f"tiny-{config.key()}-{digest.hexdigest()[:12]}.pt"


def base_training_set(config: TinyConfig, dataset: Dataset | None = None) -> tuple[torch.Tensor, list[str]]:
    """The base model's training images, ``(N, C, R, R)`` in [-1, 1], and their captions.

    The digits, or ``dataset`` (the data set ``config.base_data`` names; read from there when not given).
    """
    if config.base_data == DIGITS_BASE:
        images, captions = digits_arrays(resolution=config.resolution)
        data = torch.from_numpy(images)[:, None] * 2.0 - 1.0
        return data.expand(-1, config.image_channels, -1, -1).contiguous(), captions
    if dataset is None:
        dataset = load_dataset(config.base_data)
    return images_to_tensor(dataset.images, config.resolution, channels=config.image_channels), list(dataset.captions)


def save_state(state: dict, path: Path) -> None:
    """Save a state dict atomically, with the same bytes for the same weights.

    torch names the archive inside the file after the file name, which here would
    be the random temporary name; through a file object the name is always "archive".
    An interrupt or a write error inside ``torch.save`` leaves its archive writer half-way, and closing it
    raises a ``RuntimeError`` that hides the cause: the cause is raised instead, so Ctrl-C stays an
    interrupt and a full disk stays an ``OSError`` (also where torch's writer reports it without a cause).
    """
    needed = sum(value.nbytes for value in state.values() if isinstance(value, torch.Tensor))
    with atomic_path(path) as tmp, open(tmp, "wb") as stream, disk_full_as_os_error(path, needed=needed):
        try:
            torch.save(state, stream)
        except RuntimeError as error:
            if isinstance(error.__context__, KeyboardInterrupt | OSError):
                raise error.__context__ from None
            raise


def train_base_model(
    config: TinyConfig,
    *,
    training_set: tuple[torch.Tensor, list[str]] | None = None,
    progress: Progress | None = None,
) -> dict:
    """Train the base model from scratch on its data set, by default all 1797 digits (deterministic for a config).

    ``training_set`` is :func:`base_training_set`'s result when the caller has it already.
    """
    pin_cpu()
    data, captions = training_set if training_set is not None else base_training_set(config)
    with seeded_global_rng(config.base_seed):
        model = TinyModel(config)
        train_diffusion(
            model,
            data,
            captions,
            steps=config.base_train_steps,
            batch_size=config.base_batch_size,
            learning_rate=config.base_learning_rate,
            drop=config.base_drop,
            seed=config.base_seed,
            num_train_timesteps=config.num_train_timesteps,
            prediction_type=config.prediction_type,
            ema=config.base_ema,
            progress=progress,
        )
    return copy.deepcopy(model.state_dict())
