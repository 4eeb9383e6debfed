"""The docs site builds with ``mkdocs build --strict`` (warnings are errors), where mkdocs is installed (the dev
extra); about 10 s on 2 cores. The quickstart page runs in ``tests/test_quickstart.py``."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_the_docs_site_builds_without_a_warning(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip("the docs site needs the dev extra (mkdocs, mkdocs-material, mkdocstrings)")
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "site" / "quickstart" / "index.html").is_file()
    assert (tmp_path / "site" / "api" / "qtm" / "index.html").is_file()
