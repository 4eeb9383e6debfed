"""Seeds of chain runs come from qtm.random.derive_seed with the values runs always had; torch's global
generator is left as the tiny backend found it.

Deterministic: no statistical test here (false-failure rate 0).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from chain.seeds import finetune_seed, image_seed, real_mix_seed
from qtm.errors import QTMError


def old_formula(*entropy: int) -> int:
    """chain.seeds' own derivation before it used qtm.random.derive_seed: existing runs were drawn with it."""
    return int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1, dtype=np.uint32)[0])


def test_seeds_are_bit_identical_to_the_old_formula():
    for run_seed, iteration, caption, copy in itertools.product((0, 1, 7, 2**31 - 1, 2**40), (0, 1, 5), (0, 3), (0, 2)):
        assert image_seed(run_seed, iteration, caption, copy) == old_formula(run_seed, 0, iteration, caption, copy)
        assert finetune_seed(run_seed, iteration) == old_formula(run_seed, 1, iteration)
        assert real_mix_seed(run_seed, iteration) == old_formula(run_seed, 2, iteration)
    # Literal values guard against the helper and the formula changing together.
    assert (image_seed(0, 1, 2), finetune_seed(7, 3), real_mix_seed(7, 3)) == (4276465311, 1916955614, 4233973465)
    assert image_seed(123456789, 4, 19, copy=2) == 4103130124


def test_a_negative_seed_or_key_is_refused():
    # The run seed is checked once, by RunParameters.resolve (tests/test_chain_inputs.py); a negative
    # one that arrives anyway is still refused by the derivation.
    with pytest.raises(QTMError, match=">= 0"):
        image_seed(-1, 0, 0)
    with pytest.raises(QTMError, match=">= 0"):
        finetune_seed(0, -1)


@pytest.mark.chain
def test_the_tiny_backend_leaves_the_global_torch_generator_alone(tmp_path, monkeypatch):
    """Training the base model, building the backend and finetuning draw nothing from the caller's generator."""
    torch = pytest.importorskip("torch")
    from chain.backends.tiny import TinyBackend
    from chain.backends.tiny_config import TinyConfig
    from chain.backends.tiny_model import tensor_to_images
    from chain.data import digits_arrays

    monkeypatch.setenv("CHAIN_TINY_CACHE", str(tmp_path))
    images, captions = digits_arrays(resolution=8)
    data = tensor_to_images(torch.from_numpy(images[:8])[:, None] * 2 - 1)
    before = torch.random.get_rng_state()
    backend = TinyBackend(config=TinyConfig(base_train_steps=2), train_steps=2, batch_size=4)
    backend.finetune(data, captions[:8], drop=0.1, start="base", seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)
