"""The registry that selects an embedder by name, and the image reader every embedder's input goes through.

The interface the embedders share is :class:`validate.embedder.Embedder`.

==============  ==============================================================
name            features
==============  ==============================================================
``stats``       six image statistics that need no weights (:mod:`validate.embed_stats`)
``efficientnet``pooled ImageNet EfficientNet-Lite0 features (:mod:`validate.embed_efficientnet`)
``clip``        open_clip image embeddings plus caption alignment (:mod:`validate.embed_clip`)
==============  ==============================================================
"""

from __future__ import annotations

import numpy as np

from validate.embed_clip import ClipEmbedder
from validate.embed_efficientnet import EfficientNetEmbedder
from validate.embed_stats import StatsEmbedder
from validate.embedder import Embedder
from validate.errors import ValidateError

EMBEDDER_NAMES = ("stats", "efficientnet", "clip")


def get_embedder(name: str, **options) -> Embedder:
    """Build the embedder called ``name`` with its options.

    Parameters
    ----------
    name : {"stats", "efficientnet", "clip"}
    **options
        Passed to the embedder (e.g. ``clip_model``, ``clip_pretrained``,
        ``clip_checkpoint``, ``batch_size``, ``device``); options an embedder does
        not take are ignored, so that one command line serves all embedders.

    Examples
    --------
    >>> get_embedder("stats").name
    'stats'
    >>> get_embedder("nope")
    Traceback (most recent call last):
    ...
    validate.errors.ValidateError: unknown embedder 'nope'; choose one of: stats, efficientnet, clip
    """
    if name == "stats":
        return StatsEmbedder()
    if name == "efficientnet":
        return EfficientNetEmbedder(batch_size=options.get("batch_size", 16), device=options.get("device", "cpu"))
    if name == "clip":
        return ClipEmbedder(
            model=options.get("clip_model", "ViT-B-32"),
            pretrained=options.get("clip_pretrained"),
            checkpoint=options.get("clip_checkpoint"),
            batch_size=options.get("batch_size", 16),
            device=options.get("device", "cpu"),
        )
    raise ValidateError(f"unknown embedder {name!r}; choose one of: {', '.join(EMBEDDER_NAMES)}")


#: PIL's modes of 16-bit grey pixels (a 16-bit grey PNG opens in one of them).
_GREY16_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def load_image(path):
    """Open an image file as 8-bit RGB; a file that does not decode is a one-line error naming it.

    16-bit grey pixels (0..65535) are scaled to 0..255, not clipped as PIL's conversion would.
    Pixels of unknown range (32-bit integers or floats) are a one-line error.

    Examples
    --------
    >>> import tempfile
    >>> from PIL import Image
    >>> path = tempfile.mkdtemp() + "/deep.png"
    >>> Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16)).save(path)
    >>> load_image(path).getpixel((0, 0))
    (255, 255, 255)
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode in _GREY16_MODES or (image.mode == "I" and image.format == "PNG"):
                pixels = np.asarray(image, dtype=np.float64) / 257.0
                return Image.fromarray(np.rint(pixels).astype(np.uint8), mode="L").convert("RGB")
            if image.mode in ("I", "F"):
                kind = "32-bit integer" if image.mode == "I" else "floating-point"
                raise ValidateError(
                    f"image {str(path)!r} has {kind} pixels of unknown range; save it as an 8- or 16-bit image"
                )
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as error:
        raise ValidateError(f"image {str(path)!r} does not decode ({error}); remove or regenerate it") from None
