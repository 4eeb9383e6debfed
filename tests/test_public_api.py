"""The public API of each package: ``__all__`` names documented functions whose examples run.

Each name of ``qtm.__all__``, ``chain.__all__`` and ``validate.__all__`` must exist, carry a numpydoc docstring
with an ``Examples`` section, and its examples must pass as doctests (an example that needs a trained chain is
marked ``+SKIP`` in its docstring: ``chain.run_chain`` trains a base model, minutes on a CPU; the quickstart test
runs the same call on the tests' reduced model). Importing the packages stays light: no torch, no numba.
"""

from __future__ import annotations

import doctest
import importlib
import os
import pydoc
import subprocess
import sys

import pytest

PACKAGES = ("qtm", "chain", "validate")
#: Names whose examples need the chain extra (torch, diffusers, scikit-learn's digits).
NEEDS_CHAIN = {("chain", "run_chain"), ("chain", "load_dataset"), ("chain", "describe_dataset"),
               ("validate", "validate_runs")}
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _public():
    for package in PACKAGES:
        module = importlib.import_module(package)
        for name in module.__all__:
            yield package, name


@pytest.mark.parametrize(("package", "name"), list(_public()), ids=lambda value: str(value))
def test_public_name_is_documented_and_its_examples_run(package, name, tmp_path, monkeypatch):
    if (package, name) in NEEDS_CHAIN:
        pytest.importorskip("torch")
    module = importlib.import_module(package)
    value = getattr(module, name)
    text = value.__doc__ or ""
    assert "Examples\n" in text and "--------" in text.split("Examples\n", 1)[1][:40], f"{package}.{name}"
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    tests = doctest.DocTestFinder(recurse=False).find(value, f"{package}.{name}", globs=vars(
        importlib.import_module(value.__module__)).copy())
    assert tests and any(t.examples for t in tests), f"{package}.{name} has no runnable example"
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in tests:
        runner.run(test)
    assert runner.failures == 0, f"{package}.{name}: {runner.failures} example(s) failed (run pytest -s to see)"


@pytest.mark.parametrize("package", PACKAGES)
def test_package_docstring_lists_the_api_and_its_example_runs(package):
    module = importlib.import_module(package)
    shown = pydoc.render_doc(module, renderer=pydoc.plaintext)
    for name in module.__all__:
        assert f":func:`{name}`" in shown or f":class:`{name}`" in shown, f"help({package}) does not list {name}"
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in doctest.DocTestFinder(recurse=False).find(module, package):
        runner.run(test)
    assert runner.failures == 0


def test_importing_the_packages_loads_neither_torch_nor_numba():
    code = "import sys, qtm, chain, validate; print(sorted({'torch', 'numba'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.stdout.strip() == "[]"


def test_bad_input_through_the_api_raises_the_command_lines_error():
    import qtm
    from qtm.errors import QTMError

    with pytest.raises(QTMError, match=r"^--cfg must be >= 0, got -1$"):
        qtm.sampler_law(cfg=-1)
    with pytest.raises(QTMError, match="unknown sweep option"):
        qtm.sweep(cgf=3)
