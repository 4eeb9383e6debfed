"""The embedder interface and the registry that selects an embedder by name.

An embedder turns images into feature vectors (one row per image). Each one
names itself and the settings that change its output, so that a cache made with
other settings is never reused (see :mod:`validate.cache`).

==============  ==============================================================
name            features
==============  ==============================================================
``stats``       six image statistics that need no weights (:mod:`validate.embed_stats`)
``efficientnet``pooled ImageNet EfficientNet-Lite0 features (:mod:`validate.embed_efficientnet`)
``clip``        open_clip image embeddings plus caption alignment (:mod:`validate.embed_clip`)
==============  ==============================================================
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from validate.errors import ValidateError

EMBEDDER_NAMES = ("stats", "efficientnet", "clip")


class Embedder(ABC):
    """Maps PIL images to a float array of shape (n_images, n_features)."""

    #: Registry name, written into every cache and table.
    name: str
    #: Whether features have incomparable units and are standardised before PCA and the Fréchet distance.
    standardize: bool = False
    #: Whether :meth:`alignment` measures image-caption agreement.
    has_alignment: bool = False

    @abstractmethod
    def settings(self) -> dict:
        """The JSON-ready settings that change the features (the cache key)."""

    @abstractmethod
    def embed(self, images: Sequence) -> np.ndarray:
        """Features of a batch of PIL images, shape (len(images), n_features)."""

    def alignment(self, features: np.ndarray, captions: Sequence[str]) -> np.ndarray:
        """Per-image agreement with its caption; NaN where the embedder has no text side."""
        return np.full(len(features), np.nan)

    def feature_names(self, count: int) -> list[str]:
        """Names of the feature columns (generic unless the embedder knows better)."""
        return [f"f{i}" for i in range(count)]


def get_embedder(name: str, **options) -> Embedder:
    """Build the embedder called ``name`` with its options.

    Parameters
    ----------
    name : {"stats", "efficientnet", "clip"}
    **options
        Passed to the embedder (e.g. ``clip_model``, ``clip_pretrained``,
        ``clip_checkpoint``, ``batch_size``, ``device``); options an embedder does
        not take are ignored, so that one command line serves all embedders.

    Examples
    --------
    >>> get_embedder("stats").name
    'stats'
    >>> get_embedder("nope")
    Traceback (most recent call last):
    ...
    validate.errors.ValidateError: unknown embedder 'nope'; choose one of: stats, efficientnet, clip
    """
    if name == "stats":
        from validate.embed_stats import StatsEmbedder

        return StatsEmbedder()
    if name == "efficientnet":
        from validate.embed_efficientnet import EfficientNetEmbedder

        return EfficientNetEmbedder(batch_size=options.get("batch_size", 16), device=options.get("device", "cpu"))
    if name == "clip":
        from validate.embed_clip import ClipEmbedder

        return ClipEmbedder(
            model=options.get("clip_model", "ViT-B-32"),
            pretrained=options.get("clip_pretrained"),
            checkpoint=options.get("clip_checkpoint"),
            batch_size=options.get("batch_size", 16),
            device=options.get("device", "cpu"),
        )
    raise ValidateError(f"unknown embedder {name!r}; choose one of: {', '.join(EMBEDDER_NAMES)}")


def load_image(path):
    """Open an image file as RGB; a file that does not decode is a one-line error naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as error:
        raise ValidateError(f"image {str(path)!r} does not decode ({error}); remove or regenerate it") from None
