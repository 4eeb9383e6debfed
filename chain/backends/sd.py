"""The ``sd`` backend: a diffusers Stable Diffusion pipeline, finetuned with LoRA (peft) or fully.

Any Stable Diffusion 1.x/2.x model in diffusers format works, from a local
directory or (with network access) a Hugging Face model id. Nothing assumes one
architecture: the resolution comes from ``unet.config.sample_size`` times the
VAE's scale factor, the latent scaling from ``vae.config.scaling_factor`` and the
training target (epsilon or v) from the scheduler's ``prediction_type``.

On a GPU the frozen weights are kept in bf16 (fp16 where bf16 is missing) and the
LoRA parameters in fp32; a full finetune keeps the UNet in fp32 and computes in
autocast. Samplers follow the project's convention: ``ddim`` is DDIM with eta 0,
``ddpm`` is DDIM with eta 1 (as in :mod:`qtm.diffusion`).

The optimised path (``optimise``, on by default on a GPU) uses what diffusers documents
for speed: a compiled UNet (``torch.compile``; the pipeline loop and the CFG step
callback stay in Python), channels-last weights, fused QKV projections (LoRA only) with
SDPA attention for generation; for finetuning, random numbers drawn on the device and a
fused AdamW. Losses are read from the device once per :meth:`finetune` call on
either path.

Loading the pipeline is :mod:`chain.backends.sd_pipeline`, the LoRA adapter and the fused attention
:mod:`chain.backends.sd_lora`, the finetuning's pixels and batches :mod:`chain.backends.sd_batches`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel

from chain.backends.base import Backend, FinetuneResult, Progress, disk_full_as_os_error
from chain.backends.sd_batches import epoch_batches, to_pixels
from chain.backends.sd_lora import ADAPTER, LORA_TARGETS, fresh_adapter, refresh_fused_projections
from chain.backends.sd_pipeline import DTYPES, load_pipeline, pick_device, pick_dtype, quiet_dtype_keyword
from chain.errors import ChainError
from qtm.io import atomic_path, write_json
from qtm.params import BACKEND_DEFAULTS, effective_eta
from qtm.schedules import CFGSchedule

#: The model used when none is named (needs the network once, or a local copy).
_DEFAULTS = BACKEND_DEFAULTS["sd"]
DEFAULT_MODEL = _DEFAULTS["model"]
PREDICTION_TYPES = ("epsilon", "v_prediction")
WEIGHTS_FILE = "sd_weights.json"
LORA_FILE = "lora.safetensors"
UNET_DIR = "unet"
#: ``torch.compile`` mode of the optimised path: "max-autotune-no-cudagraphs" searches kernels for minutes
#: per graph, longer than a short chain iteration takes; CUDA graphs would freeze the per-step CFG callback.
COMPILE_MODE = "default"


class StableDiffusionBackend(Backend):
    """Stable Diffusion (diffusers) behind the chain's backend interface.

    Parameters
    ----------
    model : str
        A local diffusers directory (with ``model_index.json``) or a Hugging Face model id.
    lora_rank : int, optional
        Rank of the LoRA adapter on the UNet attention projections (4 when None; ignored with
        ``full_finetune``).
    full_finetune : bool
        Train every UNet weight instead of a LoRA adapter.
    learning_rate : float
        AdamW learning rate.
    train_steps : int
        Optimisation steps per :meth:`finetune` call.
    batch_size : int
        Examples per optimisation step, and images per pipeline call when generating.
    resolution : int, optional
        Image side in pixels; the model's own (``sample_size`` times the VAE scale factor) by default.
    device : str, optional
        ``"cuda"`` when a GPU is available, else ``"cpu"``.
    dtype : {"bf16", "fp16", "fp32"}, optional
        Precision of the frozen weights: bf16 on a GPU (fp16 where bf16 is missing), fp32 on a CPU.
    optimise : bool, optional
        Use the optimised path (see the module docstring): on a GPU by default, off on a CPU, where
        compiling even a tiny UNet's inference graph took over 3 minutes on 2 shared cores.
    compile_unet : bool, optional
        Compile the UNet on the optimised path (the default there, where triton is installed on a
        GPU); off leaves every other optimisation on.

    Examples
    --------
    >>> backend = StableDiffusionBackend("path/to/sd-model", lora_rank=4)  # doctest: +SKIP
    >>> images = backend.generate(["a red car"], cfg=7.5, schedule=CFGSchedule.parse("cosine"),
    ...                           seeds=[0], steps=50, sampler="ddim")  # doctest: +SKIP
    """

    name = "sd"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        lora_rank: int | None = _DEFAULTS["lora_rank"],
        full_finetune: bool = False,
        learning_rate: float = _DEFAULTS["learning_rate"],
        train_steps: int = _DEFAULTS["train_steps"],
        batch_size: int = _DEFAULTS["batch_size"],
        resolution: int | None = None,
        device: str | None = None,
        dtype: str | None = None,
        optimise: bool | None = None,
        compile_unet: bool | None = None,
    ):
        self.model = str(model)
        self.full_finetune = bool(full_finetune)
        if self.full_finetune:
            self.lora_rank = None
        else:
            self.lora_rank = _DEFAULTS["lora_rank"] if lora_rank is None else lora_rank
        self.learning_rate = learning_rate
        self.train_steps = train_steps
        self.batch_size = batch_size
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.optimise = self.device.type == "cuda" if optimise is None else bool(optimise)
        # torch.compile builds GPU kernels with triton; without it the optimised path runs uncompiled.
        can_compile = self.device.type != "cuda" or importlib.util.find_spec("triton") is not None
        self.compile_unet = self.optimise and (can_compile if compile_unet is None else bool(compile_unet))

        # A full finetune trains the UNet in fp32 (AdamW steps on bf16 weights round away), so it is
        # loaded in fp32 rather than rounded to bf16 first; autocast computes in the lower precision.
        self.pipe = load_pipeline(self.model, torch.float32 if self.full_finetune else self.dtype)
        unet = self.pipe.unet
        if unet.config.time_cond_proj_dim is not None:
            raise ChainError(
                f"--model {self.model}: its UNet is guidance-distilled (time_cond_proj_dim is set), so a CFG "
                "schedule cannot be applied; use a Stable Diffusion 1.x/2.x base model"
            )
        self.prediction_type = self.pipe.scheduler.config.get("prediction_type", "epsilon")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ChainError(
                f"--model {self.model}: prediction_type {self.prediction_type!r} is not supported; "
                f"use a model that predicts {' or '.join(PREDICTION_TYPES)}"
            )
        # The loaded scheduler's config is the model's diffusion process; samplers and the
        # training noise are both derived from it, never from the object the pipeline mutates.
        self._scheduler_config = self.pipe.scheduler.config
        self.noise_scheduler = DDPMScheduler.from_config(self._scheduler_config)

        self.vae_scale_factor = int(self.pipe.vae_scale_factor)
        multiple = self.vae_scale_factor * 2 ** (len(unet.config.block_out_channels) - 1)
        native = int(unet.config.sample_size) * self.vae_scale_factor
        self.resolution = native if resolution is None else resolution
        if self.resolution % multiple:
            raise ChainError(
                f"--resolution must be a multiple of {multiple} for this model, got {self.resolution}"
            )

        for part in (unet, self.pipe.vae, self.pipe.text_encoder):
            part.requires_grad_(False)
        if self.full_finetune:
            self.pipe.vae.to(self.dtype)
            self.pipe.text_encoder.to(self.dtype)
            self._base_state = {k: v.detach().to("cpu", copy=True) for k, v in unet.state_dict().items()}
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self._has_adapter = False
        # The attention processors without and with fused projections, once the fused ones exist.
        self._processors: tuple[dict, dict] | None = None
        if self.optimise:
            for part in (unet, self.pipe.vae):
                part.to(memory_format=torch.channels_last)
        if self.compile_unet:
            # In place, so that the pipeline, peft and the state dict keep seeing the UNet itself. Fixed
            # shapes: a batch of a new size costs one more build, not slower kernels for every size.
            unet.compile(mode=COMPILE_MODE, dynamic=False)

    # ------------------------------------------------------------------ finetuning
    def finetune(
        self,
        images: Sequence,
        captions: Sequence[str],
        *,
        drop: float,
        start: str,
        seed: int,
        progress: Progress | None = None,
    ) -> FinetuneResult:
        """Finetune the UNet on ``images`` with ``captions`` (see :meth:`Backend.finetune`).

        Each step draws ``batch_size`` examples (a fresh permutation per epoch),
        a VAE latent from each image's latent distribution, a timestep and noise
        from the model's noise schedule, and replaces each caption by the empty
        prompt with probability ``drop``; the loss is the MSE on epsilon or v.
        """
        captions = [str(c) for c in captions]
        if len(images) != len(captions):
            raise ChainError(
                f"finetune got {len(images)} images but {len(captions)} captions; give one caption per image"
            )
        if not images:
            raise ChainError("the finetuning data set is empty; give at least one image with its caption")
        began = time.perf_counter()

        pixels = to_pixels(images, self.resolution)
        self._prepare_trainable(start, seed)
        unet = self.pipe.unet
        mean, std = self._encode_images(pixels)
        cond = self._encode_text(captions)
        null = self._encode_text([""])
        params = [p for p in unet.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.learning_rate, fused=self.optimise or None)
        # fp16 gradients underflow without loss scaling; bf16 and fp32 need none.
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        # Draws on the device cost no host-to-device copy per step; on a CPU both paths draw the same numbers.
        generator = torch.Generator(device=self.device if self.optimise else "cpu").manual_seed(seed)
        batches = epoch_batches(len(captions), self.batch_size, generator)
        scaling = float(self.pipe.vae.config.scaling_factor)
        steps_total = self.noise_scheduler.config.num_train_timesteps
        unet_dtype = next(unet.parameters()).dtype if self.full_finetune else self.dtype

        losses = []
        unet.train()
        try:
            for step in range(self.train_steps):
                index = next(batches)
                count = len(index)
                drawn = generator.device
                eps = torch.randn(mean[index].shape, generator=generator, device=drawn).to(self.device)
                latents = (mean[index] + std[index] * eps) * scaling
                noise = torch.randn(latents.shape, generator=generator, device=drawn).to(self.device)
                timesteps = torch.randint(0, steps_total, (count,), generator=generator, device=drawn).to(self.device)
                dropped = (torch.rand(count, generator=generator, device=drawn) < drop).to(self.device)
                states = torch.where(dropped[:, None, None], null, cond[index])
                noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
                if self.prediction_type == "epsilon":
                    target = noise
                else:
                    target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
                with self._autocast():
                    prediction = unet(noisy.to(unet_dtype), timesteps, states, return_dict=False)[0]
                loss = torch.nn.functional.mse_loss(prediction.float(), target.float())
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                # Kept on the device: reading a loss each step would make the host wait for the GPU.
                losses.append(loss.detach())
                if progress is not None:
                    progress(step + 1, self.train_steps)
        finally:
            unet.eval()
        return FinetuneResult(losses=torch.stack(losses).tolist(), seconds=time.perf_counter() - began)

    def _prepare_trainable(self, start: str, seed: int) -> None:
        unet = self.pipe.unet
        if self.full_finetune:
            if start == "base":
                unet.load_state_dict(self._base_state)
            unet.requires_grad_(True)
        elif start == "base" or not self._has_adapter:
            fresh_adapter(unet, rank=self.lora_rank, seed=seed, add=not self._has_adapter)
            self._has_adapter = True

    @torch.no_grad()
    def _encode_images(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of each image's VAE latent distribution (fp32, on the device)."""
        vae = self.pipe.vae
        means, stds = [], []
        for chunk in pixels.split(self.batch_size):
            dist = vae.encode(chunk.to(self.device, vae.dtype)).latent_dist
            means.append(dist.mean.float())
            stds.append(dist.std.float())
        return torch.cat(means), torch.cat(stds)

    @torch.no_grad()
    def _encode_text(self, captions: list[str]) -> torch.Tensor:
        """Text embeddings from the pipeline's own prompt encoder, as the sampler computes them."""
        embeddings = []
        for start in range(0, len(captions), self.batch_size):
            chunk = captions[start : start + self.batch_size]
            embeddings.append(self.pipe.encode_prompt(chunk, self.device, 1, False)[0])
        return torch.cat(embeddings)

    def _autocast(self):
        """Autocast for a full finetune in half precision (fp32 UNet, half-precision VAE and text encoder)."""
        enabled = self.full_finetune and self.dtype != torch.float32
        return torch.autocast(device_type=self.device.type, dtype=self.dtype, enabled=enabled)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(
        self,
        captions: Sequence[str],
        *,
        cfg: float,
        schedule: CFGSchedule,
        seeds: Sequence[int],
        steps: int,
        sampler: str,
        progress: Progress | None = None,
    ) -> list:
        """One PIL image per caption, guided per step by ``schedule`` (see :meth:`Backend.generate`).

        The scale of step 0 is the pipeline's ``guidance_scale``; the step-end
        callback sets the scale of step ``k + 1`` after step ``k``.
        """
        captions = [str(c) for c in captions]
        seeds = [int(s) for s in seeds]
        if len(seeds) != len(captions):
            raise ChainError(
                f"generate got {len(captions)} captions but {len(seeds)} seeds; give one seed per caption"
            )
        scheduler = DDIMScheduler.from_config(self._scheduler_config)
        scheduler.set_timesteps(steps)
        alphas_cumprod = scheduler.alphas_cumprod[scheduler.timesteps].double().numpy()
        scales = schedule.scales(cfg, steps, alphas_cumprod=alphas_cumprod)
        pipe = self.pipe
        pipe.scheduler = scheduler
        # Without any step away from 1 the unconditional branch is never used: skip it (half the cost).
        pipe._guided = bool(np.any(scales != 1.0))

        def next_scale(pipeline, step, timestep, tensors):
            if step + 1 < steps:
                pipeline._guidance_scale = float(scales[step + 1])
            return tensors

        images = []
        # Not for a full finetune: its state dict (saved, reset to the base model) must not gain the fused copies.
        fuse = self.optimise and not self.full_finetune
        with self._fused_attention() if fuse else contextlib.nullcontext():
            for first in range(0, len(captions), self.batch_size):
                chunk = slice(first, first + self.batch_size)
                generators = [torch.Generator().manual_seed(s) for s in seeds[chunk]]
                with self._autocast():
                    output = pipe(
                        prompt=captions[chunk],
                        height=self.resolution,
                        width=self.resolution,
                        num_inference_steps=steps,
                        guidance_scale=float(scales[0]),
                        eta=effective_eta(sampler, 0.0),
                        generator=generators,
                        callback_on_step_end=next_scale,
                        output_type="pil",
                    )
                images.extend(output.images)
                if progress is not None:
                    progress(len(images), len(captions))
        return images

    @contextlib.contextmanager
    def _fused_attention(self):
        """Attention with fused QKV (and, in cross-attention, KV) projections that carry the current weights.

        diffusers' fusion concatenates the base weights only; a LoRA adapter's update is added
        here, into the fused copy, so that the base weights never change (merging into bf16
        weights and unmerging again would not restore them exactly).
        """
        unet = self.pipe.unet
        if self._processors is None:
            unet.fuse_qkv_projections()
            self._processors = (unet.original_attn_processors, unet.attn_processors)
        else:
            # The same processor objects as before: a compiled UNet finds its graph again.
            unet.set_attn_processor(dict(self._processors[1]))
        try:
            refresh_fused_projections(unet)
            yield
        finally:
            unet.set_attn_processor(dict(self._processors[0]))

    # ------------------------------------------------------------------ weights
    def save_weights(self, directory: Path) -> dict:
        """Save the LoRA adapter (``lora.safetensors``) or the full UNet (``unet/``) into ``directory``.

        Every file appears under its final name only when complete.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.full_finetune:
            part = directory / f".{UNET_DIR}.part"
            shutil.rmtree(part, ignore_errors=True)
            needed = sum(tensor.nbytes for tensor in self.pipe.unet.state_dict().values())
            with disk_full_as_os_error(part, needed=needed):
                self.pipe.unet.save_pretrained(part)
            shutil.rmtree(directory / UNET_DIR, ignore_errors=True)
            os.replace(part, directory / UNET_DIR)
            info = {"kind": "full", "path": UNET_DIR}
        else:
            from peft import get_peft_model_state_dict
            from safetensors.torch import save_file

            if not self._has_adapter:
                raise ChainError("there is no LoRA adapter to save yet; finetune before saving weights")
            state = get_peft_model_state_dict(self.pipe.unet, adapter_name=ADAPTER)
            state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
            needed = sum(tensor.nbytes for tensor in state.values())
            with atomic_path(directory / LORA_FILE) as tmp, disk_full_as_os_error(tmp, needed=needed):
                save_file(state, str(tmp))
            info = {"kind": "lora", "path": LORA_FILE, "rank": self.lora_rank, "targets": list(LORA_TARGETS)}
        write_json(directory / WEIGHTS_FILE, info)
        return info

    def load_weights(self, directory: Path) -> None:
        """Make the weights that :meth:`save_weights` wrote into ``directory`` the current model."""
        directory = Path(directory)
        try:
            info = json.loads((directory / WEIGHTS_FILE).read_text())
        except (OSError, ValueError):
            raise ChainError(
                f"{directory}: no readable {WEIGHTS_FILE}; these are not weights saved by the sd backend "
                "(redo the iteration that should have written them)"
            ) from None
        wanted = "full" if self.full_finetune else "lora"
        if info.get("kind") != wanted:
            raise ChainError(
                f"{directory} holds a {info.get('kind')} finetune but this run is set for {wanted}; "
                "use the same --full-finetune/--lora-rank as the run that saved them"
            )
        if wanted == "full":
            with quiet_dtype_keyword():
                saved = UNet2DConditionModel.from_pretrained(directory / info["path"], torch_dtype=torch.float32)
            self.pipe.unet.load_state_dict(saved.state_dict())
            return
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        if info.get("rank") != self.lora_rank:
            raise ChainError(
                f"{directory} holds a rank-{info.get('rank')} LoRA adapter but --lora-rank is "
                f"{self.lora_rank}; use the rank the weights were trained with"
            )
        fresh_adapter(self.pipe.unet, rank=self.lora_rank, seed=0, add=not self._has_adapter)
        self._has_adapter = True
        state = load_file(directory / info["path"])
        result = set_peft_model_state_dict(self.pipe.unet, state, adapter_name=ADAPTER)
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise ChainError(
                f"{directory}: the LoRA file does not fit this model ({len(unexpected)} unknown weights)"
            )

    def describe(self) -> dict:
        """Settings that change the results, for run.json."""
        return {
            "name": self.name,
            "model": self.model,
            "finetune": "full" if self.full_finetune else "lora",
            "lora_rank": self.lora_rank,
            "lora_targets": None if self.full_finetune else list(LORA_TARGETS),
            "learning_rate": self.learning_rate,
            "train_steps": self.train_steps,
            "batch_size": self.batch_size,
            "resolution": self.resolution,
            "device": str(self.device),
            "dtype": next(k for k, v in DTYPES.items() if v == self.dtype),
            "prediction_type": self.prediction_type,
            "vae_scale_factor": self.vae_scale_factor,
            "optimise": self.optimise,
            "compile_unet": self.compile_unet,
        }


__all__ = ["DEFAULT_MODEL", "LORA_TARGETS", "StableDiffusionBackend"]
