"""qtm figures: the registry, every figure's drawing function, the files and the index they write."""

import inspect
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest
from typer.testing import CliRunner

from commands.qtm_program import app
from qtm.errors import QTMError
from qtm.figures import FIGURES, index_markdown, make_figures

matplotlib.use("Agg")
import matplotlib.pyplot as plt

REPO = Path(__file__).resolve().parents[1]
ISSUE_FIGURES = [
    "fitness_landscape", "guided_sampling", "chain", "phase_diagram", "multimodal_occupancy",
    "finite_population", "base_vs_continue", "solver_limits",
]  # fmt: skip
#: Smaller settings for the figures that simulate particles or large grids, so every
#: drawing function runs in the test at a fraction of its cost.
SMALL = {
    "phase_diagram": {"cfg": (1.0, 10.0, 4), "drop": (0.0, 1.0, 3), "real_fraction": (0.0, 0.5, 3)},
    "multimodal_occupancy": {"population": 60, "replicates": 3, "iterations": 3, "steps": 5},
    "finite_population": {"populations": (10, 50), "replicates": 3, "iterations": 3, "steps": 5},
    "chain": {"iterations": 3},
}


def test_the_registry_holds_the_figures_in_order():
    assert list(FIGURES) == ISSUE_FIGURES
    assert [spec.number for spec in FIGURES.values()] == list(range(1, len(ISSUE_FIGURES) + 1))


@pytest.mark.parametrize("name", ISSUE_FIGURES)
def test_each_figure_function_takes_exactly_its_written_parameters(name):
    spec = FIGURES[name]
    keyword_only = [
        p.name for p in inspect.signature(spec.draw).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    assert keyword_only == list(spec.parameters)
    assert spec.caption and spec.title


@pytest.mark.parametrize("name", ISSUE_FIGURES)
def test_each_figure_draws_data(name):
    spec = FIGURES[name]
    fig = plt.figure(figsize=spec.size, layout="constrained")
    try:
        spec.draw(fig, **{**spec.parameters, **SMALL.get(name, {})})
        drawn = [ax for ax in fig.axes if ax.lines or ax.collections]
        assert drawn, f"{name} drew nothing"
    finally:
        plt.close(fig)


def test_make_figures_writes_png_pdf_and_the_index_reproducibly(tmp_path):
    names = ["guided_sampling", "base_vs_continue"]
    lines = []
    written = make_figures(tmp_path, names=names, echo=lines.append)
    expected = [tmp_path / f"{n}.{f}" for n in names for f in ("png", "pdf")] + [tmp_path / "README.md"]
    assert written == expected and lines == [str(p) for p in expected]
    assert (tmp_path / "guided_sampling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "guided_sampling.pdf").read_bytes()[:5] == b"%PDF-"
    first = (tmp_path / "guided_sampling.png").read_bytes()
    make_figures(tmp_path, names=["guided_sampling"], formats=("png",))
    assert (tmp_path / "guided_sampling.png").read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in expected)


def test_the_index_lists_every_figure_with_its_command_and_parameters():
    text = index_markdown(out_name="figures")
    for spec in FIGURES.values():
        assert f"## {spec.number}. {spec.title}" in text
        assert f"![{spec.title}]({spec.name}.png)" in text
        assert f"`qtm figures --out figures --only {spec.name}`" in text
        for key in spec.parameters:
            assert f"| `{key}` |" in text


def test_the_committed_figures_match_the_code():
    """figures/README.md is what `qtm figures --out figures` writes now, and every PNG it shows exists."""
    committed = REPO / "figures" / "README.md"
    assert committed.read_text() == index_markdown(out_name="figures"), "run: qtm figures --out figures"
    for name in FIGURES:
        assert (REPO / "figures" / f"{name}.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"names": ["nope"]}, "unknown figure 'nope'"), ({"formats": ("svg",)}, "unknown figure format 'svg'")],
)
def test_bad_requests_are_refused_before_writing(tmp_path, kwargs, message):
    with pytest.raises(QTMError, match=message):
        make_figures(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_cli_lists_and_draws(tmp_path):
    runner = CliRunner()
    done = runner.invoke(app, ["figures", "--list"])
    assert done.exit_code == 0 and all(name in done.output for name in FIGURES)
    done = runner.invoke(app, ["figures", "--out", str(tmp_path), "--only", "guided_sampling", "--format", "png"])
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "guided_sampling.png"]


def test_cli_bad_figure_is_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", "from commands.qtm_program import main; main()", "figures", "--out", str(tmp_path / "o"),
         "--only", "nope"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "qtm: error: unknown figure 'nope'; choose from: " + ", ".join(FIGURES)
    ]
    assert not (tmp_path / "o").exists()
