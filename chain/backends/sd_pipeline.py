"""Loading a Stable Diffusion pipeline for the ``sd`` backend: the device and precision, and a pipeline whose
guidance scale may change at every step; a model that cannot be loaded is one clear error."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from chain.errors import ChainError
from qtm.validation import check_choice

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class ScheduledGuidancePipeline(StableDiffusionPipeline):
    """A Stable Diffusion pipeline whose guidance scale may change at every step.

    diffusers re-reads ``guidance_scale > 1`` at every step to decide whether to
    guide, but builds the doubled (unconditional + conditional) batch once, at the
    start. A schedule that reaches 1 would then feed a batch of the wrong size to
    the UNet, and a scale below 1 (disruptive selection, legitimate here) would
    silently lose its guidance. The caller fixes the decision once per call in
    ``_guided``; the CFG combination ``u + w (c - u)`` is exact for every w.
    """

    _guided = True

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guided


def pick_device(device: str | None) -> torch.device:
    """The torch device: the one named, else CUDA when present, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise ChainError(f"--device {device!r} is not a device name; use cpu or cuda (cuda:N)") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ChainError(
            f"--device {device}: no CUDA GPU is available here; leave --device out or use --device cpu"
        )
    return chosen


def pick_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """The frozen weights' precision: the one named, else bf16 on a GPU (fp16 where bf16 is missing), else fp32."""
    if dtype is None:
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return DTYPES[check_choice(dtype, "--dtype", tuple(DTYPES))]


def load_pipeline(model: str, dtype: torch.dtype) -> ScheduledGuidancePipeline:
    """Load a diffusers Stable Diffusion pipeline from a directory or a model id, or explain why not."""
    local = Path(model).expanduser()
    looks_local = local.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1
    if looks_local and not (local / "model_index.json").is_file():
        raise ChainError(
            f"--model {model}: not a diffusers model (no model_index.json in it); give a directory written "
            "by a diffusers pipeline's save_pretrained or a Hugging Face model id (convert a single .ckpt or "
            ".safetensors file with StableDiffusionPipeline.from_single_file(FILE).save_pretrained(DIR))"
        )
    try:
        with quiet_dtype_keyword():
            # The safety checker would black out images the chain then trains on; it is never loaded.
            pipe = ScheduledGuidancePipeline.from_pretrained(
                str(local) if looks_local else model,
                torch_dtype=dtype,
                safety_checker=None,
                requires_safety_checker=False,
            )
    except Exception as error:  # any loading failure is the user's model argument; say which and why
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ChainError(
            f"--model {model}: cannot load it as a Stable Diffusion 1.x/2.x pipeline ({reason}); give a "
            "local diffusers directory, or a Hugging Face model id with network access (HF_HUB_OFFLINE unset)"
        ) from None
    return pipe


@contextlib.contextmanager
def quiet_dtype_keyword():
    """``torch_dtype`` is the one keyword every supported diffusers (>= 0.30) reads; the newest call it deprecated."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated", category=FutureWarning)
        yield
