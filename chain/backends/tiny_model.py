"""The tiny backend's network: a diffusers UNet with its caption encoder (:class:`TinyModel`), and the
conversion of PIL images to and from the tensors it reads and writes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from chain.backends.tiny_config import TinyConfig
from chain.errors import ChainError
from chain.text_encoders import HashTextEncoder, MiniLMEncoder


class TinyModel(nn.Module):
    """UNet + caption encoder: ``model(x, t, model.condition(captions))`` predicts the noise."""

    def __init__(self, config: TinyConfig):
        super().__init__()
        self.config = config
        channels = tuple(config.channels)
        if not config.cross_attention:
            from diffusers import UNet2DModel

            # Self-attention only in the middle block, at the lowest resolution: at the top
            # level it would dominate the CPU cost.
            self.unet = UNet2DModel(
                sample_size=config.resolution,
                in_channels=config.image_channels,
                out_channels=config.image_channels,
                block_out_channels=channels,
                down_block_types=("DownBlock2D",) * len(channels),
                up_block_types=("UpBlock2D",) * len(channels),
                layers_per_block=config.layers_per_block,
                norm_num_groups=8,
                attention_head_dim=16,
                class_embed_type="identity",
            )
            self.text = HashTextEncoder(config.vocabulary, channels[0] * 4)
            return
        from diffusers import UNet2DConditionModel

        if config.text_encoder == "minilm":
            self.frozen_text = MiniLMEncoder(length=config.context_length)  # a plain attribute: never trained
            dim = self.frozen_text.dim
        else:
            self.text = HashTextEncoder(config.vocabulary, channels[0] * 4)
            dim = channels[0] * 4
        if len(config.cross_attention) != len(channels):
            raise ChainError(f"cross_attention needs one flag per UNet level, {len(channels)}; "
                             f"got {config.cross_attention}")
        self.unet = UNet2DConditionModel(
            sample_size=config.resolution,
            in_channels=config.image_channels,
            out_channels=config.image_channels,
            block_out_channels=channels,
            down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in config.cross_attention),
            up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in config.cross_attention[::-1]),
            layers_per_block=config.layers_per_block,
            norm_num_groups=8,
            attention_head_dim=4,  # diffusers reads this as the number of heads
            cross_attention_dim=dim,
            class_embed_type="projection",
            projection_class_embeddings_input_dim=dim,
        )

    def condition(self, captions: Sequence[str]) -> tuple[torch.Tensor, ...]:
        """What the UNet reads of ``captions``: ``(embedding,)`` or ``(context, pooled)``; cat-able along batch."""
        if not self.config.cross_attention:
            return (self.text(captions),)
        if self.config.text_encoder == "minilm":
            return self.frozen_text.encode(captions, device=self.unet.device)
        return self.text.encode(captions, length=self.config.context_length)

    def forward(self, x: torch.Tensor, t: torch.Tensor, condition: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if not self.config.cross_attention:
            return self.unet(x, t, class_labels=condition[0]).sample
        context, pooled = condition
        return self.unet(x, t, encoder_hidden_states=context, class_labels=pooled).sample


def images_to_tensor(images: Sequence, resolution: int, *, channels: int = 1) -> torch.Tensor:
    """PIL images -> grey ``(N, 1, R, R)`` or RGB ``(N, 3, R, R)`` tensor in [-1, 1] (resized if needed)."""
    from PIL import Image

    arrays = []
    for image in images:
        converted = image.convert("L" if channels == 1 else "RGB")
        if converted.size != (resolution, resolution):
            converted = converted.resize((resolution, resolution), Image.BILINEAR)
        arrays.append(np.asarray(converted, dtype=np.float32) / 127.5 - 1.0)
    stacked = torch.from_numpy(np.stack(arrays))
    return stacked[:, None] if channels == 1 else stacked.permute(0, 3, 1, 2).contiguous()


def tensor_to_images(x: torch.Tensor) -> list:
    """``(N, 1, R, R)`` or ``(N, 3, R, R)`` tensor in [-1, 1] -> grey or RGB PIL images."""
    from PIL import Image

    pixels = ((x.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).cpu()
    if x.shape[1] == 1:
        return [Image.fromarray(p, mode="L") for p in pixels[:, 0].numpy()]
    return [Image.fromarray(p, mode="RGB") for p in pixels.permute(0, 2, 3, 1).numpy()]
