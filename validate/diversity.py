"""Fidelity and diversity of a generated image set against the real one: precision, recall, density, coverage, Vendi.

Precision and recall (Kynkäänniemi et al. 2019) and density and coverage (Naeem et al.
2020) compare the two sets through k-nearest-neighbour balls in a feature space, with the
definitions of the ``prdc`` package: a point's ball reaches (Euclidean) to its k-th nearest
neighbour in its own set, and a point lies inside a ball when strictly closer than its radius.

- precision: the fraction of generated points inside some real ball (fidelity);
- recall: the fraction of real points inside some generated ball (diversity);
- density: the mean over generated points of the number of real balls holding them, over k;
- coverage: the fraction of real points whose ball holds some generated point.

The Vendi score (:mod:`validate.vendi`) is the effective number of distinct points of a set.

The intervals come from subsampling without replacement (:mod:`validate.intervals`): every
metric counts distinct points, and a resample drawn with replacement holds copies, which
shrink the Vendi score and the kNN balls (Vendi 13.2 had the bootstrap interval [8.5, 9.5]).

A collapse of diversity shows as recall, coverage and Vendi falling while precision stays.
Within a caption (one concept) is where it should be read: pooled over captions, the spread
between concepts hides it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.distance import cdist, pdist

from qtm.random import check_random_state, derive_seed
from qtm.validation import check_choice, check_int, check_unit_interval
from validate.errors import ValidateError
from validate.intervals import (
    multiplicities,
    quadratic_subsample_scale,
    subsample_indices,
    subsample_interval,
    subsample_normal_interval,
    subsample_scale,
    subsample_size,
)
from validate.statistics import ALL_CAPTIONS, WITHIN_CAPTIONS, group_indices
from validate.vendi import VendiKernel, sample_vendi, similarity

PRDC = ("precision", "recall", "density", "coverage")
#: Statistics of :func:`diversity_metrics`: the four above, then the Vendi scores of the generated and the real set.
STATISTICS = (*PRDC, "vendi", "vendi_real")
#: The statistics that are shares of points (precision of the generated ones, recall and coverage of the real
#: ones): their intervals are normal (:func:`subsample_normal_interval`).
SHARES = ("precision", "recall", "coverage")
#: The Vendi scores, whose interval is also normal, with the spread of :func:`_group_metrics`.
VENDI = ("vendi", "vendi_real")
#: The range of each statistic: shares in [0, 1], density >= 0, a Vendi score at least one distinct point.
RANGES = {"precision": (0.0, 1.0), "recall": (0.0, 1.0), "density": (0.0, np.inf), "coverage": (0.0, 1.0),
          "vendi": (1.0, np.inf), "vendi_real": (1.0, np.inf)}
KERNELS = ("cosine", "rbf")
# Stream tag of the subsample draws under the caller's seed (qtm.random.derive_seed); keyed by caption below.
_BOOTSTRAP_STREAM = 17
# Elements of one (resamples, n, m) gather of a distance matrix in the batched bootstrap (32 MB of float64).
_BATCH_ELEMENTS = 1 << 22


def prdc(real, generated, *, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage of ``generated`` (m, d) against ``real`` (n, d).

    Parameters
    ----------
    real, generated : array_like, shape (n, d) and (m, d)
        Features of the real and the generated images; both sets need more than ``k`` points.
    k : int
        Neighbour count of the balls (5, as in both papers).

    Examples
    --------
    >>> x = np.random.default_rng(0).standard_normal((30, 2))
    >>> same, far = prdc(x, x, k=3), prdc(x, x + 100.0, k=3)
    >>> same["precision"], same["recall"], same["coverage"], far["precision"], far["recall"]
    (1.0, 1.0, 1.0, 0.0, 0.0)
    """
    real, generated = _features(real, generated, k=k)
    d_real, d_generated = cdist(real, real), cdist(generated, generated)
    cross = cdist(real, generated)
    found = _prdc(d_real, d_generated, cross, np.arange(len(real))[None, :], np.arange(len(generated))[None, :], k)
    return {name: float(found[name][0]) for name in PRDC}


