"""``--data hf:...``: Hugging Face ``datasets`` data sets, loaded offline through the real ``datasets.load_dataset``.

The data sets are local directories (images with a ``metadata.jsonl``, or a parquet
file with image features) that ``load_dataset`` reads with its packaged builders.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from chain.data import load_dataset
from chain.errors import ChainError

datasets = pytest.importorskip("datasets")

pytestmark = pytest.mark.chain


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """datasets caches what it builds; keep that out of the user's ~/.cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def image_folder(root, captions, *, key="text"):
    """Grey 8×8 images, image i with value 40 i, and a metadata.jsonl giving each its caption under ``key``."""
    from PIL import Image

    root.mkdir(parents=True)
    lines = []
    for i, caption in enumerate(captions):
        Image.new("L", (8, 8), 40 * i).save(root / f"img{i}.png")
        lines.append(json.dumps({"file_name": f"img{i}.png", key: caption}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def two_image_parquet(root):
    """A parquet data set with two image columns (before: black, after: value 200) and two caption-like columns."""
    from PIL import Image

    root.mkdir(parents=True)
    features = datasets.Features(
        {
            "before": datasets.Image(),
            "after": datasets.Image(),
            "caption": datasets.Value("string"),
            "prompt": datasets.Value("string"),
        }
    )
    table = datasets.Dataset.from_dict(
        {
            "before": [Image.new("RGB", (4, 4), (0, 0, 0))] * 2,
            "after": [Image.new("RGB", (4, 4), (200, 10, 10))] * 2,
            "caption": ["a red square", "another red square"],
            "prompt": ["make it red", "make it red again"],
        },
        features=features,
    )
    table.to_parquet(str(root / "data.parquet"))
    return root


def test_image_folder_through_load_dataset_detects_columns(tmp_path):
    folder = image_folder(tmp_path / "d", ["zero", "one", "two"])
    data = load_dataset(f"hf:{folder}")
    assert data.captions == ["zero", "one", "two"]
    assert [image.mode for image in data.images] == ["RGB"] * 3
    assert [image.getpixel((0, 0)) for image in data.images] == [(0, 0, 0), (40, 40, 40), (80, 80, 80)]
    assert data.source == f"hf:{folder}" and len(data.file_names) == 3


def test_split_slice_and_caption_column_named_caption(tmp_path):
    folder = image_folder(tmp_path / "d", ["zero", "one", "two"], key="caption")
    data = load_dataset(f"hf:{folder}:train[1:]")
    assert data.captions == ["one", "two"]
    assert data.images[0].getpixel((0, 0)) == (40, 40, 40)


def test_named_columns_pick_among_several(tmp_path):
    root = two_image_parquet(tmp_path / "p")
    with pytest.raises(ChainError, match=r"2 \(before, after\) image columns found.*the columns are before") as error:
        load_dataset(f"hf:{root}")
    assert "\n" not in str(error.value)
    with pytest.raises(ChainError, match=r"2 \(caption, prompt\) caption columns found"):
        load_dataset(f"hf:{root}?image=after")
    data = load_dataset(f"hf:{root}:train?image=after&caption=prompt")
    assert data.captions == ["make it red", "make it red again"]
    assert data.images[1].getpixel((0, 0)) == (200, 10, 10)


def test_no_caption_column_lists_the_columns(tmp_path):
    folder = image_folder(tmp_path / "d", ["zero", "one"], key="label_text")
    listing = r"no caption columns found; the columns are image \(.*\), label_text \(string\)"
    with pytest.raises(ChainError, match=listing):
        load_dataset(f"hf:{folder}")
    assert load_dataset(f"hf:{folder}?caption=label_text").captions == ["zero", "one"]


@pytest.mark.parametrize(
    ("suffix", "message"),
    [
        (":train[:0]", r"the split 'train\[:0\]' has no rows; the data set is empty"),
        (":validation", r"cannot be loaded \(Unknown split"),
        ("?image=nothing", r"there is no column 'nothing'; the columns are image"),
        ("?caption=image", r"column 'image' is not a string column"),
        ("?size=3", r"'size=3' is not an option; use image=..., caption=..., config=..."),
    ],
)
def test_bad_spec_is_one_line_error(tmp_path, suffix, message):
    folder = image_folder(tmp_path / "d", ["zero"])
    with pytest.raises(ChainError, match=message) as error:
        load_dataset(f"hf:{folder}{suffix}")
    assert "\n" not in str(error.value)


def test_missing_name_and_missing_local_directory(tmp_path):
    with pytest.raises(ChainError, match="names no data set"):
        load_dataset("hf:")
    with pytest.raises(ChainError, match="cannot be loaded"):
        load_dataset(f"hf:{tmp_path / 'nowhere'}")


def test_without_datasets_installed_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(ChainError, match="pip install datasets"):
        load_dataset("hf:user/name")


def test_cli_offline_hub_name_is_one_line_exit_2(tmp_path):
    """Offline, a Hub name outside the cache is refused before the run directory is made."""
    result = subprocess.run(
        [sys.executable, "-m", "commands.chain_program", "run", str(tmp_path / "run"),
         "--data", "hf:nobody/no-such-set"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path)},
        check=False,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "HF_HUB_OFFLINE is set" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()
