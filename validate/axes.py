"""Trait axes fixed at iteration 0: the top principal components of the reference embeddings.

The reference is the real data's embeddings when the run has them, else the
embeddings of iteration 0's images; every iteration is then measured on the same
axes. Embedders whose features have incomparable units (``stats``) are first
standardised by the reference's standard deviation per feature.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qtm.validation import check_int
from validate.errors import ValidateError


@dataclass(frozen=True)
class TraitAxes:
    """A fixed affine map from features to ``k`` trait coordinates.

    ``center`` and ``scale`` (per feature) standardise; ``components`` (k, n_features)
    are orthonormal rows; ``explained`` is each axis's share of the reference's total variance.
    """

    center: np.ndarray
    scale: np.ndarray
    components: np.ndarray
    explained: np.ndarray

    @property
    def k(self) -> int:
        return len(self.components)

    def standardise(self, features: np.ndarray) -> np.ndarray:
        """Features in the reference's standardised units (centred; scaled when the embedder asks)."""
        return (np.asarray(features, dtype=float) - self.center) / self.scale

    def project(self, features: np.ndarray) -> np.ndarray:
        """Trait coordinates, shape (n_images, k)."""
        return self.project_standardised(self.standardise(features))

    def project_standardised(self, standardised: np.ndarray) -> np.ndarray:
        """Trait coordinates of features already standardised (:meth:`standardise`)."""
        return standardised @ self.components.T


def fit_axes(reference: np.ndarray, k: int, *, standardize: bool = False) -> TraitAxes:
    """PCA of ``reference`` (n_images, n_features): the top ``k`` axes.

    Component signs are fixed so that each axis's largest loading is positive, so
    that repeated runs give the same axes.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> data = rng.standard_normal((500, 3)) * [3.0, 1.0, 0.1]
    >>> axes = fit_axes(data, 1)
    >>> np.abs(axes.components.round(1)).tolist()
    [[1.0, 0.0, 0.0]]
    """
    k = check_int(k, "--axes", minimum=1)
    reference = np.asarray(reference, dtype=float)
    n, d = reference.shape
    if n < 2:
        raise ValidateError(f"the axes need at least 2 reference images, got {n}; generate more images per iteration")
    if k > min(n - 1, d):
        raise ValidateError(
            f"--axes {k} is more than the {min(n - 1, d)} axes that {n} reference images "
            f"of {d} features allow; lower --axes"
        )
    center = reference.mean(axis=0)
    scale = reference.std(axis=0, ddof=1) if standardize else np.ones(d)
    # A feature that is constant in the reference carries no axis; keep it unscaled instead of dividing by 0.
    scale = np.where(scale > 0, scale, 1.0)
    z = (reference - center) / scale
    _, singular, vt = np.linalg.svd(z, full_matrices=False)
    components = vt[:k]
    signs = np.sign(components[np.arange(k), np.abs(components).argmax(axis=1)])
    components = components * signs[:, None]
    power = singular**2
    explained = power[:k] / power.sum() if power.sum() > 0 else np.zeros(k)
    return TraitAxes(center=center, scale=scale, components=components, explained=explained)
