"""Confidence-ordered top-k unmasking (MaskGIT, Chang et al. 2022; LLaDA's low-confidence remasking).

Each step reveals the k masked positions with the highest confidence. `score` picks the measure:
  - "sampled":  probability of the token actually drawn (LLaDA's default),
  - "max_prob": the largest class probability,
  - "margin":   top-1 minus top-2 probability,
  - "neg_entropy": minus the predictive entropy.
A rule that looks at the drawn token ("sampled") is biased even at one token per step: it prefers
positions whose draw happened to be likely, which sharpens samples (NLL below the entropy rate,
lower entropy, higher bigram KL). Confident positions also cluster next to revealed ones, so
revealing several of them together is the worst choice at few steps.

With temperature 0 and schedule="dream", "max_prob" / "margin" / "neg_entropy" are Dream's
diffusion_generate algorithms maskgit_plus / topk_margin / entropy; with schedule="llada",
"sampled" is LLaDA's low-confidence remasking in a single block.
"""

from __future__ import annotations

import torch
from torch import Tensor

from teachers.samplers.base import MaskedSampler

SCORES = ("sampled", "max_prob", "margin", "neg_entropy")


class ConfidenceSampler(MaskedSampler):
    name = "confidence"

    def __init__(self, temperature: float = 1.0, score: str = "sampled", schedule: str = "even", eos_fill: bool = False,
                 float64_confidence: bool = False) -> None:
        super().__init__(temperature, schedule, eos_fill)
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        self.score = score
        self.float64_confidence = bool(float64_confidence)  # as Fast-dLLM / dParallel: no float32 near-ties

    def scores(self, logits, draws, masked, start_mask, generator) -> Tensor:
        probs = torch.softmax(logits.to(torch.float64 if self.float64_confidence else torch.float32), dim=-1)
        if self.score == "sampled":
            return probs.gather(-1, draws[..., None]).squeeze(-1)
        if self.score == "max_prob":
            return probs.max(-1).values
        if self.score == "margin":
            top2 = probs.topk(2, dim=-1).values
            return top2[..., 0] - top2[..., 1]
        return (probs * probs.clamp_min(1e-30).log()).sum(-1)
