"""EB-sampler: entropy-bounded unmasking (Ben-Hamu, Gat, Severo, Nolte, Karrer 2025, "Accelerated
Sampling from Masked Diffusion Models via Entropy Bounded Unmasking", arXiv:2505.24857).

Revealing a set U of masked positions in one step draws them from the product of their marginals
instead of their joint; the KL between the two is the mutual information among them, which is at
most  sum_{i in U} H_i - max_{i in U} H_i  (H_i: the entropy of position i's marginal). Each step
sorts the masked positions by increasing entropy and reveals the largest prefix with

    sum_{i <= k} H_(i) - H_(k) <= gamma        (H_(1) <= H_(2) <= ...: sorted entropies)

The first position always passes (its left side is 0), so every step reveals at least one. Small
gamma reveals one position per step (exact on the oracle, in order of increasing entropy); large
gamma reveals many where the model is sure and spends forward passes where it is not, so rows
finish after different numbers of steps (SampleOutput.nfe_per_row).

The entropy is that of the distribution tokens are drawn from, softmax(logits / temperature), as in
diffusers' EntropyBoundScheduler; at temperature 0 (argmax) it is that of softmax(logits).
"""

from __future__ import annotations

from torch import Tensor

from teachers.samplers.base import AdaptiveSampler
from teachers.samplers.selection import entropy, entropy_bounded_set


class EBSampler(AdaptiveSampler):
    """Args:
        gamma: the entropy bound (nats) of one step's set; 0 reveals one position per step (plus
            positions of zero entropy).
        temperature, block_size, max_steps, eos_fill: see AdaptiveSampler.

    `sample(denoiser, steps)` takes `steps` as a per-row budget of forward passes (None: none);
    the bound alone decides the step count below it.
    """

    name = "eb"

    def __init__(self, gamma: float = 0.1, temperature: float = 1.0, block_size: int | None = None,
                 max_steps: int | None = None, eos_fill: bool = False) -> None:
        super().__init__(temperature, block_size, max_steps, eos_fill)
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0 (nats of summed entropy per step), got {gamma}")
        self.gamma = float(gamma)

    def select(self, logits: Tensor, candidates: Tensor) -> Tensor:
        return entropy_bounded_set(entropy(logits, self.temperature or 1.0), candidates, self.gamma)
