"""The ``sd`` backend end to end on a tiny random Stable Diffusion pipeline (CPU, offline).

The pipeline is built here from small configs, saved with ``save_pretrained`` and
loaded through the backend's real loading code. Every test is deterministic (fixed
seeds), so none of them can fail by chance.
"""

import json

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("peft")

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from chain.backends.sd import StableDiffusionBackend
from chain.errors import ChainError
from qtm.schedules import CFGSchedule

STEPS = 4
CAPTIONS = ["a red cat", "a blue dog", "a green bird"]


def _write_tiny_model(directory, prediction_type):
    torch.manual_seed(0)
    tokenizer_dir = directory / "tokenizer_source"
    tokenizer_dir.mkdir(parents=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in "abcdefghijklmnopqrstuvwxyz":
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    (tokenizer_dir / "vocab.json").write_text(json.dumps(vocab))
    (tokenizer_dir / "merges.txt").write_text("#version: 0.2\n")
    (tokenizer_dir / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 32}))
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=1,
            vocab_size=len(vocab),
            max_position_embeddings=32,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=16,
        attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8),
        norm_num_groups=4,
        latent_channels=4,
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    model = directory / "model"
    pipe.save_pretrained(model)
    return model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The tensors here are tiny: thread start-up dominates, and on a shared machine it is much worse.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return _write_tiny_model(tmp_path_factory.mktemp("sd_eps"), "epsilon")


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    # Not square and not the model's size: the backend must resize and crop.
    return [Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)) for _ in CAPTIONS]


def _backend(model_dir, **options):
    settings = {"lora_rank": 2, "learning_rate": 1e-2, "train_steps": 3, "batch_size": 2, "device": "cpu"}
    return StableDiffusionBackend(str(model_dir), **{**settings, **options})


def _generate(backend, captions=CAPTIONS, seeds=(10, 11, 12), cfg=3.0, schedule="constant", sampler="ddim"):
    images = backend.generate(
        captions, cfg=cfg, schedule=CFGSchedule.parse(schedule), seeds=list(seeds), steps=STEPS, sampler=sampler
    )
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


def _unet_weights(backend, *, lora):
    # peft moves each adapted layer's own weights under ``base_layer``.
    return {
        name.replace(".base_layer", ""): value.detach().clone()
        for name, value in backend.pipe.unet.state_dict().items()
        if ("lora_" in name) == lora
    }


