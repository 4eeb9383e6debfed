"""What the ``sd`` backend's finetuning reads: images as pixel tensors, and endless epoch batches of indices."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from chain.errors import ChainError


def to_pixels(images: Sequence, resolution: int) -> torch.Tensor:
    """Images as a (N, 3, R, R) tensor in [-1, 1]: resized to cover R x R and centre-cropped."""
    arrays = []
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise ChainError(f"training image {i} is a {type(image).__name__}, not a PIL image")
        fitted = ImageOps.fit(image.convert("RGB"), (resolution, resolution), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(fitted, dtype=np.float32))
    stacked = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return stacked / 127.5 - 1.0


def epoch_batches(count: int, batch_size: int, generator: torch.Generator):
    """Endless batches of example indices: each epoch a fresh permutation, batches may span two epochs.

    The indices live on the generator's device.
    """
    pending = torch.empty(0, dtype=torch.long, device=generator.device)
    while True:
        while len(pending) < batch_size:
            pending = torch.cat([pending, torch.randperm(count, generator=generator, device=generator.device)])
        yield pending[:batch_size]
        pending = pending[batch_size:]
