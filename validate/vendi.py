"""The Vendi score (Friedman and Dieng 2023): the effective number of distinct points of a set.

The exponential of the Shannon entropy of the eigenvalues of K/n, K the n x n similarity matrix with
K_ii = 1: 1 for n identical points and n for n mutually dissimilar ones. The default kernel is the
cosine similarity of the features (the paper's choice for embeddings); ``kernel="rbf"`` takes
exp(-|x - y|² / (2 h²)), h the median pairwise distance unless given. Scores of many (re)samples of
one set come from one kernel matrix (:func:`sample_vendi`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import cdist, pdist

from validate.errors import ValidateError
from validate.intervals import multiplicities


def vendi_score(features, *, kernel: str = "cosine", bandwidth: float | None = None) -> float:
    """The Vendi score of a set: exp of the entropy of the eigenvalues of K/n (see the module docstring).

    Parameters
    ----------
    features : array_like, shape (n, d)
    kernel : {"cosine", "rbf"}
        Cosine similarity (default) or the Gaussian kernel of width ``bandwidth``.
    bandwidth : float, optional
        Width h of the RBF kernel; the median pairwise distance of ``features`` when not given.

    Examples
    --------
    >>> round(vendi_score(np.ones((4, 3))), 6), round(vendi_score(np.eye(4)), 6)
    (1.0, 4.0)
    """
    features = np.asarray(features, dtype=float)
    if features.ndim != 2 or len(features) == 0 or not np.isfinite(features).all():
        raise ValidateError(f"features must be a nonempty finite (n, d) array, got shape {features.shape}")
    gram = similarity(features, kernel, bandwidth)
    return float(sample_vendi(gram, np.arange(len(gram.matrix))[None, :])[0])


@dataclass(frozen=True)
class VendiKernel:
    """A set's Vendi similarity matrix (n, n) and, for the cosine kernel, its factor: the unit features F (n, d),
    ``matrix`` = F F^T."""

    matrix: np.ndarray
    factor: np.ndarray | None


def similarity(features, kernel, bandwidth) -> VendiKernel:
    """The Vendi similarity matrix of ``features`` (n, d) under ``kernel`` (see :func:`vendi_score`)."""
    if kernel == "cosine":
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        if not np.all(norms > 0):
            raise ValidateError("the cosine kernel needs nonzero feature vectors; use kernel='rbf'")
        unit = features / norms
        return VendiKernel(unit @ unit.T, unit)
    if bandwidth is None:
        bandwidth = float(np.median(pdist(features))) if len(features) > 1 else 1.0
    if not bandwidth > 0:
        raise ValidateError(f"the RBF bandwidth must be > 0, got {bandwidth}; give one, or features that differ")
    return VendiKernel(np.exp(-cdist(features, features, "sqeuclidean") / (2.0 * bandwidth**2)), None)


def sample_vendi(kernel: VendiKernel, index) -> np.ndarray:
    """The Vendi scores (b,) of the samples ``index`` (b, n; with repeats) of the points of ``kernel``.

    A sample's K/n has the nonzero eigenvalues of W^½ S W^½, S the similarities of its distinct
    points and W their multiplicities over n: an eigenproblem on about 63% of the points. With a
    factor S = F F^T of width d below that, the same nonzero eigenvalues are those of the d x d
    matrix F^T W F (equal up to rounding). Samples of one size are solved as one stack.
    """
    size, n = len(kernel.matrix), index.shape[1]
    counts = multiplicities(index, size)
    distinct = np.count_nonzero(counts, axis=1)
    weights = counts / n
    scores = np.empty(len(index))
    dual = np.zeros(len(index), dtype=bool) if kernel.factor is None else distinct > kernel.factor.shape[1]
    if dual.any():
        weighted = weights[dual][:, :, None] * kernel.factor
        scores[dual] = _entropy_exp(np.linalg.eigvalsh(np.swapaxes(weighted, 1, 2) @ kernel.factor))
    for m in np.unique(distinct[~dual]):
        rows = np.flatnonzero((distinct == m) & ~dual)
        points = np.nonzero(counts[rows])[1].reshape(len(rows), m)
        root = np.sqrt(weights[rows[:, None], points])
        block = kernel.matrix[points[:, :, None], points[:, None, :]]
        scores[rows] = _entropy_exp(np.linalg.eigvalsh(root[:, :, None] * block * root[:, None, :]))
    return scores


def _entropy_exp(eigenvalues) -> np.ndarray:
    """exp of the Shannon entropy of each row of eigenvalues (b, m)."""
    # Rounding leaves the zero eigenvalues of a rank-deficient K a hair either side of 0; 0 log 0 = 0.
    kept = eigenvalues > 1e-12
    terms = np.where(kept, eigenvalues * np.log(np.where(kept, eigenvalues, 1.0)), 0.0)
    return np.exp(-np.sum(terms, axis=1))