def diversity_metrics(
    real,
    generated,
    *,
    real_captions=None,
    generated_captions=None,
    k: int = 5,
    kernel: str = "cosine",
    bandwidth: float | None = None,
    bootstrap: int = 200,
    level: float = 0.95,
    pooled: bool = False,
    random_state: int = 0,
) -> list[dict]:
    """Precision, recall, density, coverage and Vendi scores, per caption, as tidy rows with bootstrap intervals.

    Without captions the two sets are compared as one (``caption`` :data:`ALL_CAPTIONS`). With
    them, each caption of the generated set is compared with the real images of that caption,
    and the rows with ``caption`` :data:`WITHIN_CAPTIONS` give the mean over captions; the
    comparison of the pooled sets (``caption`` :data:`ALL_CAPTIONS`) is added when ``pooled``.

    The intervals subsample without replacement: each resample holds half of a caption's real
    and half of its generated images (at least k + 1 of each), all distinct, so the metrics see
    no copies (a bootstrap with replacement put Vendi's interval below its point estimate). The
    spread of a metric over the half-samples is rescaled to the full sets
    (:func:`validate.intervals.subsample_scale`, 1 for halves). For density it is reflected
    about the point estimate, centred on the subsamples' median
    (:func:`validate.intervals.subsample_interval`); for the shares (:data:`SHARES`), whose half-sample
    values pile up at 1, the interval is the point estimate ± z standard deviations of the half-sample
    values (:func:`validate.intervals.subsample_normal_interval`); so is Vendi's, whose spread comes from
    half- and quarter-samples (:func:`validate.intervals.quadratic_subsample_scale`: near its maximum the
    half-samples spread up to sqrt(3) times too far). Each is for the metric at these set
    sizes (recall and Vendi grow with the size) and contains the point estimate. Its coverage is measured
    by ``benchmarks/interval_calibration.py``.
    Cost: O(bootstrap (n m + n³ + m³)) per caption, d³ in place of n³ and m³ for cosine features
    of width d below them. Measured on 2 cores with 1280-d features and 200 resamples, with
    replacement: 3 s for 41 captions of 1509 images, against about 90 s for their pooled comparison.

    Parameters
    ----------
    real, generated : array_like, shape (n, d) and (m, d)
        Features of the real and the generated images.
    real_captions, generated_captions : sequence of str, optional
        Captions of the images, both or neither; every generated caption needs more than ``k``
        real and more than ``k`` generated images.
    k : int
        Neighbour count of the kNN balls.
    kernel, bandwidth
        The Vendi kernel, as in :func:`vendi_score`.
    bootstrap : int
        Subsamples for the intervals (0: none, the intervals are NaN).
    level : float
        Coverage of the intervals.
    pooled : bool
        With captions, whether to add the comparison of the pooled sets.
    random_state : int >= 0
        Seed; each caption draws from its own stream (``qtm.random.derive_seed``, keyed by the
        caption), so its intervals do not depend on which other captions there are.

    Returns
    -------
    list of dict
        Rows with ``caption``, ``statistic`` (one of :data:`STATISTICS`), ``value``, ``ci_low``,
        ``ci_high``, ``n_real`` and ``n_generated``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> real, generated = rng.standard_normal((40, 3)), 0.3 * rng.standard_normal((40, 3))
    >>> rows = diversity_metrics(real, generated, bootstrap=50)
    >>> {r["statistic"]: round(r["value"], 2) for r in rows}["recall"] < 0.5  # a narrowed set misses real images
    True
    """
    if (real_captions is None) != (generated_captions is None):
        raise ValidateError("give the captions of both the real and the generated images, or of neither")
    reference = diversity_reference(real, captions=real_captions, k=k, kernel=kernel, bandwidth=bandwidth)
    return compare_with_reference(
        reference, generated, captions=generated_captions, bootstrap=bootstrap, level=level, pooled=pooled,
        random_state=random_state,
    )


@dataclass(frozen=True)
class DiversityReference:
    """The real side of :func:`diversity_metrics`, computed once for any number of generated sets.

    ``groups`` maps each caption (:data:`ALL_CAPTIONS` without captions) to its images' indices;
    ``distances`` holds each group's distance matrix. Each group's Vendi kernel is made on first use
    (:meth:`similarity`), so that a comparison refused for its captions is refused before the kernel's checks.
    """

    features: np.ndarray
    captions: list[str] | None
    groups: dict[str, np.ndarray]
    distances: dict[str, np.ndarray]
    k: int
    kernel: str
    bandwidth: float | None
    kernels: dict[str, VendiKernel] = field(default_factory=dict)

    def similarity(self, caption: str) -> VendiKernel | None:
        """The Vendi kernel of a caption's real images; None for the RBF kernel without a bandwidth (its width
        depends on the generated set too)."""
        if self.kernel == "rbf" and self.bandwidth is None:
            return None
        if caption not in self.kernels:
            index = self.groups[caption]
            self.kernels[caption] = similarity(self.features[index], self.kernel, self.bandwidth)
        return self.kernels[caption]


