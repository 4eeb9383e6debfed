"""tools/selection_law_figure.py: the measured and a pixel law's selection per model, a panel per run."""

import json

import pytest
from conftest import load_tool
from PIL import Image


@pytest.fixture(scope="module")
def tool():
    return load_tool("selection_law_figure")


def write_law(path, models=(-1, 0, 1)):
    records = [{"iteration": m, "w": w, "S_log_var": -0.2 * w * (m + 2), "pixel_S_log_var": -0.1 * w * (m + 2)}
               for m in models for w in (1.5, 3.0, 10.0)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"scores": [], "mean_S_log_var_per_model_and_w": records}))
    return path


def test_a_panel_per_run(tool, tmp_path, capsys):
    laws = [write_law(tmp_path / name / "law.json") for name in ("cfg7.5-s30", "cfg3-s31")]
    tool.main([*map(str, laws), "--out", str(tmp_path / "law.png")])
    assert "wrote" in capsys.readouterr().out
    width, height = Image.open(tmp_path / "law.png").size
    assert width > 1.5 * height  # two panels side by side


@pytest.mark.parametrize(("content", "titles", "message"), [
    ({"scores": []}, [], "no mean_S_log_var_per_model_and_w (KeyError); write it with tools/pixel_selection_law.py"),
    (None, ["one", "two"], "--titles names 2 panels for 1 files"),
])
def test_bad_input_is_one_line_and_writes_nothing(tool, tmp_path, capsys, content, titles, message):
    law = tmp_path / "law.json"
    if content is None:
        write_law(law)
    else:
        law.write_text(json.dumps(content))
    with pytest.raises(SystemExit) as stop:
        tool.main([str(law), "--out", str(tmp_path / "law.png"), *(["--titles", *titles] if titles else [])])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "law.png").exists()
