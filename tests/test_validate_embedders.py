"""Embedder registry, the per-folder cache, EfficientNet-Lite0 and the clip embedder's plumbing."""

import json
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from qtm.rundir import read_image_set
from validate.cache import embed_image_set
from validate.embed_stats import StatsEmbedder
from validate.embedders import EMBEDDER_NAMES, get_embedder
from validate.errors import ValidateError


def write_images(folder, count=4, size=(8, 8), seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return read_image_set(folder, what="test folder")


def test_unknown_embedder_names_the_choices():
    with pytest.raises(ValidateError, match="unknown embedder 'vgg'; choose one of: stats, efficientnet, clip"):
        get_embedder("vgg")
    assert get_embedder("stats").name == "stats"
    assert EMBEDDER_NAMES == ("stats", "efficientnet", "clip")


def test_cache_is_reused_only_with_the_same_settings(tmp_path):
    images = write_images(tmp_path / "iter-000")
    cache = tmp_path / "cache"
    first = embed_image_set(images, StatsEmbedder(), cache_dir=cache, key="iter-000")
    again = embed_image_set(images, StatsEmbedder(), cache_dir=cache, key="iter-000")
    assert not first.from_cache and again.from_cache
    np.testing.assert_array_equal(first.features, again.features)

    class OtherCutoff(StatsEmbedder):
        def settings(self):
            return {**super().settings(), "hf_cutoff": 0.1}

    other = embed_image_set(images, OtherCutoff(), cache_dir=cache, key="iter-000")
    assert not other.from_cache  # other settings: recomputed, never reused
    meta = json.loads((cache / "iter-000.stats.json").read_text())
    assert meta["settings"]["hf_cutoff"] == 0.1 and meta["embedder"] == "stats"


def test_cache_notices_changed_images(tmp_path):
    images = write_images(tmp_path / "iter-000")
    cache = tmp_path / "cache"
    embed_image_set(images, StatsEmbedder(), cache_dir=cache, key="k")
    Image.new("RGB", (8, 8), (255, 0, 0)).save(images.files[0])
    os.utime(images.files[0], (1, 1))  # a new mtime even on coarse clocks
    redone = embed_image_set(images, StatsEmbedder(), cache_dir=cache, key="k")
    assert not redone.from_cache
    assert redone.features[0, 2] == pytest.approx(1.0)  # saturation of pure red


@pytest.mark.parametrize("damaged", ["iter-000.stats.npy", "iter-000.stats.json"])
def test_corrupt_cache_is_recomputed_with_a_warning(tmp_path, damaged):
    images = write_images(tmp_path / "iter-000")
    cache = tmp_path / "cache"
    first = embed_image_set(images, StatsEmbedder(), cache_dir=cache, key="iter-000")
    (cache / damaged).write_bytes(b"\x93NUMPY garbage")
    with pytest.warns(UserWarning, match="corrupt; recomputing"):
        redone = embed_image_set(images, StatsEmbedder(), cache_dir=cache, key="iter-000")
    assert not redone.from_cache
    np.testing.assert_array_equal(redone.features, first.features)
    assert embed_image_set(images, StatsEmbedder(), cache_dir=cache, key="iter-000").from_cache  # repaired


def test_mixed_sizes_are_embedded_and_reported(tmp_path):
    images = write_images(tmp_path / "a", count=2, size=(8, 8))
    Image.new("RGB", (12, 6)).save(tmp_path / "a" / "999.png")
    images = read_image_set(tmp_path / "a", what="test folder")
    done = embed_image_set(images, StatsEmbedder(), cache_dir=tmp_path / "c", key="a")
    assert sorted(set(done.sizes)) == [(8, 8), (12, 6)]
    assert done.features.shape == (3, 6)


def test_an_image_that_does_not_decode_is_one_line(tmp_path):
    images = write_images(tmp_path / "a", count=1)
    (tmp_path / "a" / "000.png").write_bytes(b"not a png")
    with pytest.raises(ValidateError, match="does not decode"):
        embed_image_set(images, StatsEmbedder(), cache_dir=tmp_path / "c", key="a")


def test_efficientnet_features_are_pretrained_and_deterministic():
    model = get_embedder("efficientnet")
    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)) for _ in range(3)]
    images.append(Image.new("RGB", (20, 40), (200, 30, 30)))  # another size: resized like the others
    features = model.embed(images)
    assert features.shape == (4, 1280)
    assert np.isfinite(features).all() and (features >= 0).all()  # pooled ReLU6 activations
    np.testing.assert_allclose(model.embed(images[:1]), features[:1], rtol=1e-5, atol=1e-6)
    # The ImageNet weights were loaded: the classifier is not at chance on a photo-like input
    # (random weights give near-uniform softmax, max ~ 1e-3).
    import torch

    from validate.embed_efficientnet import _preprocess

    with torch.no_grad():
        logits = model._load()(torch.from_numpy(_preprocess(images[-1])[None]))
    assert float(logits.softmax(-1).max()) > 0.01


def test_clip_without_weights_is_a_clear_error(tmp_path):
    with pytest.raises(ValidateError, match="exactly one of --clip-pretrained TAG or --clip-checkpoint PATH"):
        get_embedder("clip")
    with pytest.raises(ValidateError, match="is not a file"):
        get_embedder("clip", clip_checkpoint=tmp_path / "missing.pt")
    # Offline (HF_HUB_OFFLINE=1), a named tag cannot be had: an error, never random weights.
    model = get_embedder("clip", clip_model="ViT-B-32", clip_pretrained="openai")
    with pytest.raises(ValidateError, match="cannot load CLIP weights 'openai' for ViT-B-32"):
        model.embed([Image.new("RGB", (8, 8))])
    unknown = get_embedder("clip", clip_model="ViT-S-32", clip_pretrained="no-such-tag")
    with pytest.raises(ValidateError, match="not a known tag"):
        unknown.embed([Image.new("RGB", (8, 8))])


def test_clip_plumbing_with_random_weights():
    """Random-weight open_clip (``clip_pretrained="random"``): tests the plumbing only, not CLIP itself."""
    model = get_embedder("clip", clip_model="ViT-S-32", clip_pretrained="random", batch_size=2)
    images = [Image.new("RGB", (16, 16), colour) for colour in ("red", "green", "blue")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        features = model.embed(images)
    assert any("RANDOM weights" in str(w.message) for w in caught)
    assert features.shape[0] == 3
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-6)
    captions = ["a red square", "a green square", "a red square"]
    alignment = model.alignment(features, captions)
    text = model.embed_text(["a red square"])
    assert alignment[0] == pytest.approx(float(features[0] @ text[0]), rel=1e-6)
    assert np.all(np.abs(alignment) <= 1 + 1e-9)
    assert model.settings()["pretrained"] == "random"
