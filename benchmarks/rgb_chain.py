"""Time of a 5-iteration 32 px RGB chain on emoji, base-model training included (goal: under 30 minutes on 2 cores).

Runs the chain in-process with the ``rgb32`` preset (frozen MiniLM captions) on a fresh
base-model cache, so the base model is trained, and prints per phase the wall time, the
process's CPU time and images/s, with the machine's load average. The backend runs torch
on ``$CHAIN_THREADS`` threads (:func:`chain.backends.tiny.pin_cpu`; default one): with one
thread the wall time on an idle machine is the CPU time, and on a shared, loaded machine the
CPU time is the honest estimate of the idle wall time. ``CHAIN_THREADS=2`` uses both cores of
an idle 2-core machine (the figure the goal is about).

Reference, timed in the same run: the tiny digits chain with its default settings
(``digits8``, ``digits:500``, base training included).

Run: ``.venv/bin/python benchmarks/rgb_chain.py [--data emoji:32 --data pokemon:32] [--iterations 5]``;
``--smoke`` runs 1 iteration with a 20-step base model and 5 sampling steps (a check that it runs, no figure);
``--runs DIR`` keeps the run directories there (``DIR/NAME-cfgW``, e.g. ``emoji-cfg3``: the RGB study's
``make rgb-study-runs`` then finds its CFG-3 chains done) and ``--cache DIR`` keeps the base models
(a base model found there is read, not trained, and the total says so);
``--grid PATH`` also writes a sample grid of the first data set's base model at CFG 3 (``make rgb-study``
copies it into docs/rgb_study/).
"""

from __future__ import annotations

import argparse
import contextlib
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


class CpuReporter:
    """A silent chain reporter that keeps each phase's CPU time, by its description."""

    def __init__(self):
        self.cpu: dict[str, float] = {}

    @contextlib.contextmanager
    def task(self, description: str, total: int):
        began = time.process_time()
        yield lambda done, total: None
        self.cpu[description] = time.process_time() - began

    def line(self, text: str) -> None:
        """Iteration summaries are printed from the records instead."""