def diversity_reference(
    real, *, captions=None, k: int = 5, kernel: str = "cosine", bandwidth: float | None = None
) -> DiversityReference:
    """The real set's groups, distance matrices and similarity matrices (see :class:`DiversityReference`).

    Examples
    --------
    >>> reference = diversity_reference(np.random.default_rng(0).standard_normal((12, 2)), captions=["a", "b"] * 6)
    >>> {caption: matrix.shape for caption, matrix in reference.distances.items()}
    {'a': (6, 6), 'b': (6, 6)}
    """
    k = check_int(k, "k", minimum=1)
    check_choice(kernel, "kernel", KERNELS)
    real = _matrix(real, "real features")
    if captions is None:
        groups = {ALL_CAPTIONS: np.arange(len(real))}
    else:
        if len(captions) != len(real):
            raise ValidateError(
                f"{len(captions)} real captions for {len(real)} real images; give one caption per image"
            )
        groups = group_indices(captions, min_size=k + 1, what="real images")
    return DiversityReference(
        features=real,
        captions=None if captions is None else list(captions),
        groups=groups,
        distances={caption: cdist(real[index], real[index]) for caption, index in groups.items()},
        k=k,
        kernel=kernel,
        bandwidth=bandwidth,
    )


def compare_with_reference(
    reference: DiversityReference,
    generated,
    *,
    captions=None,
    bootstrap: int = 200,
    level: float = 0.95,
    pooled: bool = False,
    random_state: int = 0,
) -> list[dict]:
    """:func:`diversity_metrics` of ``generated`` against a reference computed once (:func:`diversity_reference`).

    ``captions`` are the generated images' captions, given exactly when the reference has captions.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> reference = diversity_reference(rng.standard_normal((40, 3)))
    >>> rows = compare_with_reference(reference, 0.3 * rng.standard_normal((40, 3)), bootstrap=0)
    >>> {r["statistic"]: r["value"] for r in rows}["precision"]
    1.0
    """
    bootstrap = check_int(bootstrap, "bootstrap", minimum=0)
    check_unit_interval(level, "level", closed_left=False, closed_right=False)
    if (reference.captions is None) != (captions is None):
        raise ValidateError("give the captions of both the real and the generated images, or of neither")
    k, real = reference.k, reference.features
    real, generated = _features(real, generated, k=k if captions is None else None)
    if captions is None:
        groups = {ALL_CAPTIONS: (reference.groups[ALL_CAPTIONS], np.arange(len(generated)))}
    else:
        groups = _caption_groups(reference, generated, captions)
        if pooled:
            groups[ALL_CAPTIONS] = (np.arange(len(real)), np.arange(len(generated)))
    rows, replicates = [], {}
    for caption, (real_index, generated_index) in groups.items():
        seed = derive_seed(random_state, _BOOTSTRAP_STREAM, zlib.crc32(caption.encode()))
        known = caption in reference.groups and reference.groups[caption] is real_index
        values, samples = _group_metrics(
            real[real_index],
            generated[generated_index],
            d_real=reference.distances[caption] if known else None,
            k_real=reference.similarity(caption) if known else None,
            k=k,
            kernel=reference.kernel,
            bandwidth=reference.bandwidth,
            bootstrap=bootstrap,
            seed=seed,
        )
        replicates[caption] = samples
        rows += _rows(caption, values, samples, level, len(real_index), len(generated_index))
    captions = [caption for caption in groups if caption != ALL_CAPTIONS]
    if captions:
        # Each caption's subsamples are independent, so averaging their rescaled values b over captions
        # gives a rescaled value of the mean over captions.
        per_caption = [row for row in rows if row["caption"] != ALL_CAPTIONS]
        mean_values = {s: np.mean([row["value"] for row in per_caption if row["statistic"] == s]) for s in STATISTICS}
        mean_samples = np.mean([replicates[caption] for caption in captions], axis=0)
        rows += _rows(WITHIN_CAPTIONS, mean_values, mean_samples, level, len(real), len(generated))
    return rows


