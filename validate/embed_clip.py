"""open_clip image embeddings and the caption-alignment trait.

Weights come from a named pretrained tag (``clip_pretrained``, which open_clip
downloads where the user has the network) or a local checkpoint file
(``clip_checkpoint``). Weights that cannot be had are a one-line error, never a
silent fallback to random weights.

``clip_pretrained="random"`` builds the architecture with random weights. Its
embeddings mean nothing: it exists only to test the plumbing offline (the test
suite uses it) and every table made with it says ``pretrained=random``.

The model runs in eval mode in fp32; image and caption embeddings are
L2-normalised, and an image's alignment is the cosine between its embedding and
its caption's (the CLIP score without the factor 100).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from validate.embedder import Embedder
from validate.errors import ValidateError

#: The ``clip_pretrained`` value that asks for random weights (plumbing tests only).
RANDOM_WEIGHTS = "random"


class ClipEmbedder(Embedder):
    """L2-normalised open_clip image embeddings; alignment against caption embeddings.

    Parameters
    ----------
    model : str
        An open_clip architecture name (``open_clip.list_models()``).
    pretrained : str, optional
        A pretrained tag, or ``"random"`` for random weights (plumbing tests only).
    checkpoint : path-like, optional
        A local checkpoint file (instead of ``pretrained``).

    Examples
    --------
    >>> from PIL import Image
    >>> clip = ClipEmbedder(model="ViT-S-32", pretrained="random")  # plumbing only
    >>> features = clip.embed([Image.new("RGB", (16, 16))])
    >>> round(float(np.linalg.norm(features)), 6)
    1.0
    """

    name = "clip"
    has_alignment = True

    def __init__(
        self,
        *,
        model: str = "ViT-B-32",
        pretrained: str | None = None,
        checkpoint=None,
        batch_size: int = 16,
        device: str = "cpu",
    ):
        if (pretrained is None) == (checkpoint is None):
            raise ValidateError(
                "the clip embedder needs exactly one of --clip-pretrained TAG or --clip-checkpoint PATH"
            )
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise ValidateError(
                f"--clip-checkpoint {str(checkpoint)!r} is not a file; give a local open_clip checkpoint"
            )
        self.model_name = model
        self.pretrained = pretrained
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.batch_size = int(batch_size)
        self.device = device
        self._loaded = None

    def settings(self) -> dict:
        settings = {
            "model": self.model_name,
            "pretrained": self.pretrained,
            "dtype": "float32",
            "normalised": True,
        }
        if self.checkpoint is not None:
            stat = self.checkpoint.stat()
            settings["checkpoint"] = {
                "path": str(self.checkpoint.resolve()),
                "bytes": stat.st_size,
                "mtime": stat.st_mtime,
            }
        return settings

    def _load(self):
        if self._loaded is not None:
            return self._loaded
        import open_clip

        if self.model_name not in open_clip.list_models():
            raise ValidateError(f"unknown --clip-model {self.model_name!r}; see open_clip.list_models()")
        if self.pretrained == RANDOM_WEIGHTS:
            warnings.warn("clip embedder with RANDOM weights: the embeddings test the plumbing only", stacklevel=2)
            source = None
        else:
            source = str(self.checkpoint) if self.checkpoint is not None else self.pretrained
        # open_clip logs its failures on the root logger too; the ValidateError below is the one line the user sees.
        logging.disable(logging.ERROR)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                self.model_name, pretrained=source, precision="fp32", device=self.device
            )
        except Exception as error:  # open_clip raises many kinds (network, hub, unknown tag, bad file)
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValidateError(
                f"cannot load CLIP weights {source!r} for {self.model_name} ({reason}); "
                f"give a local file with --clip-checkpoint PATH, or run where the weights can be downloaded"
            ) from None
        finally:
            logging.disable(logging.NOTSET)
        self._loaded = (model.eval(), preprocess, open_clip.get_tokenizer(self.model_name))
        return self._loaded

    def embed(self, images: Sequence) -> np.ndarray:
        import torch

        model, preprocess, _ = self._load()
        out = []
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                batch = torch.stack(
                    [preprocess(image.convert("RGB")) for image in images[start : start + self.batch_size]]
                )
                features = model.encode_image(batch.to(self.device)).float()
                out.append(torch.nn.functional.normalize(features, dim=-1).cpu().numpy().astype(np.float64))
        return np.concatenate(out) if out else np.zeros((0, 0))

    def embed_text(self, captions: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings of ``captions``."""
        import torch

        model, _, tokenizer = self._load()
        out = []
        with torch.no_grad():
            for start in range(0, len(captions), self.batch_size):
                tokens = tokenizer(list(captions[start : start + self.batch_size])).to(self.device)
                features = model.encode_text(tokens).float()
                out.append(torch.nn.functional.normalize(features, dim=-1).cpu().numpy().astype(np.float64))
        return np.concatenate(out)

    def alignment(self, features: np.ndarray, captions: Sequence[str]) -> np.ndarray:
        unique = sorted(set(captions))
        text = dict(zip(unique, self.embed_text(unique), strict=True))
        return np.array([float(features[i] @ text[caption]) for i, caption in enumerate(captions)])
