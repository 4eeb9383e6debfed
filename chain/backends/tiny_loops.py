"""The tiny backend's loops: training a :class:`~chain.backends.tiny_model.TinyModel` to predict the noise
(or v), guided sampling with a CFG scale per step, and the CPU settings and seeding that make both
deterministic.

Everything runs deterministically on the CPU: each phase seeds its own generators, so the same seeds
give the same weights and images bit for bit, and leaves torch's global generator as it found it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from chain.backends.base import Progress
from chain.backends.tiny_model import TinyModel
from chain.errors import ChainError
from qtm.params import effective_eta


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
    eta = effective_eta(sampler, 0.0)
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


def pin_cpu() -> None:
    """Run torch on ``$CHAIN_THREADS`` CPU threads (default one; :func:`cpu_threads`).

    On a shared, busy CPU, OpenMP worker threads that spin waiting for each other
    cost far more than they save on such small operations: on the team's 2-core
    machine at load average ~7, a training step took 0.077 s per example with two
    threads against 0.004 s with one. On an idle machine more threads are faster
    (rgb32 on 2 idle cores: 12.5 ms per training example and 3.7 ms per image and
    network pass with two threads, 20 ms and 7 ms with one); set ``CHAIN_THREADS``
    to the free cores there. One thread is the robust default, and keeps
    floating-point sums in one fixed order whatever the machine.
    """
    torch.set_num_threads(cpu_threads())


def cpu_threads() -> int:
    """The CPU threads ``$CHAIN_THREADS`` asks for (default one): a whole number from 1 to the cores this process
    may use. More threads than cores only wait for each other (999 threads on 2 cores: 34 s where one took 7 s),
    so that is refused rather than run slowly.

    Examples
    --------
    >>> 1 <= cpu_threads() <= os.cpu_count()
    True
    """
    text = os.environ.get("CHAIN_THREADS", "1")
    try:
        threads = int(text)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ChainError(f"CHAIN_THREADS={text!r} is not a number of threads; set a whole number >= 1 or unset it")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if threads > cores:
        raise ChainError(f"CHAIN_THREADS={threads} is more threads than the {cores} CPU core(s) this process may use; "
                         f"set at most {cores} or unset it (one thread)")
    return threads


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
