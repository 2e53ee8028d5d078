"""Dilated reveal order (DUS: "Plan for Speed: Dilated Scheduling for Masked Diffusion LMs", 2025).

A fixed, data-independent order: the masked positions ranked by the bit-reversal of their index
(0, 16, 8, 24, 4, 20, ... for 32 positions), cut into `steps` even chunks. Each chunk's positions
are spread as far apart as possible, and from the step where enough tokens are revealed on they
sit between revealed tokens. On a first-order chain tokens separated by a revealed token are
conditionally independent, so this order is nearly exact at L/4 steps; on a hidden Markov source
it is not. Tokens are drawn stochastically.
"""

from __future__ import annotations

import torch
from torch import Tensor

from teachers.samplers.base import MaskedSampler


def dilated_rank(n: int) -> Tensor:
    """rank[j] = when the j-th masked position is revealed in the dilated order, for n positions."""
    bits = max(1, (n - 1).bit_length())
    reversed_index = torch.tensor([int(f"{j:0{bits}b}"[::-1], 2) for j in range(n)])
    return reversed_index.argsort().argsort()


class DilatedSampler(MaskedSampler):
    name = "dilated"

    def scores(self, logits, draws, masked, start_mask, generator) -> Tensor:
        index = (start_mask.long().cumsum(-1) - 1).clamp_min(0)  # index within each row's masked span
        counts = start_mask.sum(-1)
        scores = torch.zeros(masked.shape, device=masked.device)
        for n in counts.unique().tolist():  # rows may mask different numbers of positions (prompts)
            rows = counts == n
            rank = dilated_rank(max(n, 1)).to(masked.device)
            scores[rows] = -rank[index[rows].clamp_max(max(n, 1) - 1)].to(scores)
        return scores