def sample_grid(backend, data: str, path: str, *, rows: int = 12, per_row: int = 6) -> None:
    """The base model's images at CFG 3 (DDIM, 25 steps) for the ``rows`` most frequent captions, two real images first.

    Each row is labelled with its caption; columns 1-2 are real, the rest generated.
    """
    from collections import Counter

    from PIL import Image, ImageDraw

    from chain.data import load_dataset
    from qtm.schedules import CFGSchedule

    dataset = load_dataset(data)
    captions = [caption for caption, _ in Counter(dataset.captions).most_common(rows)]
    rows = len(captions)
    prompts = [caption for caption in captions for _ in range(per_row)]
    images = backend.generate(prompts, cfg=3.0, schedule=CFGSchedule(), seeds=range(len(prompts)), steps=25,
                              sampler="ddim")
    size = backend.config.resolution
    cell, label = size + 2, 150
    canvas = Image.new("RGB", (label + cell * (per_row + 2) + 4, cell * rows), "white")
    draw = ImageDraw.Draw(canvas)
    for r, caption in enumerate(captions):
        draw.text((2, r * cell + size // 2 - 5), caption, fill="black")
        real = [image for image, c in zip(dataset.images, dataset.captions, strict=True) if c == caption][:2]
        for k, image in enumerate(real + images[r * per_row : (r + 1) * per_row]):
            canvas.paste(image.convert("RGB").resize((size, size)), (label + cell * k + (4 if k >= 2 else 0), r * cell))
    canvas.save(path)
    print(f"wrote {path}: rows {', '.join(captions)}; columns 1-2 real, then the base model at CFG 3", flush=True)


def chain(label: str, data: str, run_dir: Path, *, preset: str, text_encoder: str | None, iterations: int,
          cfg: float, overrides: dict, smoke: bool, settings: dict, grid: str | None = None) -> None:
    """Train the base model (unless cached), run the chain into ``run_dir``, print per-phase times."""
    from chain.backends.tiny import TinyBackend, base_model_path, preset_config
    from chain.data import load_dataset
    from chain.runner import RunParameters, run_chain

    options = {"steps": 5, "train_steps": 5} if smoke else settings
    params = RunParameters(data=data, preset=preset, text_encoder=text_encoder, iterations=iterations, cfg=cfg,
                           device="cpu", **options)
    resolved = params.resolve()
    size = len(load_dataset(data))
    config = preset_config(preset, text_encoder=text_encoder, data=data, **overrides)
    cached = base_model_path(config).exists()
    clock = Clock()
    backend = TinyBackend(config=config, learning_rate=resolved["learning_rate"], train_steps=resolved["train_steps"],
                          batch_size=resolved["batch_size"])
    base_wall, base_cpu = clock.read()
    examples = config.base_train_steps * min(config.base_batch_size, size)
    if cached:
        print(f"{label}: {size} images; base model read from the cache ({base_wall:.0f} s): not trained, not timed",
              flush=True)
    else:
        print(f"{label}: {size} images; base model ({config.base_train_steps} steps x {config.base_batch_size}) "
              f"{base_wall:.0f} s wall, {base_cpu:.0f} s CPU, {examples / base_wall:.0f} examples/s (wall)",
              flush=True)
    if grid:
        sample_grid(backend, data, grid)
    chain_clock = Clock()
    reporter = CpuReporter()
    records = run_chain(run_dir, params, backend=backend, reporter=reporter)
    chain_wall, chain_cpu = chain_clock.read()
    for record in records:
        t, fine, gen = record["iteration"], record["finetune"], record["generate"]
        fine_cpu, gen_cpu = reporter.cpu[f"iteration {t}: finetuning"], reporter.cpu[f"iteration {t}: generating"]
        print(f"  iteration {t}: {record['seconds']:.0f} s wall; finetune {fine['seconds']:.0f} s wall, "
              f"{fine_cpu:.0f} s CPU; generate {gen['seconds']:.0f} s wall, {gen_cpu:.0f} s CPU, "
              f"{gen['images'] / gen['seconds']:.1f} images/s wall, {gen['images'] / gen_cpu:.1f} images/s CPU")
    total_wall, total_cpu = base_wall + chain_wall, base_cpu + chain_cpu
    load = os.getloadavg()
    what = "total" if cached else "total incl. base training"
    print(f"  {label} {what}: {total_wall:.0f} s wall, {total_cpu:.0f} s CPU; ratio to the "
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
    parser.add_argument("--steps", type=int, help="sampling steps of the RGB chain (default: the backend's)")
    parser.add_argument("--train-steps", type=int, help="finetuning steps per iteration (default: the backend's)")
    parser.add_argument("--batch-size", type=int, help="finetuning batch size (default: the backend's)")
    parser.add_argument("--grid", help="write the first data set's base-model sample grid at CFG 3 here")
    parser.add_argument("--runs", help="keep the run directories here (default: a temporary folder)")
    parser.add_argument("--cache", help="keep the base models here (default: a fresh temporary folder)")
    args = parser.parse_args()
    iterations = 1 if args.smoke else args.iterations
    overrides = {"base_train_steps": 20} if args.smoke else {}
    settings = {k: v for k, v in (("steps", args.steps), ("train_steps", args.train_steps),
                                  ("batch_size", args.batch_size)) if v is not None}

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"CHAIN_THREADS={os.environ.get('CHAIN_THREADS', '1')}; load average {os.getloadavg()[0]:.1f} (1-minute) "
          "at the start", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        runs = Path(args.runs) if args.runs else Path(scratch)
        os.environ["CHAIN_TINY_CACHE"] = args.cache or str(Path(scratch) / "cache")
        name = f"cfg{args.cfg:g}"
        if not args.no_reference:
            chain("digits (reference)", "digits:500", Path(scratch) / "digits", preset="digits8", text_encoder=None,
                  iterations=iterations, cfg=args.cfg, overrides=overrides, smoke=args.smoke, settings={})
        for k, data in enumerate(args.data or ["emoji:32"]):
            chain(data, data, runs / f"{data.partition(':')[0]}-{name}", preset=args.preset,
                  text_encoder=args.text_encoder, iterations=iterations, cfg=args.cfg, overrides=overrides,
                  smoke=args.smoke, settings=settings, grid=args.grid if k == 0 else None)
    print(peak_line())


if __name__ == "__main__":
    main()
