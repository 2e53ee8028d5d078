"""The fine-tuned denoiser a student carries (certainty forcing): a trainable copy of the teacher,
optionally with LoRA adapters, for the built-in TransformerDenoiser and for transformers adapters.

    built-in:      recorded as its TransformerDenoiser config; weights in the export's model.safetensors
    transformers:  recorded as the adapter's spec ({"class": "HFMaskedLM" | "HFDiffusionLM", dtype,
                   mask_id, ...}); weights saved with save_pretrained in the export's `denoiser/`
                   directory, which transformers can load as it is

LoRA goes on the network itself: the TransformerDenoiser, or the transformers model inside the
adapter (so PEFT sees a PreTrainedModel and `target_modules="all-linear"` works).
"""

from __future__ import annotations

from torch import nn

from students.lora import add_lora, merge_lora
from teachers.transformer import TransformerDenoiser


def is_hf_spec(config: dict | None) -> bool:
    return isinstance(config, dict) and str(config.get("class", "")).startswith("HF")


def is_hf(denoiser: nn.Module) -> bool:
    return hasattr(denoiser, "trainable_copy") and hasattr(denoiser, "spec")


def copy_denoiser(denoiser: nn.Module, float32: bool = False) -> nn.Module:
    """A trainable copy of `denoiser` (same architecture and weights, on the same device).

    float32: transformers weights are copied in float32 (full-weight training keeps float32 master
    weights while bf16-mixed autocasts the compute); LoRA leaves the base in the teacher's dtype.
    """
    if is_hf(denoiser):
        return denoiser.trainable_copy(float32=float32)
    if not isinstance(getattr(denoiser, "config", None), dict):
        raise ValueError(f"certainty forcing fine-tunes a copy of the teacher, which needs a TransformerDenoiser or a "
                         f"transformers teacher (got {type(denoiser).__name__}); use teacher=saved teacher.path=DIR, "
                         "teacher=hf_masked_lm, teacher=llada or teacher=dream")
    model = TransformerDenoiser(**denoiser.config)
    model.load_state_dict(denoiser.state_dict())
    return model.to(next(denoiser.parameters()).device).train()


def denoiser_spec(denoiser: nn.Module) -> dict:
    """What an export records to rebuild the denoiser (TransformerDenoiser config or adapter spec)."""
    return denoiser.spec() if is_hf(denoiser) else dict(denoiser.config)


def lora_network(denoiser: nn.Module) -> nn.Module:
    """The module PEFT wraps: the transformers model inside an adapter, else the denoiser itself."""
    return denoiser.model if is_hf(denoiser) else denoiser


def attach_lora(denoiser: nn.Module, spec: dict) -> nn.Module:
    """`denoiser` with LoRA adapters (base weights frozen, adapters trainable and starting at zero)."""
    if is_hf(denoiser):
        denoiser.model = add_lora(denoiser.model, spec)
        return denoiser
    return add_lora(denoiser, spec)


def merged_denoiser(denoiser: nn.Module) -> nn.Module:
    """A plain copy of a LoRA denoiser with the adapters merged into its weights."""
    if is_hf(denoiser):
        return denoiser.with_model(merge_lora(denoiser.model))
    return merge_lora(denoiser)
