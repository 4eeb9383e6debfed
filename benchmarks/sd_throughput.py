"""Throughput of the ``sd`` backend on Stable Diffusion v1.5's architecture, against plain diffusers.

The model is built from the published SD v1.5 component configs in
``chain/sd_configs/sd15`` with random weights (speed does not depend on the weight
values; the tokenizer is a small stand-in, prompts are still padded to 77 tokens),
saved as a diffusers directory and loaded through the backend's real loading code.

Measured in one run, on one device, in bf16 (fp32 on a CPU), each with its peak
``torch.cuda.max_memory_allocated`` (and the memory already allocated when the case began):

(a) images/s for 512x512 generation, CFG 7.5, 50 DDIM steps, batch 4: the backend's
    optimised path (compiled UNet, channels-last, fused QKV, SDPA) with a decaying
    (cosine) CFG schedule applied per step by the step-end callback, against a plain
    ``StableDiffusionPipeline`` call with the same DDIM scheduler (constant CFG). The
    first call's extra time (the UNet's compilation) is printed apart and amortised over
    one chain iteration (``--chain-images`` images). Then the largest pixel difference
    between the optimised backend and the plain pipeline from the same seeds (constant
    CFG on both, so that the computations agree).
(b) LoRA finetuning steps/s at batch 4 and 8: the backend's optimised path (compiled
    UNet, draws on the device, fused AdamW, no per-step synchronisation; latents and
    text embeddings computed once per data set) and its plain path, against a reference
    step written as diffusers' LoRA training example takes it (VAE and text encoder at
    every step, ``loss.item()`` each step) on the plain backend's uncompiled UNet and
    adapter. Compilation is printed apart and amortised over one chain iteration
    (``--chain-train-steps`` steps).

``--part`` runs (a) or (b) alone (``benchmarks/gpu_check.sh`` gives each its own time
limit). ``--tiny`` uses the tiny configs and a few steps so that the script can be
checked on a CPU (there ``--compile auto`` leaves the UNet uncompiled: building it takes
minutes on 2 cores); its figures mean nothing. ``--chain-smoke`` instead runs a
2-iteration chain through the optimised backend (random weights: plumbing only) and
says whether the second iteration had to compile anything again.

Run: ``python benchmarks/sd_throughput.py [--tiny] [--part generation|training] [--json OUT.json]``.
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

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for folder in (REPO, HERE):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import diffusers  # noqa: E402
from _memory import peak_line  # noqa: E402
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


class _Memory:
    """Peak GPU memory of one case: ``max_memory_allocated`` from its start, and what was allocated then."""

    def __init__(self, device: torch.device):
        self.device = device
        self.before = self.peak = None

    def __enter__(self):
        if self.device.type == "cuda":
            _sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device) / 2**30
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            _sync(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**30

    def figures(self) -> dict:
        return {} if self.peak is None else {"peak_gib": self.peak, "allocated_before_gib": self.before}


def _timed(function, device, repeats: int) -> tuple[float, float]:
    """Seconds of the first call (warm-up: compilation, caches) and per call of ``repeats`` further calls."""
    began = time.perf_counter()
    function()
    _sync(device)
    first = time.perf_counter() - began
    began = time.perf_counter()
    for _ in range(repeats):
        function()
    _sync(device)
    return first, (time.perf_counter() - began) / repeats


def _random_images(count: int, size: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def _captions(count: int) -> list[str]:
    return [f"object {i}" for i in range(count)]


def _pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


def bench_generation(model_dir, backend, settings, device, dtype) -> dict:
    """(a): the optimised backend with the cosine schedule against the plain pipeline with DDIM."""
    batch, steps, cfg, repeats = settings["batch"], settings["steps"], settings["cfg"], settings["repeats"]
    captions, seeds = _captions(batch), list(range(batch))
    backend.batch_size = batch
    size = backend.resolution

    plain = StableDiffusionPipeline.from_pretrained(
        model_dir, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False
    ).to(device)
    plain.scheduler = DDIMScheduler.from_config(plain.scheduler.config)
    plain.set_progress_bar_config(disable=True)

    def plain_call():
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        return plain(captions, height=size, width=size, num_inference_steps=steps, guidance_scale=cfg,
                     generator=generators).images

    def ours(schedule="cosine"):
        return backend.generate(captions, cfg=cfg, schedule=CFGSchedule.parse(schedule), seeds=seeds, steps=steps,
                                sampler="ddim")

    results = {}
    for name, call in (("plain_ddim", plain_call), ("backend_optimised_cosine", ours)):
        with _Memory(device) as memory:
            first, per_call = _timed(call, device, repeats)
        results[name] = {"images_per_s": batch / per_call, "first_call_extra_s": max(first - per_call, 0.0),
                         **memory.figures()}
        print(f"    {name:26s} {batch / per_call:8.3f} images/s; first call {first - per_call:+.1f} s", flush=True)
    # Constant CFG on both sides: the same computation, so any difference is the optimised path's own.
    difference = np.abs(_pixels(ours("constant")) - _pixels(plain_call())).max()
    results["max_pixel_difference"] = int(difference)
    return results


def bench_training(fast, plain, settings, device) -> dict:
    """(b): the optimised and plain backends and the diffusers-example reference step, per batch size."""
    results = {}
    steps = settings["train_steps"]
    for batch in settings["train_batches"]:
        images = _random_images(2 * batch, fast.resolution, seed=batch)
        captions = _captions(2 * batch)
        row = {}
        for name, backend in (("backend_optimised", fast), ("backend_plain", plain)):
            row[name] = _backend_training(backend, images, captions, batch, steps, device)
        with _Memory(device) as memory:
            rate = _reference_lora_steps_per_s(plain, images, captions, steps, device)
        row["reference"] = {"steps_per_s": rate, **memory.figures()}
        results[batch] = row
        line = ", ".join(f"{name} {figures['steps_per_s']:.3f}" for name, figures in row.items())
        print(f"    batch {batch}: {line} steps/s", flush=True)
    return results


def _backend_training(backend, images, captions, batch, steps, device) -> dict:
    """Steps/s of ``backend.finetune`` after a 3-step warm-up; the warm-up's extra time is the compilation."""
    backend.batch_size = batch
    stamps = []

    def stamp(done, total):
        # One synchronisation, after the first step: the steps after it run without any.
        if done == 1:
            _sync(device)
            stamps.append(time.perf_counter())

    with _Memory(device) as memory:
        backend.train_steps = 3
        began = time.perf_counter()
        backend.finetune(images, captions, drop=0.1, start="base", seed=0)
        _sync(device)
        warm = time.perf_counter() - began
        backend.train_steps = steps
        began = time.perf_counter()
        backend.finetune(images, captions, drop=0.1, start="continue", seed=1, progress=stamp)
        _sync(device)
        ended = time.perf_counter()
    rate = (steps - 1) / (ended - stamps[0])
    encoding = max((ended - began) - steps / rate, 0.0)
    return {"steps_per_s": rate, "first_call_extra_s": max(warm - encoding - 3 / rate, 0.0), **memory.figures()}


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
    _, seconds = _timed(step, device, steps)
    unet.eval()
    return 1.0 / seconds


