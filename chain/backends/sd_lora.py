"""The ``sd`` backend's LoRA adapter on the UNet's attention projections, and the fused attention projections
that carry its update when generating."""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention

#: The UNet attention projections that carry the LoRA adapter.
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
#: The adapter's name in peft.
ADAPTER = "chain"


def fresh_adapter(unet: UNet2DConditionModel, *, rank: int, seed: int, add: bool) -> None:
    """Make the LoRA adapter of ``unet`` new: B = 0 (the model is the base model again), A drawn from ``seed``.

    The adapter is added once (``add``) and reset in place afterwards: the same modules keep a compiled
    UNet valid, and the initial weights do not depend on whether the adapter existed before.
    """
    if add:
        from peft import LoraConfig

        config = LoraConfig(
            r=rank,
            lora_alpha=rank,
            init_lora_weights="gaussian",
            target_modules=list(LORA_TARGETS),
        )
        # peft initialises the new layers from the global RNG; the draws below replace them, so
        # the caller's stream is left as it was.
        with torch.random.fork_rng(devices=[]):
            unet.add_adapter(config, adapter_name=ADAPTER)
        for param in unet.parameters():
            if param.requires_grad:
                param.data = param.data.float()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if f".lora_A.{ADAPTER}." in name:
                # peft's "gaussian" initialisation: A ~ N(0, 1/r^2).
                param.copy_(torch.randn(param.shape, generator=generator) / rank)
            elif f".lora_B.{ADAPTER}." in name:
                param.zero_()


@torch.no_grad()
def refresh_fused_projections(unet: UNet2DConditionModel) -> None:
    """Copy each attention's current projection weights (with the LoRA update, if any) into its fused layer."""
    for module in unet.modules():
        if not (isinstance(module, Attention) and module.fused_projections):
            continue
        names, fused = (("to_k", "to_v"), module.to_kv) if module.is_cross_attention else (
            ("to_q", "to_k", "to_v"), module.to_qkv)
        layers = [getattr(module, name) for name in names]
        fused.weight.copy_(torch.cat([effective_weight(layer) for layer in layers]))
        if fused.bias is not None:
            fused.bias.copy_(torch.cat([layer.bias for layer in layers]))


def effective_weight(layer: torch.nn.Module) -> torch.Tensor:
    """A linear layer's weight as its forward applies it: peft's LoRA layers add B A times the scaling."""
    weight = layer.weight  # a peft layer answers with its base layer's weight
    if ADAPTER in getattr(layer, "lora_A", {}):
        weight = weight + layer.get_delta_weight(ADAPTER).to(weight.dtype)
    return weight
