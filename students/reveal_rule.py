"""A learned reveal rule: which masked positions to reveal together at one step.

Each masked position gets a utility w . f from a few features; the positions revealed at a step
are drawn one after another from softmax(utility) over the positions still available, and the
utilities are recomputed after every pick, so a rule can learn to keep dependent positions apart
(`near_chosen`, `adjacent_chosen`).

The draw is an exponential race: position j holds an Exp(1) budget E_j = -log u_j and spends it
at rate exp(utility_j); the first to run out is picked. By memorylessness each pick is an exact
draw from softmax(current utilities) over the remaining positions, even though utilities change
between picks, and only one uniform per position is used. With all weights zero the race picks
the positions with the largest u_j, which is exactly the random order of the ancestral sampler
for the same uniforms.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

FEATURES = ("confidence", "neg_entropy", "margin", "near_revealed", "near_chosen", "adjacent_chosen")
STATIC = FEATURES[:4]  # fixed during a step; the last two change with every pick


def nearest_distance(marked: Tensor) -> Tensor:
    """(B, L) distance from each position to the nearest marked position (inf if none), O(L)."""
    L = marked.shape[-1]
    index = torch.arange(L, device=marked.device, dtype=torch.float32).expand(marked.shape)
    inf = torch.full_like(index, float("inf"))
    left = torch.where(marked, index, -inf).cummax(-1).values  # nearest marked index at or before j
    right = torch.where(marked, index, inf).flip(-1).cummin(-1).values.flip(-1)
    return torch.minimum(index - left, right - index)


def proximity(marked: Tensor) -> tuple[Tensor, Tensor]:
    """(1 / distance to the nearest marked position, 1 if that distance is 1); both 0 with nothing marked."""
    dist = nearest_distance(marked)
    return torch.where(dist > 0, 1.0 / dist, torch.zeros_like(dist)), (dist == 1).float()


def static_features(logits: Tensor, revealed: Tensor) -> Tensor:
    """(B, L, 4): confidence (max prob), -entropy / log V, margin (top-1 minus top-2), 1/distance to revealed."""
    probs = torch.softmax(logits.float(), dim=-1)
    top2 = probs.topk(2, dim=-1).values
    entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1)
    near, _ = proximity(revealed)
    return torch.stack([top2[..., 0], -entropy / math.log(probs.shape[-1]), top2[..., 0] - top2[..., 1], near], -1)


def race_select(
    static_utility: Tensor, chosen_weights: Tensor, masked: Tensor, k: Tensor, uniforms: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Pick k[b] masked positions per row, one at a time, from softmax of the current utilities.

    Args:
        static_utility: (B, L) the part of the utility fixed during the step.
        chosen_weights: (2,) weights of near_chosen and adjacent_chosen.
        masked: (B, L) bool, the positions that may be picked.
        k: (B,) how many to pick per row (at most the row's masked count).
        uniforms: (B, L) in (0, 1), one per position: the race's randomness.
    Returns:
        chosen (B, L) bool, order (B, max k) the picked positions in pick order (-1 past k[b]),
        log_prob (B,) of the ordered picks (differentiable in the utilities).
    """
    B, L = masked.shape
    budget = -uniforms.clamp_min(1e-38).log()  # Exp(1)
    spent = torch.zeros_like(budget)
    chosen = torch.zeros_like(masked)
    rows = torch.arange(B, device=masked.device)
    order = torch.full((B, int(k.max()) if B else 0), -1, dtype=torch.long, device=masked.device)
    log_prob = static_utility.new_zeros(B)
    for m in range(order.shape[1]):
        active = m < k
        near, adjacent = proximity(chosen)
        utility = static_utility + chosen_weights[0] * near + chosen_weights[1] * adjacent
        available = masked & ~chosen
        utility = utility.masked_fill(~(available | ~active[:, None]), float("-inf"))  # finished rows: no NaN
        rate = (utility - utility.max(-1, keepdim=True).values).exp().detach()  # scale-free: only ratios matter
        time = torch.where(available, (budget - spent) / rate, torch.full_like(budget, float("inf")))
        pick = time.argmin(-1)
        fired = time[rows, pick]
        spent = torch.where(available & active[:, None], spent + rate * fired[:, None], spent)
        step_lp = utility[rows, pick] - torch.logsumexp(utility, dim=-1)
        log_prob = log_prob + torch.where(active, step_lp, torch.zeros_like(step_lp))
        chosen = chosen | (active[:, None] & (torch.arange(L, device=masked.device) == pick[:, None]))
        order[:, m] = torch.where(active, pick, torch.full_like(pick, -1))
    return chosen, order, log_prob
