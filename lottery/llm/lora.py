"""LoRA adapters (through `peft`) on the pruned linears of a model, merged back under the pruning mask.

The merged weight is mask ⊙ (W + (alpha / r) · B A): peft merges W + (alpha / r) · B A, then the mask is applied
again, so the merged model has exactly the sparsity of its masks.
"""

from __future__ import annotations

from torch import Tensor, nn

from lottery.llm.checkpoint import apply_masks


def lora_targets(masks: dict[str, Tensor]) -> list[str]:
    """The module names of the masked weights (`model.layers.0.mlp.up_proj.weight` -> `model.layers.0.mlp.up_proj`)."""
    return sorted(name.removesuffix(".weight") for name in masks if name.endswith(".weight"))


def add_lora(model: nn.Module, masks: dict[str, Tensor], r: int, alpha: float, dropout: float = 0.0) -> nn.Module:
    """The peft model with adapters on every masked linear; only the adapters are trainable."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=lora_targets(masks),
                        bias="none")
    return get_peft_model(model, config)


def merge_under_mask(peft_model: nn.Module, masks: dict[str, Tensor]) -> nn.Module:
    """The base model with the adapters merged in and the masks re-applied: W <- mask ⊙ (W + BA)."""
    merged = peft_model.merge_and_unload()
    apply_masks(merged, masks)
    return merged
