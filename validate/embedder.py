"""The embedder interface: what every embedder gives (features, settings, alignment, feature names).

An embedder turns images into feature vectors (one row per image). Each one names itself and the
settings that change its output, so that a cache made with other settings is never reused (see
:mod:`validate.cache`). The embedders themselves (:mod:`validate.embed_stats`,
:mod:`validate.embed_efficientnet`, :mod:`validate.embed_clip`) build on this module, and the registry
that picks one by name (:mod:`validate.embedders`) imports them: the imports go one way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np


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
