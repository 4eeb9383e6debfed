"""The offline ``tiny`` backend: small caption-conditioned pixel diffusion models that run on a CPU.

One model family, chosen by a preset (:data:`PRESETS`, ``chain run --preset``):

``digits8`` (the default)
    A diffusers :class:`~diffusers.UNet2DModel` on grey 8×8 images whose class embedding
    is fed by the hashed-word encoder (:class:`chain.text_encoders.HashTextEncoder`: each
    word hashed into one of ``vocabulary`` buckets, the bucket embeddings averaged). Its
    base model is trained on scikit-learn's handwritten digits, captioned like
    ``"a handwritten digit seven"``, whatever the run's data.
``rgb16``, ``rgb32``, ``rgb64``
    A :class:`~diffusers.UNet2DConditionModel` on RGB images of that side, narrow, with
    self- and cross-attention only at a low resolution (8×8 at 32 and 64 px). The caption's
    per-token states are the cross-attention context and its pooled vector the class
    embedding; they come from the frozen MiniLM (``--text-encoder minilm``, the default
    here) or from hashed words (``hashed``, no download). Its base model is trained on the
    run's own data set.

The empty prompt is the null condition: condition-drop finetuning and the
unconditional branch of classifier-free guidance use the very same input, as in
Stable Diffusion. The base ("pretrained") model is trained once from scratch, with
the condition dropped at random so that the unconditional branch exists, and cached
on disk under ``$CHAIN_TINY_CACHE`` (default ``~/.cache/chain-of-diffusion``),
keyed by a hash of its configuration (and of its training data's content).

Everything runs deterministically on the CPU: each phase seeds its own
generators, so the same seeds give the same weights and images bit for bit, and
leaves torch's global generator as it found it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from chain.backends.base import Backend, FinetuneResult, Progress
from chain.data import digits_arrays, load_dataset
from chain.errors import ChainError
from chain.text_encoders import (
    TEXT_ENCODERS,
    HashTextEncoder,
    MiniLMEncoder,
    caption_words,  # noqa: F401 - where the tiny model's users have always found it
)
from qtm.io import atomic_path
from qtm.params import BACKEND_DEFAULTS, FINETUNE_STARTS, NETWORK_SAMPLERS, TINY_PRESETS, effective_eta
from qtm.schedules import CFGSchedule
from qtm.validation import check_choice, check_int, check_positive, check_unit_interval

_DEFAULTS = BACKEND_DEFAULTS["tiny"]
_WEIGHTS_FILE = "model.pt"
#: What the UNet may predict (diffusers' names); the RGB presets use v, see :data:`_RGB`.
PREDICTION_TYPES = ("epsilon", "v_prediction")
#: ``base_data`` of the digits: scikit-learn's 1797 digits at the model's resolution.
DIGITS_BASE = "digits"


@dataclasses.dataclass(frozen=True)
class TinyConfig:
    """Architecture and base training of the tiny model (its hash names the cached base model).

    Examples
    --------
    >>> TinyConfig(resolution=8).resolution
    8
    """

    resolution: int = 8
    channels: tuple[int, ...] = (16, 32)
    vocabulary: int = 1024
    num_train_timesteps: int = 1000
    base_train_steps: int = 600
    base_batch_size: int = 64
    base_learning_rate: float = 2e-3
    base_drop: float = 0.15
    base_seed: int = 0
    #: Colour channels of the images (1 grey, 3 RGB).
    image_channels: int = 1
    #: One flag per UNet level: self- and cross-attention there. Empty: the digits design, the
    #: caption's average embedding as the class embedding and self-attention in the middle block only.
    cross_attention: tuple[bool, ...] = ()
    layers_per_block: int = 1
    text_encoder: str = "hashed"
    #: Tokens of the cross-attention context (longer captions are cut).
    context_length: int = 16
    #: What the base model learns from: ``"digits"`` or a ``--data`` spec (:func:`chain.data.load_dataset`).
    base_data: str = DIGITS_BASE
    #: What the UNet predicts, ``"epsilon"`` or ``"v_prediction"`` (diffusers' names).
    prediction_type: str = "epsilon"
    #: Decay of the exponential moving average of the base model's weights, which becomes the base
    #: model (0: none, the last weights). Warmed up as ``min(decay, (1 + k) / (10 + k))`` at step k.
    base_ema: float = 0.0

    def __post_init__(self):
        check_choice(self.prediction_type, "prediction_type", PREDICTION_TYPES)
        if not 0.0 <= self.base_ema < 1.0:
            raise ChainError(f"base_ema must lie in [0, 1), got {self.base_ema}")

    def key(self) -> str:
        """A short hash of the configuration, the name of the cached base model.

        Fields added after the first release count only where they differ from their
        default, so that the digits model keeps the name of its cached base.
        """
        defaults = dataclasses.asdict(TinyConfig())
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k in _FIRST_FIELDS or v != defaults[k]}
        text = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


_FIRST_FIELDS = ("resolution", "channels", "vocabulary", "num_train_timesteps", "base_train_steps",
                 "base_batch_size", "base_learning_rate", "base_drop", "base_seed")

#: The RGB design: narrow full-resolution levels, attention only at the third (8×8 at 32 px). Chosen by
#: measurement: folding 2×2 pixel patches into channels (a 16×16 top level at 32 px) cost half as much
#: but learnt several times slower (loss 0.125 against 0.04 after 1000 steps on coloured squares).
#: The network predicts v, not the noise: with the noise as target, the emoji base model after 1500
#: steps gave saturated colour fields without even the white ground at 16 and 32 px (an error in the
#: noise is amplified by up to sqrt(1 / abar) ~ 16 in the clean image at the first steps of the cosine
#: schedule); with v and the same budget it gave white grounds, flags and faces. The weights' moving
#: average is the base model (common practice; not measured apart). Cost at 32 px on 2 idle cores
#: (Intel Xeon, 2 threads): 12.5 ms per training example and 3.7 ms per image and network pass (7.4 ms
#: per sampling step with guidance).
_RGB = {"image_channels": 3, "channels": (16, 32, 64), "cross_attention": (False, False, True),
        "base_train_steps": 1500, "base_batch_size": 32, "base_learning_rate": 2e-3,
        "prediction_type": "v_prediction", "base_ema": 0.995}

#: The presets of ``chain run --preset`` (:data:`qtm.params.TINY_PRESETS`): the settings each changes from
#: :class:`TinyConfig`'s defaults.
PRESETS: dict[str, dict] = {
    "digits8": {},
    "rgb16": {"resolution": 16, **_RGB},
    "rgb32": {"resolution": 32, **_RGB},
    "rgb64": {"resolution": 64, **_RGB, "channels": (16, 32, 64, 64), "cross_attention": (False, False, False, True),
              "base_train_steps": 3000},
}
DEFAULT_PRESET = "digits8"


def preset_config(
    preset: str | None = None,
    *,
    text_encoder: str | None = None,
    resolution: int | None = None,
    data: str | None = None,
    **overrides,
) -> TinyConfig:
    """The configuration of a preset: the rule that ties it to ``--resolution``, ``--text-encoder`` and ``--data``.

    The preset fixes the image side; ``resolution`` may be left out (None) or must equal
    it, and images of another size are resized to it. ``digits8`` reads captions with
    the hashed encoder and learns its base model from the digits; the RGB presets read
    them with ``text_encoder`` (default ``minilm``) and learn it from ``data``.
    ``overrides`` change any other field (a smaller training budget in tests).

    Examples
    --------
    >>> preset_config().key() == TinyConfig().key()
    True
    >>> config = preset_config("rgb32", text_encoder="hashed", data="emoji:32")
    >>> config.resolution, config.image_channels, config.base_data
    (32, 3, 'emoji:32')
    >>> preset_config("rgb32", resolution=16)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    chain.errors.ChainError: --resolution 16 does not match --preset rgb32 (32 px); leave out --resolution ...
    """
    name = check_choice(preset or DEFAULT_PRESET, "--preset", TINY_PRESETS)
    config = dataclasses.replace(TinyConfig(), **PRESETS[name])
    if resolution is not None and resolution != config.resolution:
        raise ChainError(f"--resolution {resolution} does not match --preset {name} ({config.resolution} px); "
                         "leave out --resolution or choose the preset of that size")
    if not config.cross_attention:
        if text_encoder not in (None, "hashed"):
            raise ChainError(f"--preset {name} reads captions with the hashed encoder; "
                             f"--text-encoder {text_encoder} needs an rgb preset")
        return dataclasses.replace(config, **overrides)
    encoder = check_choice(text_encoder or "minilm", "--text-encoder", TEXT_ENCODERS)
    return dataclasses.replace(config, text_encoder=encoder, base_data=data or DIGITS_BASE, **overrides)


def cache_dir() -> Path:
    """Where trained base models are kept (``$CHAIN_TINY_CACHE`` or ``~/.cache/chain-of-diffusion``)."""
    return Path(os.environ.get("CHAIN_TINY_CACHE") or Path.home() / ".cache" / "chain-of-diffusion")


class TinyModel(nn.Module):
    """UNet + caption encoder: ``model(x, t, model.condition(captions))`` predicts the noise."""

    def __init__(self, config: TinyConfig):
        super().__init__()
        self.config = config
        channels = tuple(config.channels)
        if not config.cross_attention:
            from diffusers import UNet2DModel

            # Self-attention only in the middle block, at the lowest resolution: at the top
            # level it would dominate the CPU cost.
            self.unet = UNet2DModel(
                sample_size=config.resolution,
                in_channels=config.image_channels,
                out_channels=config.image_channels,
                block_out_channels=channels,
                down_block_types=("DownBlock2D",) * len(channels),
                up_block_types=("UpBlock2D",) * len(channels),
                layers_per_block=config.layers_per_block,
                norm_num_groups=8,
                attention_head_dim=16,
                class_embed_type="identity",
            )
            self.text = HashTextEncoder(config.vocabulary, channels[0] * 4)
            return
        from diffusers import UNet2DConditionModel

        if config.text_encoder == "minilm":
            self.frozen_text = MiniLMEncoder(length=config.context_length)  # a plain attribute: never trained
            dim = self.frozen_text.dim
        else:
            self.text = HashTextEncoder(config.vocabulary, channels[0] * 4)
            dim = channels[0] * 4
        if len(config.cross_attention) != len(channels):
            raise ChainError(f"cross_attention needs one flag per UNet level, {len(channels)}; "
                             f"got {config.cross_attention}")
        self.unet = UNet2DConditionModel(
            sample_size=config.resolution,
            in_channels=config.image_channels,
            out_channels=config.image_channels,
            block_out_channels=channels,
            down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in config.cross_attention),
            up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in config.cross_attention[::-1]),
            layers_per_block=config.layers_per_block,
            norm_num_groups=8,
            attention_head_dim=4,  # diffusers reads this as the number of heads
            cross_attention_dim=dim,
            class_embed_type="projection",
            projection_class_embeddings_input_dim=dim,
        )

    def condition(self, captions: Sequence[str]) -> tuple[torch.Tensor, ...]:
        """What the UNet reads of ``captions``: ``(embedding,)`` or ``(context, pooled)``; cat-able along batch."""
        if not self.config.cross_attention:
            return (self.text(captions),)
        if self.config.text_encoder == "minilm":
            return self.frozen_text.encode(captions, device=self.unet.device)
        return self.text.encode(captions, length=self.config.context_length)

    def forward(self, x: torch.Tensor, t: torch.Tensor, condition: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if not self.config.cross_attention:
            return self.unet(x, t, class_labels=condition[0]).sample
        context, pooled = condition
        return self.unet(x, t, encoder_hidden_states=context, class_labels=pooled).sample


def images_to_tensor(images: Sequence, resolution: int, *, channels: int = 1) -> torch.Tensor:
    """PIL images -> grey ``(N, 1, R, R)`` or RGB ``(N, 3, R, R)`` tensor in [-1, 1] (resized if needed)."""
    from PIL import Image

    arrays = []
    for image in images:
        converted = image.convert("L" if channels == 1 else "RGB")
        if converted.size != (resolution, resolution):
            converted = converted.resize((resolution, resolution), Image.BILINEAR)
        arrays.append(np.asarray(converted, dtype=np.float32) / 127.5 - 1.0)
    stacked = torch.from_numpy(np.stack(arrays))
    return stacked[:, None] if channels == 1 else stacked.permute(0, 3, 1, 2).contiguous()


def tensor_to_images(x: torch.Tensor) -> list:
    """``(N, 1, R, R)`` or ``(N, 3, R, R)`` tensor in [-1, 1] -> grey or RGB PIL images."""
    from PIL import Image

    pixels = ((x.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).cpu()
    if x.shape[1] == 1:
        return [Image.fromarray(p, mode="L") for p in pixels[:, 0].numpy()]
    return [Image.fromarray(p, mode="RGB") for p in pixels.permute(0, 2, 3, 1).numpy()]


def train_diffusion(
    model: TinyModel,
    data: torch.Tensor,
    captions: Sequence[str],
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    drop: float,
    seed: int,
    num_train_timesteps: int,
    prediction_type: str = "epsilon",
    ema: float = 0.0,
    progress: Progress | None = None,
) -> list[float]:
    """Train ``model`` on ``data`` (in [-1, 1]) to predict the noise (or v); returns the loss of each step.

    Each step draws a batch with replacement; each example's caption is replaced by
    the empty prompt with probability ``drop``, drawn anew every time (condition drop).
    With ``ema`` > 0 the model ends with the moving average of its weights
    (:attr:`TinyConfig.base_ema`), which averages out the noise of the last updates at a
    high learning rate.
    """
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="squaredcos_cap_v2",
                                    prediction_type=prediction_type)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    warmup = max(1, min(100, steps // 10))
    lr_lambda = lambda k: min(1.0, (k + 1) / warmup)  # noqa: E731 - a one-line warm-up rule
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    captions = list(captions)
    batch_size = min(batch_size, len(captions))
    losses = []
    average = [p.detach().clone() for p in model.parameters()] if ema > 0 else None
    model.train()
    for step in range(steps):
        index = torch.randint(len(captions), (batch_size,), generator=generator)
        clean = data[index]
        keep = torch.rand(batch_size, generator=generator) >= drop
        text = [captions[i] if k else "" for i, k in zip(index.tolist(), keep.tolist(), strict=True)]
        noise = torch.randn(clean.shape, generator=generator)
        t = torch.randint(num_train_timesteps, (batch_size,), generator=generator)
        noisy = noise_scheduler.add_noise(clean, noise, t)
        target = noise if prediction_type == "epsilon" else noise_scheduler.get_velocity(clean, noise, t)
        loss = nn.functional.mse_loss(model(noisy, t, model.condition(text)), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if average is not None:
            decay = min(ema, (1 + step) / (10 + step))
            for mean, weight in zip(average, model.parameters(), strict=True):
                mean.lerp_(weight.detach(), 1.0 - decay)
        losses.append(loss.item())
        if progress is not None:
            progress(step + 1, steps)
    if average is not None:
        with torch.no_grad():
            for weight, mean in zip(model.parameters(), average, strict=True):
                weight.copy_(mean)
    model.eval()
    return losses


@torch.no_grad()
def sample(
    model: TinyModel,
    captions: Sequence[str],
    *,
    scales: np.ndarray,
    seeds: Sequence[int],
    sampler: str,
    num_train_timesteps: int,
    resolution: int,
    channels: int = 1,
    prediction_type: str = "epsilon",
    batch_size: int = 256,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Guided sampling: ``eps = eps_u + w_k (eps_c - eps_u)`` at step ``k`` with ``w_k = scales[k]``.

    Image ``i`` draws its initial noise and (``ddpm``) its step noise from its own
    generator seeded with ``seeds[i]``, so its noise does not depend on its batch.
    """
    eta = effective_eta(check_choice(sampler, "--sampler", NETWORK_SAMPLERS), 0.0)
    steps = len(scales)
    total = len(captions) * steps
    out = []
    for start in range(0, len(captions), batch_size):
        chunk = list(captions[start : start + batch_size])
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds[start : start + batch_size]]
        scheduler = make_sampler(num_train_timesteps, prediction_type=prediction_type)
        scheduler.set_timesteps(steps)
        x = torch.stack([torch.randn((channels, resolution, resolution), generator=g) for g in generators])
        condition = tuple(torch.cat(pair) for pair in zip(model.condition([""] * len(chunk)), model.condition(chunk),
                                                          strict=True))
        for k, t in enumerate(scheduler.timesteps):
            eps_u, eps_c = model(torch.cat([x, x]), t.expand(2 * len(chunk)), condition).chunk(2)
            eps = eps_u + float(scales[k]) * (eps_c - eps_u)
            x = scheduler.step(eps, t, x, eta=eta, generator=generators).prev_sample
            if progress is not None:
                progress(start * steps + (k + 1) * len(chunk), total)
        out.append(x)
    return torch.cat(out)