def _group_metrics(real, generated, *, d_real, k_real, k, kernel, bandwidth, bootstrap, seed):
    """Point values of :data:`STATISTICS` and their (bootstrap, 6) subsampled values, rescaled, for one pair of sets.

    ``d_real`` and ``k_real`` are the real set's distance matrix and Vendi kernel when already known.
    The subsampled values come back times :func:`validate.intervals.subsample_scale` of each set (NaN when a
    set is too small to subsample); the subsamples go through in batches of index rows.
    """
    d_real = cdist(real, real) if d_real is None else d_real
    d_generated, cross = cdist(generated, generated), cdist(real, generated)
    # One bandwidth for both sets and every resample, so that their Vendi scores compare.
    if kernel == "rbf" and bandwidth is None:
        bandwidth = float(np.median(pdist(np.concatenate([real, generated]))))
    k_real = similarity(real, kernel, bandwidth) if k_real is None else k_real
    k_generated = similarity(generated, kernel, bandwidth)
    rng = check_random_state(seed)
    n, m = len(real), len(generated)
    sizes = subsample_size(n, minimum=k + 1), subsample_size(m, minimum=k + 1)
    real_index = subsample_indices(n, sizes[0], bootstrap, rng)
    generated_index = subsample_indices(m, sizes[1], bootstrap, rng)

    def metrics(real_rows, generated_rows):
        found = _prdc(d_real, d_generated, cross, real_rows, generated_rows, k)
        vendi = sample_vendi(k_generated, generated_rows), sample_vendi(k_real, real_rows)
        return np.column_stack([*(found[name] for name in PRDC), *vendi])

    point = metrics(np.arange(n)[None, :], np.arange(m)[None, :])[0]
    # A batch holds a few (rows, n, m) gathers of the distance matrices; bounded so that pooled sets of
    # thousands of images stay within memory.
    rows = max(1, _BATCH_ELEMENTS // max(n, m) ** 2)
    table = np.concatenate(
        [np.empty((0, len(STATISTICS)))]
        + [metrics(real_index[i : i + rows], generated_index[i : i + rows]) for i in range(0, bootstrap, rows)]
    )
    # Both sets' halves vary together; with equal fractions one factor serves both.
    scale = max(subsample_scale(n, sizes[0]), subsample_scale(m, sizes[1]))
    samples = table * np.array([scale] * len(PRDC) + [1.0, 1.0])
    # A Vendi score depends on its own set only; near its maximum its half-samples spread wider than the jackknife
    # factor allows for, so its factor comes from a second, smaller subsample size (each score's own set).
    for column, (kernel_matrix, size, full) in enumerate(((k_generated, sizes[1], m), (k_real, sizes[0], n))):
        halves = table[:, len(PRDC) + column]
        quarter = max(2, size // 2)
        if bootstrap < 2 or size >= full or quarter >= size:
            samples[:, len(PRDC) + column] = halves * subsample_scale(full, size)
            continue
        quarters = sample_vendi(kernel_matrix, subsample_indices(full, quarter, bootstrap, rng))
        factor = quadratic_subsample_scale(halves, quarters, full, (size, quarter))
        samples[:, len(PRDC) + column] = halves.mean() + (halves - halves.mean()) * factor
    values = {statistic: float(value) for statistic, value in zip(STATISTICS, point, strict=True)}
    return values, samples


def _rows(caption, values, samples, level, n_real, n_generated) -> list[dict]:
    point = np.array([values[statistic] for statistic in STATISTICS])
    low, high = subsample_interval(point, samples, level=level)
    shares = [STATISTICS.index(statistic) for statistic in SHARES]
    counts = [n_generated if statistic == "precision" else n_real for statistic in SHARES]
    low[shares], high[shares] = subsample_normal_interval(point[shares], samples[:, shares], level=level,
                                                          counts=counts)
    vendi = [STATISTICS.index(statistic) for statistic in VENDI]
    low[vendi], high[vendi] = subsample_normal_interval(point[vendi], samples[:, vendi], level=level)
    # The reflected interval can leave the metric's range (a precision of 0 got [-0.02, 0.004]); the range holds.
    bottom, top = np.array([RANGES[statistic] for statistic in STATISTICS]).T
    low, high = np.clip(low, bottom, top), np.clip(high, bottom, top)
    return [
        {
            "caption": caption,
            "statistic": statistic,
            "value": float(values[statistic]),
            "ci_low": float(low[i]),
            "ci_high": float(high[i]),
            "n_real": n_real,
            "n_generated": n_generated,
        }
        for i, statistic in enumerate(STATISTICS)
    ]


def _prdc(d_real, d_generated, cross, real_index, generated_index, k) -> dict[str, np.ndarray]:
    """prdc's four metrics of each (re)sampled pair of sets, from the distance matrices of the full sets.

    ``real_index`` (b, n) and ``generated_index`` (b, m) hold one sample per row; each metric comes back as (b,).
    """
    real_radii = _radii(d_real, real_index, k)
    generated_radii = _radii(d_generated, generated_index, k)
    distances = cross[real_index[:, :, None], generated_index[:, None, :]]
    in_real_ball = distances < real_radii[:, :, None]
    return {
        "precision": in_real_ball.any(axis=1).mean(axis=1),
        "recall": (distances < generated_radii[:, None, :]).any(axis=2).mean(axis=1),
        "density": in_real_ball.sum(axis=1).mean(axis=1) / k,
        "coverage": in_real_ball.any(axis=2).mean(axis=1),
    }


def _radii(distances, index, k) -> np.ndarray:
    """Distance from each sampled point to its k-th nearest other sampled point, its own copies left out.

    ``index`` (b, n) holds one sample per row; the radii come back as (b, n). Each point's
    neighbours are ranked once; a sample's radius of point i is the distance at which the
    multiplicities of i's other sampled neighbours, nearest first, add up to k (infinite when
    fewer than k other points were drawn).
    """
    size = len(distances)
    order = np.argsort(distances, axis=1, kind="stable")
    ranked = np.take_along_axis(distances, order, axis=1)
    counts = multiplicities(index, size)
    # k other copies nearly always lie among the first few ranks: rank those first, then the rest
    # only for the (sample, point) pairs that had not reached k there.
    head = min(size, 4 * k)
    rank, reached = _rank_reaching(counts, order[:, :head], k)
    short = np.nonzero(~reached)
    if head < size and len(short[0]):
        rank[short], reached[short] = _rank_reaching(counts[short[0]], order[short[1]], k, point=short[1])
    radius = np.where(reached, ranked[np.arange(size), rank], np.inf)
    return np.take_along_axis(radius, index, axis=1)


def _rank_reaching(counts, order, k, *, point=None):
    """The first rank in ``order`` (..., ranks) at which a point's other sampled copies add up to k, and whether
    they do; ``counts`` (b, size) or, with ``point`` given, one row per point of ``order``."""
    if point is None:
        others = counts[:, order]  # (b, i, rank): copies of i's rank-th nearest point
        others[:, order == np.arange(len(order))[:, None]] = 0
    else:
        others = np.take_along_axis(counts, order, axis=1)
        others[order == point[:, None]] = 0
    reached = np.cumsum(others, axis=-1) >= k
    return np.argmax(reached, axis=-1), reached[..., -1]


def _caption_groups(reference: DiversityReference, generated, generated_captions) -> dict[str, tuple]:
    if len(generated_captions) != len(generated):
        raise ValidateError(
            f"{len(generated_captions)} generated captions for {len(generated)} generated images; "
            "give one caption per image"
        )
    groups = {}
    for caption, generated_index in group_indices(
        generated_captions, min_size=reference.k + 1, what="generated images"
    ).items():
        if caption not in reference.groups:
            raise ValidateError(f"generated caption {caption!r} has no real images to compare with")
        groups[caption] = (reference.groups[caption], generated_index)
    return groups


def _matrix(values, name) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 2 or len(array) == 0 or not np.isfinite(array).all():
        raise ValidateError(f"{name} must be a nonempty finite (n, d) array, got shape {array.shape}")
    return array


def _features(real, generated, *, k):
    """Both sets as float (n, d) arrays of one width, each with more than ``k`` points when ``k`` is given."""
    real, generated = _matrix(real, "real features"), _matrix(generated, "generated features")
    if real.shape[1] != generated.shape[1]:
        raise ValidateError(f"real features are {real.shape[1]}-d, generated ones {generated.shape[1]}-d")
    if k is not None and min(len(real), len(generated)) <= k:
        raise ValidateError(
            f"k={k} nearest neighbours need more than {k} images in each set, got {len(real)} real "
            f"and {len(generated)} generated; lower k or use more images"
        )
    return real, generated
