"""Time of a 5-iteration 32 px RGB chain on emoji, base-model training included (goal: under 30 minutes on 2 cores).

Runs the chain in-process with the ``rgb32`` preset (frozen MiniLM captions) on a fresh
base-model cache, so the base model is trained, and prints per phase the wall time, the
process's CPU time and images/s, with the machine's load average, and per iteration where the wall time
goes: assembling the training set, finetuning, saving the weights, generating, writing the images (and,
inside finetuning and generating, encoding the captions); the total says which kinds of work hold the
time above the goal. The backend runs torch
on ``$CHAIN_THREADS`` threads (:func:`chain.backends.tiny_loops.pin_cpu`; default one): with one
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


class PhaseReporter:
    """A silent chain reporter that keeps each phase's wall and CPU time by its description, and the time spent
    encoding captions inside each phase (:meth:`encoding`)."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.encode: dict[str, float] = {}
        self.current = "outside a phase"

    @contextlib.contextmanager
    def task(self, description: str, total: int):
        self.current, clock = description, Clock()
        yield lambda done, total: None
        self.wall[description], self.cpu[description] = clock.read()
        self.current = "outside a phase"

    def line(self, text: str) -> None:
        """Iteration summaries are printed from the records instead."""

    def encoding(self, condition):
        """``condition`` (a model's caption encoder) timed into the phase that calls it."""

        def timed(captions):
            began = time.perf_counter()
            try:
                return condition(captions)
            finally:
                self.encode[self.current] = self.encode.get(self.current, 0.0) + time.perf_counter() - began

        return timed


#: The phases of an iteration, as the chain reports them (``iteration T: NAME``), and their names here.
PHASES = {"reading the training set": "training set", "finetuning": "finetune", "saving the weights": "weights",
          "generating": "generate", "writing the images": "write images"}


def sample_grid(backend, dataset, path: str, *, rows: int = 12, per_row: int = 6) -> None:
    """The base model's images at CFG 3 (DDIM, 25 steps) for the ``rows`` most frequent captions, two real images first.

    Each row is labelled with its caption; columns 1-2 are real, the rest generated.
    """
    from collections import Counter

    from PIL import Image, ImageDraw

    from qtm.schedules import CFGSchedule

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
    """Load the data, train the base model (unless cached), run the chain into ``run_dir``; print where the time goes:
    the wall seconds of each kind of work (data loading, base model, the iteration phases of :data:`PHASES`,
    caption encoding inside them, and the rest)."""
    from chain.backends.tiny import TinyBackend
    from chain.backends.tiny_config import preset_config
    from chain.data import load_dataset
    from chain.run_parameters import RunParameters
    from chain.runner import run_chain

    options = {"steps": 5, "train_steps": 5} if smoke else settings
    params = RunParameters(data=data, preset=preset, text_encoder=text_encoder, iterations=iterations, cfg=cfg,
                           device="cpu", **options)
    resolved = params.resolve()
    clock = Clock()
    dataset = load_dataset(data)
    load_wall, load_cpu = clock.read()
    config = preset_config(preset, text_encoder=text_encoder, data=data, **overrides)
    cache = Path(os.environ["CHAIN_TINY_CACHE"])
    before = set(cache.glob("*.pt"))
    clock = Clock()
    backend = TinyBackend(config=config, dataset=dataset, learning_rate=resolved["learning_rate"],
                          train_steps=resolved["train_steps"], batch_size=resolved["batch_size"])
    base_wall, base_cpu = clock.read()
    cached = not set(cache.glob("*.pt")) - before
    size = len(dataset)
    examples = config.base_train_steps * min(config.base_batch_size, size)
    print(f"{label}: {size} images loaded in {load_wall:.1f} s wall, {load_cpu:.1f} s CPU", flush=True)
    if cached:
        print(f"  base model read from the cache ({base_wall:.0f} s): not trained, not timed", flush=True)
    else:
        print(f"  base model ({config.base_train_steps} steps x {config.base_batch_size}) {base_wall:.0f} s wall, "
              f"{base_cpu:.0f} s CPU, {examples / base_wall:.0f} examples/s (wall)", flush=True)
    if grid:
        sample_grid(backend, dataset, grid)
    reporter = PhaseReporter()
    backend.model.condition = reporter.encoding(backend.model.condition)
    chain_clock = Clock()
    records = run_chain(run_dir, params, backend=backend, data=dataset, reporter=reporter)
    chain_wall, chain_cpu = chain_clock.read()
    spent = {"data loading": load_wall, "base model": 0.0 if cached else base_wall}
    for record in records:
        t, gen = record["iteration"], record["generate"]
        parts = {short: reporter.wall.get(f"iteration {t}: {phase}", 0.0) for phase, short in PHASES.items()}
        encode = {short: reporter.encode.get(f"iteration {t}: {phase}", 0.0) for phase, short in PHASES.items()}
        parts["other"] = record["seconds"] - sum(parts.values())
        for short, seconds in parts.items():
            spent[short] = spent.get(short, 0.0) + seconds
        spent["caption encoding (in finetune, generate)"] = spent.get(
            "caption encoding (in finetune, generate)", 0.0) + encode["finetune"] + encode["generate"]
        gen_cpu = reporter.cpu[f"iteration {t}: generating"]
        print(f"  iteration {t}: {record['seconds']:.1f} s wall = "
              + ", ".join(f"{short} {seconds:.1f}" for short, seconds in parts.items())
              + f" (caption encoding {encode['finetune']:.1f} of finetune, {encode['generate']:.1f} of generate); "
              f"{gen['images'] / gen['seconds']:.1f} images/s wall, {gen['images'] / gen_cpu:.1f} images/s CPU",
              flush=True)
    total_wall, total_cpu = load_wall + base_wall + chain_wall, load_cpu + base_cpu + chain_cpu
    load = os.getloadavg()
    what = "total" if cached else "total incl. base training"
    print(f"  {label} {what}: {total_wall:.0f} s wall, {total_cpu:.0f} s CPU; ratio to the "
          f"{GOAL_SECONDS:.0f} s goal {total_wall / GOAL_SECONDS:.2f} (wall), {total_cpu / GOAL_SECONDS:.2f} (CPU); "
          f"load average now {load[0]:.1f} (1-minute), {load[2]:.1f} (15-minute)", flush=True)
    print("  " + where_the_time_goes(spent, total_wall), flush=True)


def where_the_time_goes(spent: dict[str, float], total: float) -> str:
    """One line: each kind of work's wall seconds and share, largest first, and what lies above the goal."""
    nested = "caption encoding (in finetune, generate)"
    shares = sorted(((seconds, kind) for kind, seconds in spent.items() if kind != nested), reverse=True)
    text = "time by kind: " + ", ".join(f"{kind} {seconds:.0f} s ({seconds / total:.0%})" for seconds, kind in shares)
    text += f"; caption encoding {spent.get(nested, 0.0):.0f} s of finetune and generate"
    over = total - GOAL_SECONDS
    if over <= 0:
        return text + f"; {-over:.0f} s under the {GOAL_SECONDS:.0f} s goal"
    # The largest kinds that together exceed the time above the goal: where it must be saved.
    covered, needed = 0.0, []
    for seconds, kind in shares:
        needed.append(kind)
        covered += seconds
        if covered >= over:
            break
    return text + (f"; {over:.0f} s above the {GOAL_SECONDS:.0f} s goal, spent in {' + '.join(needed)} "
                   f"({covered:.0f} s together)")


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
