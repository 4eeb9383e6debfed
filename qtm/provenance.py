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


#: The distribution whose metadata holds the version (pyproject.toml's ``[project] version``, its one place).
DISTRIBUTION = "chain-of-diffusion"


def package_version() -> str:
    """The toolkit's version, read from the installed package's metadata (``0+unknown`` when not installed).

    Examples
    --------
    >>> package_version().count(".") >= 1
    True
    """
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "0+unknown"


def version_line(program: str) -> str:
    """What ``PROGRAM --version`` prints: the version, and the git commit when run from a checkout.

    Examples
    --------
    >>> version_line("qtm").startswith("qtm " + package_version())
    True
    """
    commit = git_commit()
    return f"{program} {package_version()}" + (f" (git {commit[:12]})" if commit else "")


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
    return {
        "software": software,
        "version": package_version(),
        "parameters": parameters,
        "seed": seed,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "command": sys.argv,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
    }
