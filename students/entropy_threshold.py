"""Entropy-threshold parallel decoding (dParallel, Chen et al. 2025), optionally carrying its own
certainty-forced denoiser: the student of certainty-forcing distillation.

Semi-autoregressive: the masked span is cut into blocks of `block_size` positions, finished left to
right. At each step the denoiser runs once on the rows not finished yet; inside each row's current
block every masked position whose predictive entropy H(softmax(logits)) is below `threshold` is
committed, and always at least the one with the lowest entropy, so every step makes progress and a
row finishes in at most as many steps as it has masked positions. A confident model commits many
tokens per forward pass; an unsure one falls back to one token per step.
"""

from __future__ import annotations

import os

from torch import Tensor, nn

from students.lora import adapter_state, check_lora, load_adapter_state
from students.own_denoiser import (attach_lora, copy_denoiser, denoiser_spec, is_hf_spec, lora_network,
                                   merged_denoiser)
from teachers.samplers.base import AdaptiveSampler
from teachers.samplers.selection import RULES, certainty, threshold_set
from teachers.transformer import TransformerDenoiser


class EntropyThresholdSampler(AdaptiveSampler, nn.Module):
    """Args:
        threshold: entropy (nats) below which a masked position of the current block is committed
            (rule "entropy"), or the largest class probability at or above which it is (rule
            "confidence", Fast-dLLM's rule).
        block_size: positions per semi-autoregressive block (None: the whole answer is one block).
        temperature: 0 commits the argmax token; > 0 draws from softmax(logits / temperature)
            (the entropy that decides *where* to commit is always that of softmax(logits)).
        eos_id: end token; committing it fills every masked position after it with it (the answer
            stops there). None: no end token (fixed-length answers, as in `paths`).
        eos_fill: with no `eos_id`, the same filling with the denoiser's end token (`denoiser.eos_id`);
            off, the model decides every position.
        denoiser: the sampler's own denoiser: a TransformerDenoiser config, or a transformers adapter
            spec (its weights live in the export's `denoiser/` directory, see students/own_denoiser.py),
            or None to decode with the denoiser passed to `sample` (e.g. the undistilled teacher).
        lora: {r, alpha, dropout, target_modules}: the own denoiser carries LoRA adapters (PEFT).
        adapter_only: only the adapter tensors are saved; the base weights are the teacher's, taken
            from the denoiser passed to `sample` (checked against `teacher_ref` when loaded).
    """

    name = "entropy_threshold"

    def __init__(
        self,
        threshold: float = 0.05,
        block_size: int | None = 32,
        temperature: float = 0.0,
        eos_id: int | None = None,
        denoiser: dict | None = None,
        lora: dict | None = None,
        adapter_only: bool = False,
        rule: str = "entropy",
        eos_fill: bool = False,
    ) -> None:
        nn.Module.__init__(self)
        AdaptiveSampler.__init__(self, temperature, block_size, eos_fill=eos_fill)  # checks temperature, block_size
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0 (nats), got {threshold}")
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        if adapter_only and (lora is None or denoiser is None):
            raise ValueError("adapter_only needs both the denoiser architecture and the lora settings")
        self.threshold = float(threshold)
        self.eos_id = eos_id
        self.denoiser_config = dict(denoiser) if denoiser is not None else None
        self.lora = check_lora(dict(lora)) if lora is not None else None
        self.adapter_only = bool(adapter_only)
        self.rule = rule
        self.adapter_tensors: dict[str, Tensor] | None = None  # adapter_only, until bound to a teacher
        self.denoiser: nn.Module | None = None
        if denoiser is not None and not adapter_only and not is_hf_spec(self.denoiser_config):
            model = TransformerDenoiser(**self.denoiser_config)
            self.denoiser = attach_lora(model, self.lora) if self.lora else model

    @property
    def config(self) -> dict:
        return {"threshold": self.threshold, "block_size": self.block_size, "temperature": self.temperature,
                "eos_id": self.eos_id, "denoiser": self.denoiser_config, "lora": self.lora,
                "adapter_only": self.adapter_only, "rule": self.rule, "eos_fill": self.eos_fill}

    # --- the student's own denoiser ------------------------------------------------------------
    def init_denoiser(self, teacher: nn.Module) -> None:
        """Start the own denoiser as a copy of `teacher`: LoRA adapters (if `lora`) or all weights trainable."""
        model = copy_denoiser(teacher, float32=self.lora is None)
        self.denoiser_config = denoiser_spec(model)
        self.denoiser = attach_lora(model, self.lora) if self.lora else model.requires_grad_(True)

    def network(self, denoiser: nn.Module) -> nn.Module:
        """What `sample` calls: the own denoiser, else `denoiser` (binding an adapter-only export to it)."""
        if self.denoiser is not None:
            return self.denoiser
        if self.adapter_only:
            ref = getattr(self, "teacher_ref", None) or {}
            actual = getattr(denoiser, "sha256", None)
            if ref.get("sha256") and actual != ref["sha256"]:
                raise ValueError(f"this adapter was trained on the teacher with SHA-256 {ref['sha256'][:12]}..., "
                                 f"but the denoiser given has {str(actual)[:12]}...; pass that teacher")
            model = attach_lora(copy_denoiser(denoiser), self.lora)
            if self.adapter_tensors is not None:
                load_adapter_state(lora_network(model), self.adapter_tensors)
            self.denoiser = model.eval().requires_grad_(False)
            return self.denoiser
        if is_hf_spec(self.denoiser_config):
            raise ValueError("this student's transformers denoiser is not loaded: load the export with students.load(DIR)")
        return denoiser

    def merged(self) -> "EntropyThresholdSampler":
        """A standalone copy whose denoiser has the LoRA adapters merged into its weights (transformers
        students: the trained denoiser itself when there are no adapters; it is saved, not copied)."""
        if self.denoiser is None:
            raise ValueError("nothing to merge: this sampler has no denoiser of its own (bind it with sample() first)")
        out = EntropyThresholdSampler(self.threshold, self.block_size, self.temperature, self.eos_id,
                                      denoiser=self.denoiser_config, rule=self.rule, eos_fill=self.eos_fill)
        plain = merged_denoiser(self.denoiser) if self.lora else self.denoiser
        if is_hf_spec(self.denoiser_config):
            out.denoiser = plain
        else:
            out.denoiser.load_state_dict(plain.state_dict())
        return out.to(next(plain.parameters()).device).eval()

    def adapter(self) -> "EntropyThresholdSampler":
        """A copy that keeps only the LoRA adapter tensors (its base is the teacher at sampling time)."""
        if self.lora is None or self.denoiser is None:
            raise ValueError("adapter-only export needs a LoRA student (student.lora set) that has a denoiser")
        out = EntropyThresholdSampler(self.threshold, self.block_size, self.temperature, self.eos_id,
                                      denoiser=self.denoiser_config, lora=self.lora, adapter_only=True,
                                      rule=self.rule, eos_fill=self.eos_fill)
        state = adapter_state(lora_network(self.denoiser))
        out.adapter_tensors = {k: v.detach().cpu().clone() for k, v in state.items()}
        return out

    def export_state(self) -> dict[str, Tensor]:
        """The tensors an export's model.safetensors stores: the adapter's alone (adapter_only), none for
        a transformers denoiser (saved in `denoiser/` by `save_files`), else the whole state."""
        if self.adapter_only:
            return adapter_state(lora_network(self.denoiser)) if self.denoiser is not None else dict(self.adapter_tensors or {})
        if is_hf_spec(self.denoiser_config):
            return {}
        return self.state_dict()

    def load_export_state(self, state: dict[str, Tensor]) -> None:
        if self.adapter_only:
            self.adapter_tensors = dict(state)
        elif not is_hf_spec(self.denoiser_config):
            self.load_state_dict(state)

    def save_files(self, path) -> list[str]:
        """Write what does not fit model.safetensors (a transformers denoiser) under `path`; returns the
        directories written, whose digests the export records."""
        if is_hf_spec(self.denoiser_config) and not self.adapter_only:
            self.denoiser.save(os.path.join(path, "denoiser"))
            return ["denoiser"]
        return []

    def load_files(self, path) -> None:
        if is_hf_spec(self.denoiser_config) and not self.adapter_only:
            from teachers.hf import load_hf_denoiser

            self.denoiser = load_hf_denoiser(os.path.join(path, "denoiser"), self.denoiser_config)

    # --- decoding ------------------------------------------------------------------------------
    def plan(self, start_mask: Tensor, steps: int | None) -> int:
        """steps: an upper bound (None, or at least the number of masked positions): the decoder picks
        its own step count, at most one step per masked position."""
        most = int(start_mask.sum(-1).max()) if start_mask.numel() else 0
        if steps is not None and steps < most:
            raise ValueError(f"the entropy-threshold decoder picks its own step count (at most one per masked "
                             f"position); steps must be null or >= {most}, got {steps}")
        return most

    def fill_id(self, denoiser: nn.Module) -> int | None:
        """This student's own end token (`eos_id`) always ends an answer; else `eos_fill` with the denoiser's."""
        return self.eos_id if self.eos_id is not None else super().fill_id(denoiser)

    def select(self, logits: Tensor, candidates: Tensor) -> Tensor:
        """Commit the candidates below the entropy threshold (strictly) or at or above the confidence one."""
        sure = certainty(logits, self.rule)  # (B, L), on softmax(logits) whatever the temperature
        return threshold_set(sure, candidates, self.threshold, self.rule, strict=self.rule == "entropy")

    def describe(self, num_masked: int) -> str:
        own = "none (decodes the denoiser it is given)" if self.denoiser_config is None else (
            f"{'LoRA ' + str(self.lora) if self.lora else 'all weights fine-tuned'}"
            + (", adapter only (base = the teacher)" if self.adapter_only else ""))
        return "\n".join([
            "| setting | value |", "|---|---|",
            f"| {self.rule} threshold | {self.threshold:g}{' nats' if self.rule == 'entropy' else ''} |",
            f"| block size | {self.block_size} |",
            f"| temperature | {self.temperature:g} |",
            f"| own denoiser | {own} |",
            f"| most steps for {num_masked} positions | {num_masked} |",
        ])
