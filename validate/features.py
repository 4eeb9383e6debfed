"""The features stage: every image set embedded once, standardised and projected once, for every later stage.

Every population of every run (generated iterations, the base model's reference points, the
real data; with the decomposition, each iteration's CFG-1, unconditional and replicate samples)
is embedded with the chosen embedder (cached, :mod:`validate.cache`); the trait axes are fixed
on the reference population (:mod:`validate.axes`); then each population's features are
standardised as the axes standardise them and projected on the axes, once. The reference's
diversity geometry (per caption its distance matrix and Vendi kernel, :mod:`validate.diversity`)
is made here too. The statistics, the diversity metrics and the decomposition read a
:class:`Features` and compute none of this again.

The reference population (axes, Fréchet distance, diversity) is the real data when a run has
it (``RUN/real`` or ``--real``), else the base model's CFG-1 generations
(``RUN/reference/cond`` or ``--reference DIR/cond``), else iteration 0 of the first run given.
Within captions, the axes are the principal components of the reference's within-caption
deviations.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qtm.errors import QTMError
from qtm.rundir import ImageSet, Run, read_samples
from validate.axes import TraitAxes, fit_axes
from validate.cache import embed_image_set
from validate.diversity import DiversityReference, diversity_reference
from validate.embedder import Embedder
from validate.runs import image_set
from validate.statistics import group_indices

CACHE_FOLDER = ".validate_cache"


@dataclass(frozen=True)
class Population:
    """One embedded image set: its images, per-image caption alignment (NaN without a text side), its
    features in the reference's standardised units (n, d) and their trait coordinates (n, k)."""

    images: ImageSet
    alignment: np.ndarray
    standardised: np.ndarray
    projected: np.ndarray


@dataclass(frozen=True)
class Features:
    """What the features stage computed once.

    ``populations`` is keyed by (run name, population, iteration; -1 for the reference points and
    the real data), in the order of the runs; ``samples`` by (run name, sample kind, iteration).
    ``reference`` holds the reference population's standardised features and ``reference_captions``
    its captions. ``diversity`` is the reference's diversity geometry, or None with the reason in
    ``diversity_error`` (then no generated set gets diversity metrics).
    """

    trait_axes: TraitAxes
    reference_name: str
    reference: np.ndarray
    reference_captions: list[str]
    populations: dict[tuple[str, str, int], Population]
    samples: dict[tuple[str, str, int], Population]
    diversity: DiversityReference | None
    diversity_error: QTMError | None

    def of_run(self, run: Run) -> Iterator[tuple[str, int, Population]]:
        """(population, iteration, Population) of one run, in the order they were embedded."""
        for (name, population, key), data in self.populations.items():
            if name == run.name:
                yield population, key, data


def features_stage(
    runs: list[Run], model: Embedder, *, axes: int, grouped: bool, samples: bool, warn, progress=None
) -> Features:
    """Embed, fix the trait axes, standardise and project every population (see the module docstring).

    ``samples``: also the decomposition's samples (``RUN/iter-NNN/samples``); ``progress`` as in
    :func:`embed_runs`.
    """
    sample_sets = {
        (run.name, kind, t): images
        for run in runs
        for t in run.iterations
        for kind, images in read_samples(run.path, t).items()
    } if samples else {}
    embedded, embedded_samples = embed_runs(runs, model, samples=sample_sets, warn=warn, progress=progress)
    reference_name, reference_key, reference_captions = _reference_population(runs, embedded)
    reference_features = embedded[reference_key].features
    # Within captions, the axes are the directions in which images of one caption differ: PCA of the
    # reference's within-caption deviations (grand mean added back, so the map's centre stays the same).
    axes_features = (
        _within_caption(reference_features, reference_captions, what=f"reference population ({reference_name})")
        if grouped
        else reference_features
    )
    trait_axes = fit_axes(axes_features, axes, standardize=model.standardize)

    def population(images, data) -> Population:
        standardised = trait_axes.standardise(data.features)
        return Population(images, data.alignment, standardised, trait_axes.project_standardised(standardised))

    by_name = {run.name: run for run in runs}
    populations = {key: population(image_set(by_name[key[0]], key[1], key[2]), data) for key, data in embedded.items()}
    reference = populations[reference_key].standardised
    try:
        geometry, error = diversity_reference(reference, captions=list(reference_captions) if grouped else None), None
    except QTMError as failure:
        geometry, error = None, failure
    return Features(
        trait_axes=trait_axes,
        reference_name=reference_name,
        reference=reference,
        reference_captions=list(reference_captions),
        populations=populations,
        samples={key: population(sample_sets[key], data) for key, data in embedded_samples.items()},
        diversity=geometry,
        diversity_error=error,
    )


