"""Time of a 5-iteration 32 px RGB chain on emoji, base-model training included (goal: under 30 minutes on 2 cores).

Runs the chain in-process with the ``rgb32`` preset (frozen MiniLM captions) on a fresh
base-model cache, so the base model is trained, and prints per phase the wall time, the
process's CPU time and images/s, with the machine's load average. The backend runs torch
on one thread (:func:`chain.backends.tiny.pin_cpu`), so on an idle machine its wall time is
its CPU time: on a shared, loaded machine the CPU time is the honest estimate of the idle
wall time (and still a pessimistic one: a loaded CPU runs each thread slower).

Reference, timed in the same run: the tiny digits chain with its default settings
(``digits8``, ``digits:500``, base training included).

Run: ``.venv/bin/python benchmarks/rgb_chain.py [--data emoji:32 --data pokemon:32] [--iterations 5]``;
``--smoke`` runs 1 iteration with a 20-step base model and 5 sampling steps (a check that it runs, no figure).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from _memory import peak_line

GOAL_SECONDS = 1800.0


class Clock:
    """Wall and process CPU time since it was made."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def chain(label: str, data: str, scratch: Path, *, preset: str, text_encoder: str | None, iterations: int,
          cfg: float, overrides: dict, smoke: bool) -> None:
    """Train the base model, run the chain, print per-phase times; the model is cached under ``scratch``."""
    from chain.backends.tiny import TinyBackend, preset_config
    from chain.data import load_dataset
    from chain.runner import RunParameters, run_chain

    options = {"steps": 5, "train_steps": 5} if smoke else {}
    params = RunParameters(data=data, preset=preset, text_encoder=text_encoder, iterations=iterations, cfg=cfg,
                           device="cpu", **options)
    resolved = params.resolve()
    size = len(load_dataset(data))
    clock = Clock()
    config = preset_config(preset, text_encoder=text_encoder, data=data, **overrides)
    backend = TinyBackend(config=config, learning_rate=resolved["learning_rate"], train_steps=resolved["train_steps"],
                          batch_size=resolved["batch_size"])
    base_wall, base_cpu = clock.read()
    examples = config.base_train_steps * min(config.base_batch_size, size)
    print(f"{label}: {size} images; base model ({config.base_train_steps} steps x {config.base_batch_size}) "
          f"{base_wall:.0f} s wall, {base_cpu:.0f} s CPU, {examples / base_cpu:.0f} examples/s (CPU)", flush=True)
    chain_clock = Clock()
    records = run_chain(scratch / f"run-{label}", params, backend=backend)
    chain_wall, chain_cpu = chain_clock.read()
    for record in records:
        fine, gen = record["finetune"], record["generate"]
        print(f"  iteration {record['iteration']}: {record['seconds']:.0f} s wall (finetune {fine['seconds']:.0f} s, "
              f"generate {gen['seconds']:.0f} s, {gen['images'] / gen['seconds']:.1f} images/s wall)")
    total_wall, total_cpu = base_wall + chain_wall, base_cpu + chain_cpu
    load = os.getloadavg()
    print(f"  {label} total incl. base training: {total_wall:.0f} s wall, {total_cpu:.0f} s CPU; ratio to the "
          f"{GOAL_SECONDS:.0f} s goal {total_wall / GOAL_SECONDS:.2f} (wall), {total_cpu / GOAL_SECONDS:.2f} (CPU); "
          f"load average now {load[0]:.1f} (1-minute), {load[2]:.1f} (15-minute)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", help="data sets to chain (default emoji:32); repeatable")
    parser.add_argument("--preset", default="rgb32")
    parser.add_argument("--text-encoder", default="minilm")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--cfg", type=float, default=3.0)
    parser.add_argument("--smoke", action="store_true", help="1 iteration, 20 base steps, 5 sampling steps")
    parser.add_argument("--no-reference", action="store_true", help="skip the tiny digits chain")
    args = parser.parse_args()
    iterations = 1 if args.smoke else args.iterations
    overrides = {"base_train_steps": 20} if args.smoke else {}

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; load average "
          f"{os.getloadavg()[0]:.1f} (1-minute) at the start", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["CHAIN_TINY_CACHE"] = str(Path(scratch) / "cache")
        if not args.no_reference:
            chain("digits (reference)", "digits:500", Path(scratch), preset="digits8", text_encoder=None,
                  iterations=iterations, cfg=args.cfg, overrides=overrides, smoke=args.smoke)
        for data in args.data or ["emoji:32"]:
            chain(data, data, Path(scratch), preset=args.preset, text_encoder=args.text_encoder,
                  iterations=iterations, cfg=args.cfg, overrides=overrides, smoke=args.smoke)
    print(peak_line())


if __name__ == "__main__":
    main()
