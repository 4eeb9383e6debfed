"""Throughput of the ``sd`` backend on Stable Diffusion v1.5's architecture, against plain diffusers.

The model is built from the published SD v1.5 component configs in
``chain/sd_configs/sd15`` with random weights (speed does not depend on the weight
values; the tokenizer is a small stand-in, prompts are still padded to 77 tokens),
saved as a diffusers directory and loaded through the backend's real loading code.

Measured in one run, on one device, in bf16:

(a) images/s for 512x512 generation, CFG 7.5, 50 DDIM steps, through
    ``StableDiffusionBackend.generate`` with a decaying (cosine) CFG schedule
    applied per step by the step-end callback, against a plain
    ``StableDiffusionPipeline`` call with default settings (its PNDM scheduler)
    and the same plain call with the DDIM scheduler (same sampler: the ratio to
    this one is the cost of the backend's machinery);
(b) LoRA finetuning steps/s at batch 4 and 8 through ``StableDiffusionBackend.finetune``
    (latents and text embeddings computed once per data set), against a
    reference step written as diffusers' LoRA training example does it (VAE and
    text encoder run at every step), on the same UNet and adapter.

``--tiny`` uses the tiny configs and a few steps so that the script can be checked on
a CPU; its figures mean nothing. ``--chain-smoke`` instead runs a 2-iteration chain
at 256 px through the backend (random weights: plumbing only, no image quality).

Run: ``python benchmarks/sd_throughput.py [--tiny] [--json OUT.json]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import diffusers  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

from chain.backends.sd import StableDiffusionBackend  # noqa: E402
from qtm.schedules import CFGSchedule  # noqa: E402

CONFIGS = REPO / "chain" / "sd_configs"


def build_random_model(config_dir: Path, out_dir: Path, *, device: torch.device, dtype: torch.dtype) -> Path:
    """Write a Stable Diffusion pipeline with random weights, built from the component configs in ``config_dir``."""
    torch.manual_seed(0)
    # Initialising 1e9 random weights takes minutes on a CPU and seconds on a GPU.
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_dir / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(config_dir / "text_encoder"))
    pipe = StableDiffusionPipeline(
        vae=vae.to(dtype),
        text_encoder=text_encoder.to(dtype),
        tokenizer=CLIPTokenizer.from_pretrained(config_dir / "tokenizer"),
        unet=unet.to(dtype),
        scheduler=PNDMScheduler.from_pretrained(config_dir / "scheduler"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir)
    del pipe, unet, vae, text_encoder
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out_dir


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(function, device, repeats: int) -> float:
    """Seconds per call of ``function`` (after one untimed warm-up call)."""
    function()
    _sync(device)
    began = time.perf_counter()
    for _ in range(repeats):
        function()
    _sync(device)
    return (time.perf_counter() - began) / repeats


def _random_images(count: int, size: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def _captions(count: int) -> list[str]:
    return [f"object {i}" for i in range(count)]


def bench_generation(model_dir, backend, settings, device, dtype) -> dict:
    batch, steps, cfg, repeats = settings["batch"], settings["steps"], settings["cfg"], settings["repeats"]
    captions = _captions(batch)
    backend.batch_size = batch
    schedule = CFGSchedule.parse("cosine")

    def ours():
        backend.generate(captions, cfg=cfg, schedule=schedule, seeds=list(range(batch)), steps=steps, sampler="ddim")

    plain = StableDiffusionPipeline.from_pretrained(
        model_dir, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False
    ).to(device)
    plain.set_progress_bar_config(disable=True)
    size = backend.resolution

    def default_call():
        plain(captions, height=size, width=size, num_inference_steps=steps, guidance_scale=cfg)

    seconds = {
        "backend_ddim_cosine": _timed(ours, device, repeats),
        "plain_default": _timed(default_call, device, repeats),
    }
    plain.scheduler = DDIMScheduler.from_config(plain.scheduler.config)
    seconds["plain_ddim"] = _timed(default_call, device, repeats)
    return {name: batch / value for name, value in seconds.items()}


def bench_training(backend, settings, device) -> dict:
    results = {}
    stamps = []

    def stamp(done, total):
        _sync(device)
        stamps.append(time.perf_counter())

    for batch in settings["train_batches"]:
        backend.batch_size = batch
        images = _random_images(2 * batch, backend.resolution, seed=batch)
        captions = _captions(2 * batch)
        backend.train_steps = 3
        backend.finetune(images, captions, drop=0.1, start="base", seed=0)
        stamps.clear()
        backend.train_steps = settings["train_steps"]
        began = time.perf_counter()
        backend.finetune(images, captions, drop=0.1, start="previous", seed=1, progress=stamp)
        whole = time.perf_counter() - began
        ours = (len(stamps) - 1) / (stamps[-1] - stamps[0])
        reference = _reference_lora_steps_per_s(backend, images, captions, settings["train_steps"], device)
        results[batch] = {"backend": ours, "backend_with_encoding": len(stamps) / whole, "reference": reference}
        if device.type == "cuda":
            results[batch]["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            torch.cuda.reset_peak_memory_stats(device)
    return results


def _reference_lora_steps_per_s(backend, images, captions, steps, device) -> float:
    """A LoRA step as diffusers' train_text_to_image_lora.py takes it, on the backend's UNet and adapter."""
    pipe = backend.pipe
    unet, vae, text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
    batch = backend.batch_size
    pixels = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32)) for im in images[:batch]])
    pixels = (pixels.permute(0, 3, 1, 2) / 127.5 - 1).to(device, vae.dtype)
    ids = pipe.tokenizer(
        captions[:batch], padding="max_length", max_length=pipe.tokenizer.model_max_length,
        truncation=True, return_tensors="pt",
    ).input_ids.to(device)
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scheduler = backend.noise_scheduler

    def step():
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            states = text_encoder(ids, return_dict=False)[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), device=device)
        noisy = scheduler.add_noise(latents, noise, t)
        prediction = unet(noisy, t, states, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(prediction.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()

    unet.train()
    seconds = _timed(step, device, steps)
    unet.eval()
    return 1.0 / seconds


def chain_smoke(backend, settings) -> None:
    """Two chain iterations through the backend: finetune, generate, save, reload (random weights)."""
    print("== chain smoke test: PLUMBING ONLY (random weights; says nothing about images or collapse) ==")
    count = settings["batch"] * 2
    captions = _captions(count)
    data = _random_images(count, backend.resolution, seed=7)
    schedule = CFGSchedule.parse("cosine")
    with tempfile.TemporaryDirectory() as tmp:
        for iteration in range(2):
            began = time.perf_counter()
            result = backend.finetune(data, captions, drop=0.2, start="base", seed=iteration)
            seeds = [1000 * iteration + i for i in range(count)]
            images = backend.generate(captions, cfg=7.5, schedule=schedule, seeds=seeds, steps=settings["steps"],
                                      sampler="ddim")
            info = backend.save_weights(Path(tmp) / f"it{iteration}")
            print(f"iteration {iteration}: {len(result.losses)} steps, loss {result.losses[0]:.4f} -> "
                  f"{result.losses[-1]:.4f}, {len(images)} images {images[0].size}, weights {info['kind']}, "
                  f"{time.perf_counter() - began:.1f} s")
            data = images
        backend.load_weights(Path(tmp) / "it0")
        again = backend.generate(captions[:1], cfg=7.5, schedule=schedule, seeds=[0], steps=settings["steps"],
                                 sampler="ddim")
        print(f"reloaded iteration 0 weights and regenerated image 0: size {again[0].size}")
    print("chain smoke test: OK")


def environment(device: torch.device) -> dict:
    info = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["card"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    else:
        info["card"] = platform.processor() or platform.machine()
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny configs and few steps (a CPU check)")
    parser.add_argument("--chain-smoke", action="store_true", help="run a 2-iteration chain at 256 px instead")
    parser.add_argument("--batch", type=int, default=4, help="images per generation call")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (50; 4 with --tiny)")
    parser.add_argument("--train-batches", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--train-steps", type=int, default=None, help="timed steps (20; 4 with --tiny)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--repeats", type=int, default=None, help="timed generation calls (3; 1 with --tiny)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="keep the random model here and reuse it if it is there (default: a temporary folder)")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.tiny:
        parser.error("the full-size benchmark needs a CUDA GPU; use --tiny to check the script on a CPU")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    settings = {
        "batch": args.batch,
        "steps": args.steps or (4 if args.tiny else 50),
        "cfg": 7.5,
        "repeats": args.repeats or (1 if args.tiny else 3),
        "train_batches": [2, 4] if args.tiny and args.train_batches == [4, 8] else args.train_batches,
        "train_steps": args.train_steps or (4 if args.tiny else 20),
        "rank": args.rank,
    }
    if args.chain_smoke and not args.tiny:
        settings["steps"] = args.steps or 20
    env = environment(device)
    print(" ".join(f"{k}={v}" for k, v in env.items()))
    configs = CONFIGS / ("tiny" if args.tiny else "sd15")
    print(f"model: random weights from {configs.relative_to(REPO)}; dtype {str(dtype).removeprefix('torch.')}; "
          f"settings {settings}")

    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        model_dir = args.model_dir or Path(tmp) / "model"
        if not (model_dir / "model_index.json").is_file():
            build_random_model(configs, model_dir, device=device, dtype=dtype)
        resolution = 256 if args.chain_smoke and not args.tiny else None
        backend = StableDiffusionBackend(
            str(model_dir), lora_rank=args.rank, batch_size=args.batch, device=str(device),
            dtype="bf16" if dtype == torch.bfloat16 else "fp32", resolution=resolution, learning_rate=1e-4,
            train_steps=settings["train_steps"],
        )
        print(f"built and loaded in {time.perf_counter() - began:.1f} s; resolution {backend.resolution}")
        if args.chain_smoke:
            chain_smoke(backend, settings)
            return 0
        generation = bench_generation(model_dir, backend, settings, device, dtype)
        training = bench_training(backend, settings, device)

    size = backend.resolution
    print(f"(a) generation {size}x{size}, CFG {settings['cfg']}, {settings['steps']} steps, batch {args.batch}:")
    for name, rate in generation.items():
        print(f"    {name:22s} {rate:8.3f} images/s")
    print(f"    ratio backend / plain_ddim    = {generation['backend_ddim_cosine'] / generation['plain_ddim']:.3f}")
    print(f"    ratio backend / plain_default = {generation['backend_ddim_cosine'] / generation['plain_default']:.3f}")
    print(f"(b) LoRA finetuning, rank {args.rank}, {size}x{size}:")
    for batch, rates in training.items():
        memory = f", peak {rates['peak_gib']:.1f} GiB" if "peak_gib" in rates else ""
        print(f"    batch {batch}: backend {rates['backend']:.3f} steps/s "
              f"({rates['backend'] * batch:.1f} images/s; {rates['backend_with_encoding']:.3f} steps/s with the "
              f"one-time encoding), reference {rates['reference']:.3f} steps/s, "
              f"ratio {rates['backend'] / rates['reference']:.3f}{memory}")
    if args.tiny:
        print("(--tiny: tiny configs; these figures check the script, they measure nothing)")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "settings": settings, "generation_images_per_s":
                                         generation, "training_steps_per_s": training}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
