"""Wall time of a 5-iteration tiny chain including the one-time base-model training (goal: under 10 minutes).

Runs ``chain run`` in-process with the default tiny settings on a fresh base-model
cache (so the base model is trained), and prints the wall time, the machine's load
average before and after, and the ratio to the 10-minute goal.

Baseline, measured in the same run: 20 finetuning steps of the tiny model with
torch's default thread count against the backend's single thread (the backend pins
one thread because a busy shared CPU makes spinning worker threads very costly; on
an idle machine two threads are a little faster).

Run: ``.venv/bin/python benchmarks/tiny_chain.py [--iterations 5] [--data digits:500]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from _memory import peak_line

GOAL_SECONDS = 600.0


def finetune_seconds(threads: int, steps: int = 20) -> float:
    import torch

    from chain.backends.tiny_config import TinyConfig
    from chain.backends.tiny_loops import train_diffusion
    from chain.backends.tiny_model import TinyModel
    from chain.data import digits_arrays

    torch.set_num_threads(threads)
    config = TinyConfig()
    model = TinyModel(config)
    images, captions = digits_arrays(resolution=config.resolution)
    data = torch.from_numpy(images)[:, None] * 2.0 - 1.0
    began = time.perf_counter()
    train_diffusion(model, data, captions, steps=steps, batch_size=64, learning_rate=1e-3, drop=0.1, seed=0,
                    num_train_timesteps=config.num_train_timesteps)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--data", default="digits:500")
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--baseline-only", action="store_true", help="measure only the thread baseline")
    args = parser.parse_args()

    default_threads = __import__("torch").get_num_threads()
    finetune_seconds(default_threads, steps=2)  # warm-up: first-call costs belong to neither side
    many, one = finetune_seconds(default_threads), finetune_seconds(1)
    print(f"baseline: 20 finetuning steps, {default_threads} threads {many:.1f} s, 1 thread {one:.1f} s "
          f"(ratio {many / one:.2f})")

    if args.baseline_only:
        return
    from chain.run_parameters import RunParameters
    from chain.runner import run_chain

    with tempfile.TemporaryDirectory() as scratch:
        os.environ["CHAIN_TINY_CACHE"] = str(Path(scratch) / "cache")
        load_before = os.getloadavg()
        began = time.perf_counter()
        records = run_chain(Path(scratch) / "run", RunParameters(data=args.data, iterations=args.iterations,
                                                                 cfg=args.cfg, device="cpu"))
        seconds = time.perf_counter() - began
        load_after = os.getloadavg()
    per_iteration = [round(r["seconds"], 1) for r in records]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after (1-minute), {load_after[2]:.1f} (15-minute)")
    print(f"{args.iterations}-iteration tiny chain on {args.data} incl. base training: {seconds:.0f} s "
          f"(iterations {per_iteration} s); ratio to the {GOAL_SECONDS:.0f} s goal {seconds / GOAL_SECONDS:.2f}")
    print(peak_line())


if __name__ == "__main__":
    main()
