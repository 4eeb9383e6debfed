"""The offline ``tiny`` backend: small caption-conditioned pixel diffusion models that run on a CPU, behind the
:class:`~chain.backends.base.Backend` interface.

The model family and its presets are :mod:`chain.backends.tiny_config`; the network
:mod:`chain.backends.tiny_model`; its training and sampling loops :mod:`chain.backends.tiny_loops`; the
base ("pretrained") model, trained once and cached, :mod:`chain.backends.tiny_base`.

The empty prompt is the null condition: condition-drop finetuning and the
unconditional branch of classifier-free guidance use the very same input, as in
Stable Diffusion.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from chain.backends.base import Backend, FinetuneResult, Progress
from chain.backends.tiny_base import base_model, save_state
from chain.backends.tiny_config import TinyConfig
from chain.backends.tiny_loops import make_sampler, pin_cpu, sample, seeded_global_rng, train_diffusion
from chain.backends.tiny_model import TinyModel, images_to_tensor, tensor_to_images
from chain.dataset import Dataset
from chain.errors import ChainError
from qtm.params import BACKEND_DEFAULTS

_DEFAULTS = BACKEND_DEFAULTS["tiny"]
_WEIGHTS_FILE = "model.pt"


class TinyBackend(Backend):
    """The tiny diffusion models behind the :class:`~chain.backends.base.Backend` interface.

    Parameters
    ----------
    config : TinyConfig, optional
        Architecture and base training (:func:`~chain.backends.tiny_config.preset_config`; default the
        ``digits8`` preset); the base model is trained once per config (and training data) and cached.
    dataset : Dataset, optional
        The data set that ``config.base_data`` names, already loaded (the run's own): the base model's
        cache key and training read it instead of loading it again.
    learning_rate, train_steps, batch_size : finetuning settings, checked by the caller
        (:meth:`chain.run_parameters.RunParameters.resolve`).
    device : {"cpu", "cuda"}
    progress : callable, optional
        ``progress(done, total)`` while the base model trains (only the first time).

    Examples
    --------
    >>> backend = TinyBackend(config=TinyConfig(resolution=8, base_train_steps=2))  # doctest: +SKIP
    >>> images = backend.generate(["a handwritten digit one"], cfg=3.0, schedule=CFGSchedule(),
    ...                           seeds=[0], steps=10, sampler="ddim")  # doctest: +SKIP
    """

    name = "tiny"

    def __init__(
        self,
        *,
        config: TinyConfig | None = None,
        dataset: Dataset | None = None,
        learning_rate: float = _DEFAULTS["learning_rate"],
        train_steps: int = _DEFAULTS["train_steps"],
        batch_size: int = _DEFAULTS["batch_size"],
        device: str = "cpu",
        progress: Progress | None = None,
    ):
        self.config = config or TinyConfig()
        self.learning_rate = learning_rate
        self.train_steps = train_steps
        self.batch_size = batch_size
        self.device = torch.device(device)
        if self.device.type == "cpu":
            pin_cpu()
        torch.use_deterministic_algorithms(True)
        self.base_state, self.base_path = base_model(self.config, dataset=dataset, progress=progress)
        # Its random initial weights are replaced at once: drawing them must not move the caller's generator.
        with torch.random.fork_rng(devices=[]):
            self.model = TinyModel(self.config)
        self.model.load_state_dict(self.base_state)
        self.model.eval().to(self.device)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "config": dataclasses.asdict(self.config),
            "base_model": self.base_path.stem,
            "finetune": "full",
        }

    def finetune(self, images, captions, *, drop, start, seed, progress=None) -> FinetuneResult:
        began = time.perf_counter()
        if start == "base":
            self.model.load_state_dict(self.base_state)
        data = images_to_tensor(images, self.config.resolution, channels=self.config.image_channels).to(self.device)
        with seeded_global_rng(seed):
            losses = train_diffusion(
                self.model,
                data,
                captions,
                steps=self.train_steps,
                batch_size=self.batch_size,
                learning_rate=self.learning_rate,
                drop=drop,
                seed=seed,
                num_train_timesteps=self.config.num_train_timesteps,
                prediction_type=self.config.prediction_type,
                progress=progress,
            )
        return FinetuneResult(losses=losses, seconds=time.perf_counter() - began)

    def generate(self, captions, *, cfg, schedule, seeds, steps, sampler, progress=None) -> list:
        if len(seeds) != len(captions):
            raise ChainError(f"need one seed per caption, got {len(seeds)} seeds for {len(captions)} captions")
        probe = make_sampler(self.config.num_train_timesteps)
        probe.set_timesteps(steps)
        abar = probe.alphas_cumprod[probe.timesteps].numpy()
        scales = schedule.scales(cfg, steps, alphas_cumprod=abar)
        x = sample(
            self.model,
            captions,
            scales=scales,
            seeds=seeds,
            sampler=sampler,
            num_train_timesteps=self.config.num_train_timesteps,
            resolution=self.config.resolution,
            channels=self.config.image_channels,
            prediction_type=self.config.prediction_type,
            progress=progress,
        )
        return tensor_to_images(x)

    def save_weights(self, directory: Path) -> dict:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_state(self.model.state_dict(), directory / _WEIGHTS_FILE)
        return {"kind": "full", "file": _WEIGHTS_FILE}

    def load_weights(self, directory: Path) -> None:
        path = Path(directory) / _WEIGHTS_FILE
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except (OSError, RuntimeError) as error:
            raise ChainError(
                f"cannot read the tiny model weights {str(path)!r} ({error}); remove that iteration to redo it"
            ) from None
        self.model.load_state_dict(state)
