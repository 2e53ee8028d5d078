"""The selection rules of the adaptive samplers, in one place: which masked positions a step commits.

Each rule is a small pure function on (B, L) tensors; the samplers (eb.py, threshold.py and the
certainty student, students/entropy_threshold.py) only pick one and its option. Semi-autoregressive
blocks (`span_blocks`, `current_block`: LLaDA, Fast-dLLM, dParallel) restrict the candidates to each
row's leftmost block that still has masked positions; certainty.py's training masks use the same blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

RULES = ("confidence", "entropy")


def entropy(logits: Tensor, temperature: float = 1.0, float64: bool = False) -> Tensor:
    """Entropy (nats) of softmax(logits / temperature) over the last dimension: (...)."""
    log_p = F.log_softmax(logits.to(torch.float64 if float64 else torch.float32) / temperature, dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


def certainty(logits: Tensor, rule: str, float64: bool = False) -> Tensor:
    """(B, L) how sure the model is of each position: the largest probability ("confidence") or
    minus the entropy ("entropy") of softmax(logits)."""
    if rule == "confidence":
        return torch.softmax(logits.to(torch.float64 if float64 else torch.float32), dim=-1).amax(-1)
    return -entropy(logits, 1.0, float64)


def span_blocks(start_mask: Tensor, block_size: int | None) -> Tensor:
    """(B, L) block of each position, counted within the masked span (other positions get -1)."""
    if block_size is None:
        return torch.where(start_mask, 0, -1)
    rank = start_mask.long().cumsum(-1) - 1
    return torch.where(start_mask, rank // block_size, -1)


def current_block(masked: Tensor, blocks: Tensor) -> Tensor:
    """(B, L) bool: the masked positions of each row's leftmost unfinished block."""
    first = blocks.masked_fill(~masked, blocks.shape[1]).amin(-1, keepdim=True)  # (B, 1)
    return masked & (blocks == first)


def entropy_bounded_set(entropies: Tensor, candidates: Tensor, gamma: float) -> Tensor:
    """(B, L) bool: per row, the largest set of candidates, taken in order of increasing entropy,
    whose summed entropy minus its largest entropy is <= gamma (ties: lower index first).

    Args:
        entropies: (B, L) entropy of each position's marginal (nats).
        candidates: (B, L) bool, the positions that may be revealed.
    """
    ordered, order = entropies.masked_fill(~candidates, float("inf")).sort(dim=-1, stable=True)  # (B, L)
    # Non-candidates sort last as +inf, where cumsum - value is nan or inf: never accepted.
    accept = (ordered.cumsum(-1) - ordered) <= gamma
    return torch.zeros_like(candidates).scatter(1, order, accept) & candidates


def threshold_set(sure: Tensor, candidates: Tensor, tau: float, rule: str, strict: bool = False,
                  at_least_one: bool = True) -> Tensor:
    """(B, L) bool: candidates at or past the threshold (confidence >= tau, entropy <= tau), and in
    every row with candidates at least the most certain one (ties: lower index first).

    Args:
        sure: (B, L) the `certainty` of each position.
        candidates: (B, L) bool, the positions that may be committed.
        strict: the entropy rule commits only strictly below tau (the certainty student's rule).
        at_least_one: False: only the candidates past the threshold, possibly none (a composed
            student's later head passes, students/composed.py).
    """
    if rule == "confidence":
        passes = sure >= tau
    else:
        passes = -sure < tau if strict else -sure <= tau
    commit = candidates & passes
    if not at_least_one:
        return commit
    best = sure.masked_fill(~candidates, float("-inf")).argmax(-1)  # (B,) first maximum
    rows = candidates.any(-1)
    commit[rows.nonzero().squeeze(1), best[rows]] = True
    return commit