def test_not_a_model_is_refused(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    for model in (tmp_path, tmp_path / "missing", tmp_path / "weights.bin"):
        with pytest.raises(ChainError, match=r"not a diffusers model.*model_index\.json"):
            StableDiffusionBackend(str(model), device="cpu")


def test_broken_model_is_refused(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ChainError, match="cannot load it as a Stable Diffusion"):
        StableDiffusionBackend(str(tmp_path), device="cpu")


def test_unreachable_model_id_is_refused():
    # The tests run with HF_HUB_OFFLINE=1 (conftest): an uncached id cannot load.
    with pytest.raises(ChainError, match="nobody-here/no-such-model: cannot load it as a Stable Diffusion"):
        StableDiffusionBackend("nobody-here/no-such-model", device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_absent_gpu_is_refused(model_dir):
    with pytest.raises(ChainError, match="--device cuda: no CUDA GPU"):
        StableDiffusionBackend(str(model_dir), device="cuda")


def test_sizes_come_from_the_model(model_dir):
    info = _backend(model_dir).describe()
    # sample_size 8 latents times the VAE's factor 2 (two blocks).
    assert info["resolution"] == 16
    assert info["vae_scale_factor"] == 2
    assert info["prediction_type"] == "epsilon"
    assert info["finetune"] == "lora" and info["lora_rank"] == 2
    with pytest.raises(ChainError, match="--resolution must be a multiple of 4"):
        _backend(model_dir, resolution=18)


def test_generate_shapes_and_seeds(model_dir):
    backend = _backend(model_dir, resolution=24)
    first = _generate(backend)
    assert first.shape == (3, 24, 24, 3)
    assert np.array_equal(first, _generate(backend))
    # Image i depends on its own seed only, not on its neighbours in the batch.
    alone = _generate(backend, captions=CAPTIONS[2:], seeds=(12,))
    assert np.abs(alone[0] - first[2]).max() <= 1
    other = _generate(backend, seeds=(10, 11, 13))
    assert np.array_equal(other[:2], first[:2])
    assert not np.array_equal(other[2], first[2])
    noisy = _generate(backend, sampler="ddpm")
    assert not np.array_equal(noisy, first)


@pytest.mark.parametrize(
    ("cfg", "schedule"),
    [(3.0, "constant"), (3.0, "cosine"), (3.0, "linear:0.5"), (0.5, "constant"), (4.0, "cutoff:0.5")],
)
def test_schedule_sets_every_step(model_dir, monkeypatch, cfg, schedule):
    """The scale the pipeline uses at each step is the schedule's, also where it reaches or crosses 1."""
    backend = _backend(model_dir)
    used = []

    def spy(pipe):
        used.append(pipe._guidance_scale)
        return pipe._guidance_scale

    monkeypatch.setattr(type(backend.pipe), "guidance_scale", property(spy))
    images = _generate(backend, cfg=cfg, schedule=schedule)
    # Two pipeline calls (batch size 2 for 3 captions), each reading one scale per step.
    assert np.allclose(used, np.tile(CFGSchedule.parse(schedule).scales(cfg, STEPS), 2))
    assert images.shape == (3, 16, 16, 3)


def test_guidance_changes_the_images(model_dir):
    backend = _backend(model_dir)
    plain = _generate(backend, cfg=1.0)
    assert backend.pipe._guided is False
    assert not np.array_equal(_generate(backend, cfg=0.5), plain)
    assert not np.array_equal(_generate(backend, cfg=3.0, schedule="cutoff:0.5"), _generate(backend, cfg=3.0))


def test_interval_schedule_reads_the_noise_levels(model_dir, monkeypatch):
    backend = _backend(model_dir)
    used = []
    monkeypatch.setattr(
        type(backend.pipe), "guidance_scale", property(lambda pipe: used.append(pipe._guidance_scale) or 1.0)
    )
    # The 4-step grid (timesteps 751, 501, 251, 1) has sigma = 4.12, 1.62, 0.70, 0.04.
    _generate(backend, captions=CAPTIONS[:1], seeds=(0,), cfg=5.0, schedule="interval:0.5:2")
    assert used == [1.0, 5.0, 5.0, 1.0]


def test_lora_finetune_trains_only_the_adapter(model_dir, images):
    backend = _backend(model_dir)
    base = _unet_weights(backend, lora=False)
    vae = {k: v.clone() for k, v in backend.pipe.vae.state_dict().items()}
    before = _generate(backend)
    result = backend.finetune(images, CAPTIONS, drop=0.5, start="base", seed=1)
    assert len(result.losses) == 3 and np.all(np.isfinite(result.losses))
    after = _unet_weights(backend, lora=False)
    assert after.keys() == base.keys() and all(torch.equal(after[k], base[k]) for k in base)
    assert all(torch.equal(v, backend.pipe.vae.state_dict()[k]) for k, v in vae.items())
    lora = _unet_weights(backend, lora=True)
    assert lora and all(v.dtype == torch.float32 for v in lora.values())
    assert any(k.endswith("lora_B.chain.weight") and v.abs().max() > 0 for k, v in lora.items())
    assert not np.array_equal(_generate(backend), before)


def test_finetune_is_reproducible(model_dir, images):
    runs = [_backend(model_dir).finetune(images, CAPTIONS, drop=0.3, start="base", seed=5) for _ in range(2)]
    assert runs[0].losses == runs[1].losses
    other = _backend(model_dir).finetune(images, CAPTIONS, drop=0.3, start="base", seed=6)
    assert other.losses != runs[0].losses


def test_drop_replaces_captions_by_the_empty_prompt(model_dir, images, monkeypatch):
    """Each example's caption is dropped independently at each step (drop 0.5: 12 draws, fixed seed)."""
    backend = _backend(model_dir, train_steps=6)
    null = backend._encode_text([""])[0]
    unet = backend.pipe.unet
    forward = type(unet).forward
    seen = []

    def spy(self, sample, timestep, encoder_hidden_states, **kwargs):
        seen.extend(bool(torch.equal(state, null)) for state in encoder_hidden_states)
        return forward(self, sample, timestep, encoder_hidden_states, **kwargs)

    monkeypatch.setattr(type(unet), "forward", spy)
    backend.finetune(images, CAPTIONS, drop=0.5, start="base", seed=3)
    assert len(seen) == 12 and 0 < sum(seen) < 12
    seen.clear()
    backend.finetune(images, CAPTIONS, drop=0.0, start="base", seed=3)
    assert seen == [False] * 12


@pytest.mark.parametrize(("full", "optimise"), [(False, False), (True, False), (False, True), (True, True)])
def test_save_load_and_start_from_base(model_dir, images, tmp_path, full, optimise):
    backend = _backend(model_dir, full_finetune=full, optimise=optimise, compile_unet=False)
    first = backend.finetune(images, CAPTIONS, drop=0.2, start="base", seed=1)
    tuned = _generate(backend)
    info = backend.save_weights(tmp_path / "weights")
    assert info["kind"] == ("full" if full else "lora")
    assert not list((tmp_path / "weights").glob(".*"))

    fresh = _backend(model_dir, full_finetune=full, optimise=optimise, compile_unet=False)
    fresh.load_weights(tmp_path / "weights")
    assert np.array_equal(_generate(fresh), tuned)

    backend.finetune(images, CAPTIONS, drop=0.2, start="continue", seed=2)
    assert not np.array_equal(_generate(backend), tuned)
    again = backend.finetune(images, CAPTIONS, drop=0.2, start="base", seed=1)
    assert again.losses == first.losses
    assert np.array_equal(_generate(backend), tuned)


def test_weights_of_the_other_kind_are_refused(model_dir, images, tmp_path):
    backend = _backend(model_dir)
    backend.finetune(images, CAPTIONS, drop=0.0, start="base", seed=1)
    backend.save_weights(tmp_path)
    with pytest.raises(ChainError, match="holds a lora finetune but this run is set for full"):
        _backend(model_dir, full_finetune=True).load_weights(tmp_path)
    with pytest.raises(ChainError, match="rank-2 LoRA adapter but --lora-rank is 4"):
        _backend(model_dir, lora_rank=4).load_weights(tmp_path)
    with pytest.raises(ChainError, match="not weights saved by the sd backend"):
        backend.load_weights(tmp_path / "nothing")


def test_v_prediction_trains_on_the_velocity(tmp_path, images, monkeypatch):
    backend = _backend(_write_tiny_model(tmp_path, "v_prediction"))
    assert backend.describe()["prediction_type"] == "v_prediction"
    calls = []
    velocity = backend.noise_scheduler.get_velocity
    monkeypatch.setattr(backend.noise_scheduler, "get_velocity", lambda *a: calls.append(1) or velocity(*a))
    result = backend.finetune(images, CAPTIONS, drop=0.0, start="base", seed=1)
    assert len(calls) == 3 and np.all(np.isfinite(result.losses))


def test_bad_arguments_are_refused(model_dir, images):
    backend = _backend(model_dir)
    with pytest.raises(ChainError, match="3 images but 2 captions"):
        backend.finetune(images, CAPTIONS[:2], drop=0.0, start="base", seed=0)
    with pytest.raises(ChainError, match="data set is empty"):
        backend.finetune([], [], drop=0.0, start="base", seed=0)
    # --drop, --cfg and --sampler are checked once, where they enter (RunParameters.resolve).
    with pytest.raises(ChainError, match="one seed per caption"):
        _generate(backend, seeds=(1,))


def test_optimised_path_gives_the_plain_paths_results(model_dir, images):
    """Channels-last weights, fused QKV projections carrying the LoRA update, draws on the device and a fused
    AdamW give the plain path's losses and, from the same seeds, pixels within 2/255 (fp32, CPU).

    torch.compile is left out: on this project's 2 shared cores it takes minutes to build even the tiny UNet
    (``benchmarks/sd_throughput.py --tiny`` runs the compiled path).
    """
    plain, fast = (_backend(model_dir, optimise=optimise, compile_unet=False) for optimise in (False, True))
    assert (plain.describe()["optimise"], fast.describe()["optimise"]) == (False, True)
    runs = [backend.finetune(images, CAPTIONS, drop=0.3, start="base", seed=2) for backend in (plain, fast)]
    np.testing.assert_allclose(runs[1].losses, runs[0].losses, rtol=1e-4)
    reference = _generate(plain, schedule="cosine")
    assert np.abs(_generate(fast, schedule="cosine") - reference).max() <= 2

    # Inside generation the fused layers apply the adapter's update too; outside it the plain processors are back.
    unet = fast.pipe.unet
    attention = unet.down_blocks[0].attentions[0].transformer_blocks[0]
    x = torch.randn(2, 5, attention.attn1.to_q.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), fast._fused_attention():
        assert attention.attn1.to_q.lora_B["chain"].weight.abs().max() > 0
        unfused = torch.cat([getattr(attention.attn1, name)(x) for name in ("to_q", "to_k", "to_v")], -1)
        torch.testing.assert_close(attention.attn1.to_qkv(x), unfused)
        assert type(attention.attn1.processor).__name__ == "FusedAttnProcessor2_0"
    assert type(attention.attn1.processor).__name__ == "AttnProcessor2_0"

    # Starting again from the base model resets the adapter in place (a compiled UNet stays valid).
    layer = attention.attn1.to_q
    again = fast.finetune(images, CAPTIONS, drop=0.3, start="base", seed=2)
    assert attention.attn1.to_q is layer and again.losses == runs[1].losses
