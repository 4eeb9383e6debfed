"""Shared test set-up: every test runs offline; expensive artefacts are built once per session.

``make test`` runs the suite on every core (pytest-xdist, ``--dist loadgroup``): each worker is its own session,
so an artefact that several workers need (a trained base model) is built once, by whichever worker asks first,
into the folder all workers share, under a file lock (:func:`build_once`).
"""

import importlib.util
import os
from pathlib import Path

import pytest
from filelock import FileLock
from hypothesis import HealthCheck, settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# One thread per process for OpenMP, OpenBLAS and MKL: the suite already runs one worker per core, and a second
# pool per worker only spins against the other worker (the suite's CPU time fell from about 460 to 364 s).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

# The fuzz tests of hostile input (tests/test_probes_*.py) take their settings from the profile that
# HYPOTHESIS_PROFILE names: "quick" in the suite (the same 40 examples every run), and `make fuzz`'s "fuzz"
# (500 new examples per surface each run).
_FUZZ_BASE = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]}
settings.register_profile("quick", max_examples=40, derandomize=True, database=None, **_FUZZ_BASE)
settings.register_profile("fuzz", max_examples=500, **_FUZZ_BASE)


def load_tool(name: str):
    """The script ``tools/<name>.py`` as a module (the tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_configure(config):
    """Stop a ``--dist loadgroup`` run whose ``xdist_group`` groups would be split.

    pytest-xdist tells its scheduler a test's group by writing ``name@group`` into the field that held the
    node id; pytest 9.2 no longer reads that field (pytest-xdist#1386), so the groups are dealt out test by
    test without an error: two workers then train the same base model and the README's commands run out of order.
    """
    if config.getoption("dist", "no") == "loadgroup" and not _reads_xdist_group_suffix():
        raise pytest.UsageError(
            f"pytest {pytest.__version__} ignores pytest-xdist's --dist loadgroup groups (pytest-xdist#1386): "
            "install the pytest that pyproject.toml's dev extra names (`pip install -e '.[dev]'`)"
        )


def _reads_xdist_group_suffix() -> bool:
    """Whether an item's node id is the ``_nodeid`` field pytest-xdist's loadgroup rewrites."""
    probe = object.__new__(pytest.Function)
    probe._nodeid = "probe@group"
    try:
        return probe.nodeid == "probe@group"
    except AttributeError:
        return False


def build_once(tmp_path_factory: pytest.TempPathFactory, name: str, build) -> Path:
    """The folder ``name``, filled by ``build(folder)`` once for the whole run, whichever worker asks first.

    Without xdist the folder lies in this session's temporary root; with it, in the root that all workers'
    roots share. A ``.done`` marker is written last, so a worker killed while building leaves a folder the next
    one builds again.
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder = root / name
    with FileLock(str(root / f"{name}.lock")):
        if not (folder / ".done").exists():
            folder.mkdir(exist_ok=True)
            build(folder)
            (folder / ".done").touch()
    return folder