def chain_smoke(backend, settings) -> None:
    """Two chain iterations through the backend: finetune, generate, save, reload (random weights)."""
    print("== chain smoke test: PLUMBING ONLY (random weights; says nothing about images or collapse) ==")
    from torch._dynamo.utils import counters

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
                  f"{time.perf_counter() - began:.1f} s; compiled graphs so far: "
                  f"{counters['stats']['unique_graphs']}", flush=True)
            data = images
        backend.load_weights(Path(tmp) / "it0")
        again = backend.generate(captions[:1], cfg=7.5, schedule=schedule, seeds=[0], steps=settings["steps"],
                                 sampler="ddim")
        print(f"reloaded iteration 0 weights and regenerated image 0: size {again[0].size} (a batch of a new "
              f"size: compiled graphs now {counters['stats']['unique_graphs']})")
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


def _report_generation(results, settings, size) -> None:
    plain, ours = results["plain_ddim"], results["backend_optimised_cosine"]
    print(f"(a) generation {size}x{size}, CFG {settings['cfg']}, {settings['steps']} DDIM steps, "
          f"batch {settings['batch']}:")
    for name in ("plain_ddim", "backend_optimised_cosine"):
        figures = results[name]
        memory = (f"; peak {figures['peak_gib']:.2f} GiB ({figures['allocated_before_gib']:.2f} allocated before)"
                  if "peak_gib" in figures else "")
        print(f"    {name:26s} {figures['images_per_s']:8.3f} images/s{memory}")
    ratio = ours["images_per_s"] / plain["images_per_s"]
    print(f"    ratio optimised backend (cosine schedule) / plain pipeline (DDIM) = {ratio:.3f} (goal >= 1.5)")
    images = settings["chain_images"]
    amortised = images / (images / ours["images_per_s"] + ours["first_call_extra_s"])
    print(f"    compilation (first call's extra time) {ours['first_call_extra_s']:.1f} s; amortised over one chain "
          f"iteration of {images} images: {amortised:.3f} images/s, ratio {amortised / plain['images_per_s']:.3f}")
    print(f"    largest pixel difference, optimised backend vs plain pipeline, same seeds, constant CFG: "
          f"{results['max_pixel_difference']}/255")


