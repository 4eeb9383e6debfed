"""The Python quickstart page (docs/quickstart.md) runs as written.

Its ```python blocks run in order, as one script, in a temporary folder; its tiny chain uses the tests' reduced base
model (``test_chain_tiny.tiny_cache``), so it runs in that xdist group (about 20 s on 2 cores with the model built).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_chain_tiny import tiny_cache  # noqa: F401  (the fixture: the tests' reduced base model)

QUICKSTART = Path(__file__).resolve().parents[1] / "docs" / "quickstart.md"


def python_blocks(markdown: str) -> list[str]:
    """The ```python blocks of a Markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


@pytest.mark.chain
@pytest.mark.xdist_group("tiny-chain")
def test_the_quickstart_runs(tiny_cache, tmp_path):  # noqa: F811
    script = tmp_path / "quickstart.py"
    script.write_text("\n".join(python_blocks(QUICKSTART.read_text())))
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "CHAIN_TINY_CACHE": str(tiny_cache), "MPLBACKEND": "Agg"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "sweep.png").stat().st_size > 0
    assert "variance after one sampling: DDIM" in out.stdout
    assert (tmp_path / "runs" / "quick-report" / "statistics.parquet").is_file()


