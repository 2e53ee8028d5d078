"""Every distillation loss, one small function each (torchtune's kd_losses is the model).

Each takes the student's prediction, the teacher's target and the mask of positions that count,
computes in float32, and returns 0 when no position counts. The objectives build the target and
the prediction (rollouts, masks, head passes) and make one call here; tests/test_losses.py checks
every loss against a hand-written formula.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from teachers.samplers.selection import entropy as tempered_entropy


def masked_ce(logits: Tensor, tokens: Tensor, noise_mask: Tensor, weight: Tensor | None = None) -> Tensor:
    """Cross-entropy at masked positions, averaged over them (float32); 0 when nothing is masked.

    Args:
        logits: (B, L, V) the network's prediction.
        tokens: (B, L) the clean tokens.
        noise_mask: (B, L) bool, the positions that count.
        weight: optional (B, 1) or (B, L) weights (MDLM's 1/t for the NELBO).
    """
    ce = F.cross_entropy(logits.float().transpose(1, 2), tokens, reduction="none")  # (B, L)
    w = noise_mask.float() if weight is None else noise_mask.float() * weight
    return (ce * w).sum() / noise_mask.sum().clamp_min(1)


def already_correct(logits: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """(B, L) bool: masked positions whose argmax prediction already equals the target."""
    return mask & (logits.argmax(-1) == target)


@dataclass
class CertaintyLoss:
    """loss = ce + beta * entropy; ce: mean cross-entropy over masked tokens; entropy: mean entropy of
    softmax(logits / tau) over the masked tokens already predicted correctly (0 if none);
    correct: fraction of masked tokens already predicted correctly."""

    loss: Tensor
    ce: Tensor
    entropy: Tensor
    correct: Tensor


def certainty_loss(logits: Tensor, target: Tensor, mask: Tensor, beta: float, tau: float) -> CertaintyLoss:
    """dParallel's certainty-forcing loss on the masked tokens `mask` (B, L) of logits (B, L, V)."""
    ce = masked_ce(logits, target, mask)
    correct = already_correct(logits, target, mask)
    entropy = (tempered_entropy(logits, tau) * correct).sum() / correct.sum().clamp_min(1)
    frac = correct.sum() / mask.sum().clamp_min(1)
    return CertaintyLoss(loss=ce + beta * entropy, ce=ce, entropy=entropy, correct=frac)


def forward_kl(target_logits: Tensor, logits: Tensor) -> Tensor:
    """KL(softmax(target) || softmax(logits)) per position (B, L), in float32."""
    log_p = F.log_softmax(target_logits.float(), dim=-1)
    log_q = F.log_softmax(logits.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def masked_forward_kl(logits: Tensor, target_logits: Tensor, mask: Tensor) -> Tensor:
    """KL(softmax(target) || softmax(logits)) per counted position, averaged over them (float32); 0 when
    no position counts. Against sampled targets its optimum is their mean (SDTT's forward-KL contrast)."""
    return (forward_kl(target_logits.detach(), logits) * mask).sum() / mask.sum().clamp_min(1)


def masked_reverse_kl(logits: Tensor, target_logits: Tensor, mask: Tensor) -> Tensor:
    """SDTT's loss: KL(softmax(logits) || softmax(target)) per counted position, averaged over them
    (float32); 0 when no position counts. Reverse KL, the divergence Deschenaux & Gulcehre found best
    (their `kl-bwd`): the student is pulled to the modes of the target, never spread over it.

    Args:
        logits: (B, L, V) the student's prediction.
        target_logits: (B, L, V) the target network's prediction (no gradient taken through it).
        mask: (B, L) bool, the positions that count.
    """
    log_q = F.log_softmax(logits.float(), dim=-1)
    log_p = F.log_softmax(target_logits.detach().float(), dim=-1)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1)  # (B, L)
    return (kl * mask).sum() / mask.sum().clamp_min(1)


def multi_pass_forward_kl(target_logits: list[Tensor], logits: list[Tensor],
                          masks: list[Tensor]) -> tuple[Tensor, list[Tensor | None]]:
    """The joint head's loss: forward KL per counted position, averaged over every position of every pass.

    Args:
        target_logits, logits, masks: one (B_m, L, V), (B_m, L, V), (B_m, L) entry per head pass.
    Returns:
        the loss (0 when no position counts) and each pass's own mean KL (None for a pass without positions).
    """
    kl_sum = [(forward_kl(t, q) * m).sum() for t, q, m in zip(target_logits, logits, masks)]
    count = [int(m.sum()) for m in masks]
    loss = torch.stack(kl_sum).sum() / max(sum(count), 1)
    return loss, [kl / n if n else None for kl, n in zip(kl_sum, count)]


def transition_ce(step_logits: Tensor, reveal: Tensor, target: Tensor, revealed: Tensor, masked: Tensor) -> Tensor:
    """LSD's per-step loss: cross-entropy of the student's one-step transition toward the teacher's.

    The student's transition at a still-masked position: stay masked with probability 1 - r, else
    token v with probability r * softmax(step_logits)_v. Averaged over the `masked` positions (0 if none).

    Args:
        step_logits: (B, L, V) the student's logits for this step.
        reveal: () r, the share of the masked positions the step reveals.
        target: (B, L) the token the teacher revealed (any value where it did not).
        revealed: (B, L) bool, masked positions the teacher revealed over the step's interval.
        masked: (B, L) bool, positions masked at the interval's start.
    """
    log_q = F.log_softmax(step_logits.float(), dim=-1)
    target = torch.where(revealed, target, 0)
    log_reveal = reveal.log() + log_q.gather(-1, target[..., None])[..., 0]
    log_stay = (1 - reveal).clamp_min(1e-6).log().expand_as(log_reveal)
    ce = -torch.where(revealed, log_reveal, log_stay)
    return (ce * masked).sum() / masked.sum().clamp_min(1)


def leave_one_out_mean(values: Tensor) -> Tensor:
    """Per row, the mean of the other rows (B,) -- a baseline independent of the row's own action."""
    B = values.shape[0]
    if B < 2:
        return torch.zeros_like(values)
    return (values.sum(0, keepdim=True) - values) / (B - 1)


def reinforce_loss(kl: Tensor, log_pi: Tensor, grid_log_prob: Tensor) -> Tensor:
    """lsd_joint's surrogate: its gradient is the REINFORCE estimate of d E[sum_i KL_i].

    Args:
        kl: (B, M) the one-sample KL estimate of each student step (no gradient needed).
        log_pi: (B, M) log-probability of each step's actions (reveal rule and tokens).
        grid_log_prob: (B,) log-probability of the drawn step grid (randomised rounding).
    Reward-to-go with a leave-one-out batch-mean baseline per step; the grid gets the whole trajectory's KL.
    """
    to_go = kl.flip(1).cumsum(1).flip(1)  # (B, M): KL of this step and every later one
    advantage = (to_go - leave_one_out_mean(to_go)).detach()
    loss = (advantage * log_pi).sum(1).mean()
    total = to_go[:, 0]
    grid_advantage = (total - leave_one_out_mean(total)).detach()
    return loss + (grid_advantage * grid_log_prob.float()).mean()
