"""The ``chain`` command line program: ``chain run``, ``chain validate``, ``chain data``, ``chain verify-sampler``.

Each command lives in its own module; this file only registers them, each with an example for its help.
"""

from __future__ import annotations

from commands.chain_data import data_command
from commands.chain_run import run as run_command
from commands.chain_validate import validate_command
from commands.chain_verify_sampler import verify_sampler_command
from commands.common import run_app
from commands.program import add_command, make_app

app = make_app("chain", "Run the real Chain of Diffusion and validate the theory against it.")
add_command(app, "run", run_command, example="chain run runs/tiny-cfg7.5 --backend tiny --cfg 7.5 --iterations 5")
add_command(app, "validate", validate_command,
            example="chain validate runs/tiny-cfg7.5 --embedder stats --make-reference --report runs/tiny-report")
add_command(app, "data", data_command, example="chain data digits:200 --captions 10")
add_command(app, "verify-sampler", verify_sampler_command,
            example="chain verify-sampler --check sampler_map_diffusers --size 0.1 --out runs/verify-sampler")


def main() -> None:
    """Entry point of the ``chain`` console script."""
    run_app(app, "chain")


if __name__ == "__main__":
    main()
