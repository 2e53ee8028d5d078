"""LoRA adapters on a denoiser through PEFT: attach, merge back into plain weights, and the
adapter's own tensors (what an adapter-only export stores). PEFT is imported on first use: it pulls in
transformers, which takes seconds, and most samplers never need it."""

from __future__ import annotations

import copy

from torch import Tensor, nn

LORA_KEYS = ("r", "alpha", "dropout", "target_modules")


def check_lora(spec: dict) -> dict:
    """The LoRA settings as a plain dict with every key, or a ValueError naming what is wrong."""
    unknown = set(spec) - set(LORA_KEYS)
    if unknown:
        raise ValueError(f"student.lora has unknown keys {sorted(unknown)}; use {list(LORA_KEYS)}")
    spec = {"r": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": ["qkv", "proj", "mlp.0", "mlp.2"], **spec}
    if int(spec["r"]) < 1:
        raise ValueError(f"student.lora.r must be >= 1, got {spec['r']}")
    targets = spec["target_modules"]  # module names, or one string PEFT understands, e.g. "all-linear"
    return {"r": int(spec["r"]), "alpha": float(spec["alpha"]), "dropout": float(spec["dropout"]),
            "target_modules": targets if isinstance(targets, str) else list(targets)}


def add_lora(denoiser: nn.Module, spec: dict) -> nn.Module:
    """`denoiser` wrapped in place by PEFT: base weights frozen, LoRA matrices trainable (B = 0, so
    the wrapped model starts as the denoiser itself)."""
    from peft import LoraConfig, get_peft_model

    spec = check_lora(spec)
    config = LoraConfig(r=spec["r"], lora_alpha=spec["alpha"], lora_dropout=spec["dropout"],
                        target_modules=spec["target_modules"])
    return get_peft_model(denoiser, config)


def merge_lora(model: nn.Module) -> nn.Module:
    """A plain denoiser with the adapters merged into its weights (the model itself is untouched)."""
    return copy.deepcopy(model).merge_and_unload()


def adapter_state(model: nn.Module) -> dict[str, Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach() for k, v in get_peft_model_state_dict(model).items()}


def load_adapter_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load adapter tensors saved by `adapter_state`; every adapter tensor must be present."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    expected = set(get_peft_model_state_dict(model))
    if set(state) != expected:
        raise ValueError(f"adapter tensors do not match the LoRA config: missing {sorted(expected - set(state))[:3]}, "
                         f"unexpected {sorted(set(state) - expected)[:3]}")
    set_peft_model_state_dict(model, state)


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
