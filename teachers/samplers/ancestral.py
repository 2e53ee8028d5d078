"""MDLM ancestral sampling (Sahoo et al. 2024, "Simple and Effective Masked Diffusion LMs").

Linear schedule alpha_t = 1 - t on the grid t_i = 1 - i/T. From t to s < t each masked position is
revealed with probability (alpha_s - alpha_t) / (1 - alpha_t) = 1 / (T - i), in random order,
with its token drawn from the denoiser's x0 distribution.

counts="even" (default) reveals exactly the expected number per step (n/T, spread evenly), as
LLaDA does; the order is still uniformly random and independent of the drawn tokens, so at T = L
(one token per step) the sampler is exact on exact conditionals. counts="binomial" draws each
position independently, as MDLM's sampler does, so some steps reveal several tokens even at T = L.
With counts="even", `schedule` sets the counts per step; schedule="llada" is LLaDA's
remasking="random".
"""

from __future__ import annotations

import torch
from torch import Tensor

from teachers.samplers.base import MaskedSampler, draw_tokens, uniform_scores


class AncestralSampler(MaskedSampler):
    name = "ancestral"

    def __init__(self, temperature: float = 1.0, counts: str = "even", schedule: str = "even", eos_fill: bool = False) -> None:
        super().__init__(temperature, schedule, eos_fill)
        if counts not in ("even", "binomial"):
            raise ValueError(f"counts must be 'even' or 'binomial', got {counts!r}")
        if counts == "binomial" and schedule != "even":
            raise ValueError(f"counts='binomial' draws each step's count itself; schedule={schedule!r} needs counts='even'")
        self.counts = counts

    def scores(self, logits, draws, masked, start_mask, generator) -> Tensor:
        return uniform_scores(masked.shape, generator, masked.device)  # a uniformly random order

    def step(self, logits, tokens, masked, i, steps, start_mask, generator) -> Tensor:
        if self.counts == "even":
            return super().step(logits, tokens, masked, i, steps, start_mask, generator)
        draws = draw_tokens(logits, self.temperature, generator)
        reveal_prob = 1.0 / (steps - i)  # (alpha_s - alpha_t) / (1 - alpha_t); 1 at the last step
        reveal = masked & (uniform_scores(masked.shape, generator, masked.device) < reveal_prob)
        return torch.where(reveal, draws, tokens)
