"""Provenance carried by every output: parameters, seed, package versions, git commit, time."""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

_PACKAGES = (
    "numpy", "scipy", "numba", "pandas", "pyarrow",
    "torch", "torchvision", "diffusers", "peft", "transformers", "open_clip_torch",
)


def package_versions(names=_PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that can change a result (absent ones are left out)."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit() -> str | None:
    """The commit of the source tree this package runs from, or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def provenance(parameters: dict, *, seed=None, software: str = "qtm") -> dict:
    """A JSON-ready record of how an output was made.

    Examples
    --------
    >>> record = provenance({"cfg": 7.5}, seed=1)
    >>> record["parameters"], record["seed"]
    ({'cfg': 7.5}, 1)
    """
    from qtm import __version__

    return {
        "software": software,
        "version": __version__,
        "parameters": parameters,
        "seed": seed,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "command": sys.argv,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
    }