def embed_runs(runs: list[Run], model: Embedder, *, samples=None, warn, progress=None) -> tuple[dict, dict]:
    """Embeddings of every image set of the runs, keyed by (run name, population, iteration; -1 for
    non-iterations), and of the image sets in ``samples`` (a dict of ImageSets), under their keys.

    ``progress(done, total, what)`` follows the images embedded (see :func:`validate.pipeline.validate_runs`).
    A folder of mixed image sizes, or run folders of different sizes, get a warning.
    """
    samples = samples or {}
    jobs = []
    for run in runs:
        for index, images in sorted(run.iterations.items()):
            jobs.append(((run.name, "generated", index), images))
        for kind, images in run.reference.items():
            jobs.append(((run.name, f"reference_{kind}", -1), images))
        if run.real is not None:
            jobs.append(((run.name, "real", -1), run.real))
    total = sum(len(images) for _, images in jobs) + sum(len(images) for images in samples.values())
    done = 0
    out = {}
    sizes = set()

    def embed(key, images):
        what = f"embedding ({model.name}: {key[0]} {key[1]} {key[2] if key[2] >= 0 else ''}".strip() + ")"

        def advance(n):
            nonlocal done
            done += n
            if progress is not None:
                progress(done, total, what)

        advance(0)
        return embed_image_set(images, model, cache_dir=_cache_dir(images), key=images.path.name, advance=advance)

    for key, images in jobs:
        embedded = embed(key, images)
        folder_sizes = set(embedded.sizes)
        if len(folder_sizes) > 1:
            warn(
                f"{images.path}: mixed image sizes {sorted(folder_sizes)[:4]}; each is embedded as is "
                f"(the neural embedders resize; image statistics such as sharpness depend on the size)"
            )
        sizes |= folder_sizes
        out[key] = embedded
    if len(sizes) > 1 and not any(len(set(d.sizes)) > 1 for d in out.values()):
        warn(f"image sizes differ between folders: {sorted(sizes)[:4]}; size-dependent statistics may shift")
    return out, {key: embed(key, images) for key, images in samples.items()}


def _cache_dir(images: ImageSet) -> Path:
    return images.path.parent / CACHE_FOLDER


def _reference_population(runs: list[Run], embedded: dict) -> tuple[str, tuple[str, str, int], list[str]]:
    """Name, key (in ``embedded``) and captions of the reference population."""
    for population, label in (("real", "real data"), ("reference_cond", "base model, CFG 1")):
        for run in runs:
            if (run.name, population, -1) in embedded:
                return f"{label} ({run.name})", (run.name, population, -1), image_set(run, population, -1).captions
    first = runs[0]
    index = min(first.iterations)
    return f"iteration {index} of {first.name}", (first.name, "generated", index), first.iterations[index].captions


def _within_caption(features: np.ndarray, captions, *, what: str) -> np.ndarray:
    """``features`` with each caption's mean replaced by the grand mean: only within-caption differences remain."""
    out = np.array(features, dtype=float)
    for index in group_indices(captions, what=what).values():
        out[index] -= out[index].mean(axis=0)
    return out + np.asarray(features, dtype=float).mean(axis=0)
