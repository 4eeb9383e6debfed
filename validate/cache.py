"""Embeddings cached per image folder: ``NAME.EMBEDDER.npy`` plus a JSON of what made them.

The JSON records the embedder's name and settings and each image's name, size in
bytes and modification time. A cache is reused only when all of these match; a
cache made with other settings, of other images, or that does not load (a
corrupt file) is recomputed, so a report never mixes settings.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qtm.io import atomic_path, write_json
from qtm.rundir import ImageSet
from validate.embedder import Embedder
from validate.embedders import load_image

BATCH = 16


@dataclass
class Embedded:
    """Features (n_images, n_features), per-image caption alignment (NaN without a text side), image sizes."""

    features: np.ndarray
    alignment: np.ndarray
    sizes: list[tuple[int, int]]
    from_cache: bool


def embed_image_set(
    images: ImageSet, embedder: Embedder, *, cache_dir, key: str, advance: Callable[[int], None] | None = None
) -> Embedded:
    """Embed every image of ``images``, reusing the cache in ``cache_dir`` when it was made identically.

    Parameters
    ----------
    images : ImageSet
    embedder : Embedder
    cache_dir : path-like
        Folder of the cache files (created when missing).
    key : str
        Name of this image set inside ``cache_dir`` (e.g. ``iteration_003``).
    advance : callable, optional
        Called with the number of images done after each batch (progress bars).

    Examples
    --------
    >>> import tempfile, PIL.Image
    >>> from validate.embed_stats import StatsEmbedder
    >>> from qtm.rundir import read_image_set
    >>> folder = Path(tempfile.mkdtemp())
    >>> PIL.Image.new("RGB", (4, 4), (255, 0, 0)).save(folder / "a.png")
    >>> images = read_image_set(folder, what="example")
    >>> first = embed_image_set(images, StatsEmbedder(), cache_dir=folder / "c", key="x")
    >>> again = embed_image_set(images, StatsEmbedder(), cache_dir=folder / "c", key="x")
    >>> first.from_cache, again.from_cache, bool((first.features == again.features).all())
    (False, True, True)
    """
    cache_dir = Path(cache_dir)
    stem = cache_dir / f"{key}.{embedder.name}"
    description = {
        "embedder": embedder.name,
        "settings": embedder.settings(),
        "images": [[path.name, path.stat().st_size, path.stat().st_mtime] for path in images.files],
        "captions": images.captions if embedder.has_alignment else None,
    }
    cached = _read_cache(stem, description)
    if cached is not None:
        if advance is not None:
            advance(len(images))
        return cached
    features, sizes = [], []
    for start in range(0, len(images), BATCH):
        batch = [load_image(path) for path in images.files[start : start + BATCH]]
        sizes.extend(image.size for image in batch)
        features.append(embedder.embed(batch))
        if advance is not None:
            advance(len(batch))
    features = np.concatenate(features).astype(np.float64)
    alignment = embedder.alignment(features, images.captions)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        # The old JSON goes first and the new one last, so no JSON ever describes arrays it did not make.
        stem.with_name(stem.name + ".json").unlink(missing_ok=True)
        _save_npy(stem.with_name(stem.name + ".npy"), features)
        _save_npy(stem.with_name(stem.name + ".alignment.npy"), alignment)
        write_json(stem.with_name(stem.name + ".json"), {**description, "sizes": sizes, "shape": list(features.shape)})
    except OSError as error:  # a read-only data folder: the embeddings are still good, only not kept
        warnings.warn(
            f"cannot write the embedding cache in {cache_dir} ({error.strerror}); continuing without it", stacklevel=2
        )
    return Embedded(features=features, alignment=alignment, sizes=[tuple(s) for s in sizes], from_cache=False)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def _read_cache(stem: Path, description: dict) -> Embedded | None:
    meta_path = stem.with_name(stem.name + ".json")
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        features = np.load(stem.with_name(stem.name + ".npy"), allow_pickle=False)
        alignment = np.load(stem.with_name(stem.name + ".alignment.npy"), allow_pickle=False)
        sizes = [tuple(size) for size in meta["sizes"]]
        shape = tuple(meta["shape"])
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        warnings.warn(f"cache {meta_path.name} in {stem.parent} is corrupt; recomputing it", stacklevel=3)
        return None
    # JSON round-trips tuples as lists, so compare in JSON form.
    if json.loads(json.dumps(description)) != {k: meta.get(k) for k in description}:
        return None
    if features.shape != shape or alignment.shape != (shape[0],) or len(sizes) != shape[0]:
        warnings.warn(f"cache {meta_path.name} in {stem.parent} is corrupt; recomputing it", stacklevel=3)
        return None
    return Embedded(features=features, alignment=alignment, sizes=sizes, from_cache=True)
