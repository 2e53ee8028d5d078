"""A hand-made reveal rule at any step count: the LearnedSampler with fixed rule weights, even
counts and coefficient 1 (e.g. "random order, but keep neighbours apart")."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from students.learned_sampler import LearnedSampler
from teachers.samplers.base import SampleOutput


class RuleSampler:
    """Args:
        weights: rule weight per feature name (students.FEATURES), the same at every step.
        eos_fill: a committed end token turns every later answer position into the end token.
    """

    name = "rule"

    def __init__(self, weights: dict[str, float], eos_fill: bool = False) -> None:
        self.weights = dict(weights)
        self.eos_fill = bool(eos_fill)
        LearnedSampler(1, learn=[], rule_init=self.weights)  # validates the feature names now

    def sample(self, denoiser: nn.Module, steps: int, *, batch_size: int | None = None, seq_len: int | None = None,
               prompt: Tensor | None = None, attention_mask: Tensor | None = None,
               generator: torch.Generator | None = None, return_trace: bool = False) -> SampleOutput:
        sampler = LearnedSampler(steps, learn=[], rule_init=self.weights, eos_fill=self.eos_fill)
        return sampler.to(prompt.device if prompt is not None else "cpu").sample(
            denoiser, steps, batch_size=batch_size, seq_len=seq_len, prompt=prompt, attention_mask=attention_mask,
            generator=generator, return_trace=return_trace)
