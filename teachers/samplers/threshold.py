"""Threshold parallel decoding: commit every masked position the model is sure enough of.

Two rules of the literature, each with at least one token per step (the most certain position):
  - "confidence" (Fast-dLLM, Wu et al. 2025, "Fast-dLLM: Training-free Acceleration of Diffusion
    LLM by Enabling KV Cache and Parallel Decoding", arXiv:2505.22618; `get_transfer_index` with a
    threshold): commit where the largest class probability is >= tau.
  - "entropy" (dParallel, Chen et al. 2025, "dParallel: Learnable Parallel Decoding for dLLMs"):
    commit where the predictive entropy is <= tau (nats).
Both run blockwise in the references (`block_size`): only the leftmost unfinished block of the
masked span is a candidate. Certainty is measured on softmax(logits), whatever the temperature;
Fast-dLLM and dParallel compute it in float64 (`float64_confidence`). Fast-dLLM scores the drawn
token's probability, which equals the largest one at temperature 0 (how it is run); scoring the
largest probability keeps the choice of positions independent of the draw, so one token per step
at temperature 1 is exact on the oracle.
"""

from __future__ import annotations

from torch import Tensor

from teachers.samplers.base import AdaptiveSampler
from teachers.samplers.selection import RULES, certainty, threshold_set


class ThresholdSampler(AdaptiveSampler):
    """Args:
        tau: the threshold: a probability for rule "confidence", nats for rule "entropy". A
            confidence tau above 1 (or an entropy tau below the smallest entropy) commits one
            position per step.
        rule: "confidence" (Fast-dLLM) or "entropy" (dParallel).
        float64_confidence: compute the certainty in float64, as both references do.
        temperature, block_size, max_steps, eos_fill: see AdaptiveSampler.

    `sample(denoiser, steps)` takes `steps` as a per-row budget of forward passes (None: none).
    """

    name = "threshold"

    def __init__(self, tau: float = 0.9, rule: str = "confidence", temperature: float = 1.0,
                 block_size: int | None = None, float64_confidence: bool = False, max_steps: int | None = None,
                 eos_fill: bool = False) -> None:
        super().__init__(temperature, block_size, max_steps, eos_fill)
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        if tau < 0:
            raise ValueError(f"tau must be >= 0 (a probability for rule=confidence, nats for rule=entropy), got {tau}")
        self.tau = float(tau)
        self.rule = rule
        self.float64_confidence = bool(float64_confidence)

    def select(self, logits: Tensor, candidates: Tensor) -> Tensor:
        return threshold_set(certainty(logits, self.rule, self.float64_confidence), candidates, self.tau, self.rule)
