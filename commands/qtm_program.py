"""The ``qtm`` command line program.

Each command lives in its own module (``commands/qtm_*.py``); this file only registers them, each with an
example for its help, so that the commands stay independent of each other.
"""

from __future__ import annotations

from commands.common import run_app
from commands.program import add_command, make_app
from commands.qtm_figures import figures_command
from commands.qtm_map import map_command
from commands.qtm_simulate import simulate
from commands.qtm_verify import verify_command

app = make_app("qtm", "Quantitative-genetics theory of model collapse in the Chain of Diffusion.")
add_command(app, "map", map_command, example="qtm map --cfg 7.5 --schedule cosine --sampler ddim --json")
add_command(app, "simulate", simulate,
            example="qtm simulate --cfg 1:9:2 --schedule constant,cosine --drop 0,0.2 --out runs/sweep.parquet")
add_command(app, "verify", verify_command, example="qtm verify --check drift --size 0.1 --out runs/verify")
add_command(app, "figures", figures_command, example="qtm figures --only chain --format png --out figures")


def main() -> None:
    """Entry point of the ``qtm`` console script."""
    run_app(app, "qtm")


if __name__ == "__main__":
    main()
