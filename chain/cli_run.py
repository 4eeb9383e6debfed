"""``chain run``: run or resume the Chain of Diffusion in a run directory."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import typer

from chain.runner import Reporter, RunParameters, run_chain
from qtm.grid import load_config


class RichReporter(Reporter):
    """Rich progress bars on stderr for each phase, and one summary line per finished iteration."""

    def __init__(self):
        from rich.console import Console

        self.console = Console(stderr=True)

    @contextlib.contextmanager
    def task(self, description: str, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=self.console, transient=True) as bars:
            task = bars.add_task(description, total=total)
            yield lambda done, total: bars.update(task, completed=done, total=total)

    def line(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True)


def run(
    run_dir: Path = typer.Argument(..., help="Run directory (created, or resumed if it exists), e.g. runs/NAME."),
    data: str = typer.Option(
        None,
        help="Image folder with metadata.jsonl; hf:NAME[:SPLIT][?image=COL&caption=COL] (Hugging Face datasets); "
        "or digits / digits:N (default digits:500).",
    ),
    backend: str = typer.Option(None, help="tiny (offline, CPU) or sd (diffusers Stable Diffusion)."),
    model: str = typer.Option(None, help="sd: a diffusers model id or local directory."),
    iterations: int = typer.Option(None, help="Number of iterations (default 5); more extend a finished run."),
    cfg: float = typer.Option(None, help="Classifier-free guidance scale (peak of the schedule; default 7.5)."),
    schedule: str = typer.Option(None, help="CFG schedule shape: constant, linear[:END], cosine[:END], cutoff:F, ..."),
    drop: float = typer.Option(None, help="Condition-drop probability while finetuning, in [0, 1)."),
    redifine: bool = typer.Option(False, "--redifine", help="ReDiFine: the default drop plus the cosine schedule."),
    finetune: str = typer.Option(None, help="Start each finetuning from the 'base' model or 'continue'."),
    per_caption: int = typer.Option(None, help="Images generated per caption (default 1)."),
    real_fraction: float = typer.Option(None, help="Fraction of each training set replaced by real images."),
    steps: int = typer.Option(None, help="Denoising steps per image."),
    sampler: str = typer.Option(None, help="ddim or ddpm."),
    lora_rank: int = typer.Option(None, help="sd: LoRA rank of the finetuning."),
    full_finetune: bool = typer.Option(False, "--full-finetune", help="Finetune all UNet weights instead of LoRA."),
    learning_rate: float = typer.Option(None, help="Finetuning learning rate."),
    train_steps: int = typer.Option(None, help="Finetuning steps per iteration."),
    batch_size: int = typer.Option(None, help="Finetuning batch size."),
    resolution: int = typer.Option(None, help="Image side in pixels."),
    seed: int = typer.Option(None, help="Run seed; every image and finetuning seed derives from it (default 0)."),
    device: str = typer.Option(None, help="cpu, cuda or cuda:N (default: cuda when present)."),
    config: Path = typer.Option(None, help="TOML file of options; options given here win."),
) -> None:
    """Run the chain: finetune on the data, generate, finetune on what was generated, repeat.

    Rerunning the same command on the same run directory resumes it: finished
    iterations are kept, an unfinished one is redone.
    """
    given = {
        "data": data, "backend": backend, "model": model, "iterations": iterations, "cfg": cfg,
        "schedule": schedule, "drop": drop, "redifine": redifine or None, "finetune": finetune,
        "per_caption": per_caption, "real_fraction": real_fraction, "steps": steps, "sampler": sampler,
        "lora_rank": lora_rank, "full_finetune": full_finetune or None, "learning_rate": learning_rate,
        "train_steps": train_steps, "batch_size": batch_size, "resolution": resolution, "seed": seed,
        "device": device,
    }
    options = load_config(config, allowed=[field.name for field in dataclasses.fields(RunParameters)]) if config else {}
    options.update({key: value for key, value in given.items() if value is not None})
    reporter = RichReporter()
    records = run_chain(run_dir, RunParameters(**options), reporter=reporter)
    reporter.line(f"{run_dir}: {len(records)} iteration(s) complete")
