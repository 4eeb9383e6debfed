"""Data sets of a chain run: an image folder with a ``metadata.jsonl`` of captions, or the built-in digits.

A folder data set follows the Hugging Face ``imagefolder`` layout: every image file
in the folder is listed in ``metadata.jsonl``, one JSON object per line with its
``file_name`` and its ``caption`` (``text`` is accepted too). Everything is
checked before a run starts, so that bad data never leaves a half-made run
directory behind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from chain.errors import ChainError

#: Name of the built-in data set: scikit-learn's handwritten digits (``digits:N`` takes the first N).
DIGITS = "digits"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
METADATA = "metadata.jsonl"


@dataclass
class Dataset:
    """Images (decoded PIL images), their captions and file names, and where they came from."""

    images: list
    captions: list[str]
    file_names: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.captions)


def load_dataset(spec: str) -> Dataset:
    """Load the data set named by ``--data``: a folder, ``digits`` or ``digits:N``.

    Examples
    --------
    >>> data = load_dataset("digits:20")
    >>> len(data), data.captions[3], data.images[0].size
    (20, 'a handwritten digit three', (8, 8))
    """
    spec = str(spec)
    if spec == DIGITS or spec.startswith(DIGITS + ":"):
        return load_digits_dataset(spec)
    return load_image_folder(Path(spec))


def load_digits_dataset(spec: str = DIGITS) -> Dataset:
    """scikit-learn's 1797 handwritten 8×8 digits (``digits:N``: the first N) with captions.

    The captions read ``"a handwritten digit seven"``; the images are grey, 0..255.
    """
    import numpy as np
    from PIL import Image

    from chain.backends.tiny import digits_arrays

    _, _, count_text = spec.partition(":")
    arrays, captions = digits_arrays(resolution=8)
    count = len(captions)
    if count_text:
        try:
            count = int(count_text)
        except ValueError:
            raise ChainError(f"--data {spec!r}: the count after 'digits:' must be a whole number") from None
        if not 1 <= count <= len(captions):
            raise ChainError(f"--data {spec!r}: the count must lie in 1..{len(captions)}")
    pixels = np.round(arrays[:count] * 255).astype(np.uint8)
    images = [Image.fromarray(p, mode="L") for p in pixels]
    names = [f"digit-{i:04d}.png" for i in range(count)]
    return Dataset(images=images, captions=captions[:count], file_names=names, source=spec)


def load_image_folder(folder: Path) -> Dataset:
    """Read and check an image folder with its ``metadata.jsonl`` (see the module docstring)."""
    from PIL import Image, UnidentifiedImageError

    if not folder.is_dir():
        raise ChainError(
            f"--data {str(folder)!r} is not a folder; give a folder of images with a {METADATA}, or '{DIGITS}'"
        )
    metadata = folder / METADATA
    if not metadata.is_file():
        raise ChainError(f"--data {str(folder)!r} has no {METADATA}; add one line per image with file_name and caption")
    entries = _read_metadata(metadata)
    if not entries:
        raise ChainError(f"--data {str(folder)!r}: {METADATA} lists no images; the data set is empty")
    on_disk = {p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}
    listed = [name for name, _ in entries]
    missing = [name for name in listed if name not in on_disk]
    if missing:
        raise ChainError(
            f"--data {str(folder)!r}: {METADATA} names {len(missing)} image(s) that are not in the folder, "
            f"e.g. {missing[0]!r}; fix the file names"
        )
    unlisted = sorted(on_disk - set(listed))
    if unlisted:
        raise ChainError(
            f"--data {str(folder)!r}: {len(unlisted)} image(s) have no caption in {METADATA}, "
            f"e.g. {unlisted[0]!r}; add them or move them out"
        )
    images = []
    for name in listed:
        try:
            with Image.open(folder / name) as image:
                image.load()
                images.append(image.copy())
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise ChainError(f"--data: the image {str(folder / name)!r} does not decode ({error})") from None
    return Dataset(images=images, captions=[c for _, c in entries], file_names=listed, source=str(folder))


def _read_metadata(path: Path) -> list[tuple[str, str]]:
    entries, seen = [], set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ChainError(f"{str(path)!r} line {number} is not valid JSON") from None
        if not isinstance(record, dict):
            raise ChainError(f"{str(path)!r} line {number} must be a JSON object with file_name and caption")
        name = record.get("file_name")
        caption = record.get("caption", record.get("text"))
        if not isinstance(name, str) or not isinstance(caption, str):
            raise ChainError(f"{str(path)!r} line {number} needs a string 'file_name' and a string 'caption'")
        if Path(name).name != name:
            raise ChainError(f"{str(path)!r} line {number}: file_name {name!r} must name a file in the folder itself")
        if name in seen:
            raise ChainError(f"{str(path)!r} line {number}: {name!r} is listed twice")
        seen.add(name)
        entries.append((name, caption))
    return entries