def make_sampler(num_train_timesteps: int, *, prediction_type: str = "epsilon"):
    """A fresh diffusers DDIM scheduler; ``ddim`` samples with eta 0, ``ddpm`` with eta 1 (the project's convention).

    The predicted clean image is not clipped at each step: with guidance, clipping
    garbles the digits (measured: half of the CFG-3 digits misread, against a tenth unclipped).

    Examples
    --------
    >>> make_sampler(1000).config.clip_sample
    False
    """
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                         prediction_type=prediction_type)


class TinyBackend(Backend):
    """The tiny diffusion models behind the :class:`~chain.backends.base.Backend` interface.

    Parameters
    ----------
    config : TinyConfig, optional
        Architecture and base training (:func:`preset_config`; default the ``digits8`` preset);
        the base model is trained once per config (and training data) and cached.
    learning_rate, train_steps, batch_size : finetuning settings.
    lora_rank : None
        The tiny model is always finetuned fully; a LoRA rank is refused.
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
        learning_rate: float = _DEFAULTS["learning_rate"],
        train_steps: int = _DEFAULTS["train_steps"],
        batch_size: int = _DEFAULTS["batch_size"],
        lora_rank: int | None = None,
        device: str = "cpu",
        progress: Progress | None = None,
    ):
        if lora_rank is not None:
            raise ChainError("the tiny backend always finetunes the whole model; leave out --lora-rank")
        self.config = config or TinyConfig()
        self.learning_rate = float(check_positive(learning_rate, "--learning-rate"))
        self.train_steps = check_int(train_steps, "--train-steps", minimum=1)
        self.batch_size = check_int(batch_size, "--batch-size", minimum=1)
        self.device = torch.device(device)
        if self.device.type == "cpu":
            pin_cpu()
        torch.use_deterministic_algorithms(True)
        self.base_state = load_base_model(self.config, progress=progress)
        # Its random initial weights are replaced at once: drawing them must not move the caller's generator.
        with torch.random.fork_rng(devices=[]):
            self.model = TinyModel(self.config)
        self.model.load_state_dict(self.base_state)
        self.model.eval().to(self.device)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "config": dataclasses.asdict(self.config),
            "base_model": base_model_path(self.config).stem,
            "finetune": "full",
        }

    def finetune(self, images, captions, *, drop, start, seed, progress=None) -> FinetuneResult:
        check_unit_interval(drop, "--drop", closed_right=False)
        check_choice(start, "finetune start", FINETUNE_STARTS)
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
        scales = CFGSchedule.parse(schedule).scales(cfg, steps, alphas_cumprod=abar)
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


def pin_cpu() -> None:
    """Run torch on ``$CHAIN_THREADS`` CPU threads (default one).

    On a shared, busy CPU, OpenMP worker threads that spin waiting for each other
    cost far more than they save on such small operations: on the team's 2-core
    machine at load average ~7, a training step took 0.077 s per example with two
    threads against 0.004 s with one. On an idle machine more threads are faster
    (rgb32 on 2 idle cores: 12.5 ms per training example and 3.7 ms per image and
    network pass with two threads, 20 ms and 7 ms with one); set ``CHAIN_THREADS``
    to the free cores there. One thread is the robust default, and keeps
    floating-point sums in one fixed order whatever the machine.
    """
    text = os.environ.get("CHAIN_THREADS", "1")
    try:
        threads = int(text)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ChainError(f"CHAIN_THREADS={text!r} is not a number of threads; set a whole number >= 1 or unset it")
    torch.set_num_threads(threads)


def base_model_path(config: TinyConfig) -> Path:
    """The cache file of the base model: named by the config's key and, unless it learns from the digits,
    by a hash of its training data's content (a folder's images can change under the same name)."""
    if config.base_data == DIGITS_BASE:
        return cache_dir() / f"tiny-{config.key()}.pt"
    return cache_dir() / f"tiny-{config.key()}-{_training_set_digest(config)}.pt"


@functools.lru_cache(maxsize=2)
def _training_set_digest(config: TinyConfig) -> str:
    """A hash of the base model's training images and captions (hashed once per config, not per lookup)."""
    images, captions = base_training_set(config)
    digest = hashlib.sha256(images.numpy().tobytes())
    digest.update(json.dumps(captions).encode())
    return digest.hexdigest()[:12]


