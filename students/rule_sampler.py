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
    """

    name = "rule"

    def __init__(self, weights: dict[str, float]) -> None:
        self.weights = dict(weights)
        LearnedSampler(1, learn=[], rule_init=self.weights)  # validates the feature names now

    def sample(self, denoiser: nn.Module, steps: int, *, batch_size: int | None = None, seq_len: int | None = None,
               prompt: Tensor | None = None, generator: torch.Generator | None = None,
               return_trace: bool = False) -> SampleOutput:
        sampler = LearnedSampler(steps, learn=[], rule_init=self.weights)
        return sampler.to(prompt.device if prompt is not None else "cpu").sample(
            denoiser, steps, batch_size=batch_size, seq_len=seq_len, prompt=prompt, generator=generator,
            return_trace=return_trace)