def _report_training(results, settings, size) -> None:
    print(f"(b) LoRA finetuning, rank {settings['rank']}, {size}x{size}, {settings['train_steps']} timed steps:")
    for batch, row in results.items():
        reference = row["reference"]["steps_per_s"]
        for name, figures in row.items():
            memory = (f"; peak {figures['peak_gib']:.2f} GiB ({figures['allocated_before_gib']:.2f} allocated "
                      "before)" if "peak_gib" in figures else "")
            print(f"    batch {batch} {name:18s} {figures['steps_per_s']:8.3f} steps/s "
                  f"({figures['steps_per_s'] * batch:.1f} images/s), ratio to the reference "
                  f"{figures['steps_per_s'] / reference:.3f}{memory}")
        ours = row["backend_optimised"]
        steps = settings["chain_train_steps"]
        amortised = steps / (steps / ours["steps_per_s"] + ours["first_call_extra_s"])
        print(f"    batch {batch}: compilation {ours['first_call_extra_s']:.1f} s; amortised over one chain "
              f"iteration of {steps} steps: {amortised:.3f} steps/s, ratio to the reference "
              f"{amortised / reference:.3f} (the goal >= 1.5 is for the steady rate above)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny configs and few steps (a CPU check)")
    parser.add_argument("--chain-smoke", action="store_true", help="run a 2-iteration chain instead")
    parser.add_argument("--part", choices=("all", "generation", "training"), default="all")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="compile the optimised backend's UNet (auto: on a GPU only)")
    parser.add_argument("--batch", type=int, default=4, help="images per generation call")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (50; 4 with --tiny)")
    parser.add_argument("--train-batches", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--train-steps", type=int, default=None, help="timed steps (20; 4 with --tiny)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--repeats", type=int, default=None, help="timed generation calls (3; 1 with --tiny)")
    parser.add_argument("--chain-images", type=int, default=500, help="images of one chain iteration")
    parser.add_argument("--chain-train-steps", type=int, default=100, help="finetuning steps of one chain iteration")
    parser.add_argument("--resolution", type=int, default=None, help="image side (the model's own by default)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="keep the random model here and reuse it if it is there (default: a temporary folder)")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.tiny:
        parser.error("the full-size benchmark needs a CUDA GPU; use --tiny to check the script on a CPU")
    if device.type != "cuda":
        # Tiny tensors: on a shared CPU, waking a second thread per operator costs more than it saves.
        torch.set_num_threads(1)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    compile_unet = device.type == "cuda" if args.compile == "auto" else args.compile == "on"
    settings = {
        "batch": args.batch,
        "steps": args.steps or (4 if args.tiny else 50),
        "cfg": 7.5,
        "repeats": args.repeats or (1 if args.tiny else 3),
        "train_batches": [2, 4] if args.tiny and args.train_batches == [4, 8] else args.train_batches,
        "train_steps": args.train_steps or (4 if args.tiny else 20),
        "rank": args.rank,
        "compile_unet": compile_unet,
        "chain_images": args.chain_images,
        "chain_train_steps": args.chain_train_steps,
    }
    if args.chain_smoke and not args.tiny:
        settings["steps"] = args.steps or 20
    env = environment(device)
    print(" ".join(f"{k}={v}" for k, v in env.items()))
    configs = CONFIGS / ("tiny" if args.tiny else "sd15")
    print(f"model: random weights from {configs.relative_to(REPO)}; dtype {str(dtype).removeprefix('torch.')}; "
          f"settings {settings}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        model_dir = args.model_dir or Path(tmp) / "model"
        if not (model_dir / "model_index.json").is_file():
            build_random_model(configs, model_dir, device=device, dtype=dtype)

        def backend(optimise):
            return StableDiffusionBackend(
                str(model_dir), lora_rank=args.rank, batch_size=args.batch, device=str(device),
                dtype="bf16" if dtype == torch.bfloat16 else "fp32", resolution=args.resolution,
                learning_rate=1e-4, train_steps=settings["train_steps"], optimise=optimise, compile_unet=compile_unet,
            )

        fast = backend(True)
        size = fast.resolution
        print(f"built and loaded in {time.perf_counter() - began:.1f} s; resolution {size}", flush=True)
        if args.chain_smoke:
            chain_smoke(fast, settings)
            print(peak_line())
            return 0
        figures = {}
        if args.part in ("all", "generation"):
            figures["generation"] = bench_generation(model_dir, fast, settings, device, dtype)
            _report_generation(figures["generation"], settings, size)
        if args.part in ("all", "training"):
            figures["training"] = bench_training(fast, backend(False), settings, device)
            _report_training(figures["training"], settings, size)

    if args.tiny:
        print("(--tiny: tiny configs; these figures check the script, they measure nothing)")
    print(peak_line())
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "settings": settings, **figures}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