@functools.lru_cache(maxsize=2)
def base_training_set(config: TinyConfig) -> tuple[torch.Tensor, list[str]]:
    """The base model's training images, ``(N, C, R, R)`` in [-1, 1], and their captions (read once per config)."""
    if config.base_data == DIGITS_BASE:
        images, captions = digits_arrays(resolution=config.resolution)
        data = torch.from_numpy(images)[:, None] * 2.0 - 1.0
        return data.expand(-1, config.image_channels, -1, -1).contiguous(), captions
    dataset = load_dataset(config.base_data)
    return images_to_tensor(dataset.images, config.resolution, channels=config.image_channels), list(dataset.captions)


def load_base_model(config: TinyConfig, *, progress: Progress | None = None) -> dict:
    """The base model's state dict: read from the cache, or trained once and cached."""
    path = base_model_path(config)
    if path.exists():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError):
            pass  # a damaged cache file is simply retrained and replaced
    state = train_base_model(config, progress=progress)
    save_state(state, path)
    return state


def save_state(state: dict, path: Path) -> None:
    """Save a state dict atomically, with the same bytes for the same weights.

    torch names the archive inside the file after the file name, which here would
    be the random temporary name; through a file object the name is always "archive".
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as stream:
        torch.save(state, stream)


def train_base_model(config: TinyConfig, *, progress: Progress | None = None) -> dict:
    """Train the base model from scratch on its data set, by default all 1797 digits (deterministic for a config)."""
    pin_cpu()
    data, captions = base_training_set(config)
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


@contextlib.contextmanager
def seeded_global_rng(seed: int):
    """Seed torch's global CPU generator with ``seed`` inside the block and restore its state after it.

    The weight initialisation draws from the global generator (anything else of a
    phase has its own generator); seeding it for good would change what the caller,
    another backend or a test draws next. Only the CPU generator is touched: the
    model is built on the CPU, and seeding CUDA would reach every device.

    Examples
    --------
    >>> before = torch.random.get_rng_state()
    >>> with seeded_global_rng(3):
    ...     first = torch.rand(1)
    >>> with seeded_global_rng(3):
    ...     again = torch.rand(1)
    >>> bool(first == again), bool(torch.equal(before, torch.random.get_rng_state()))
    (True, True)
    """
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(int(seed))
        yield
