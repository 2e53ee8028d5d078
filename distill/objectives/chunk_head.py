"""Distilling a ChunkHeadSampler's head from the frozen teacher.

The same states as the joint head's objective (distill/objectives/joint_head.py): the exact
sampler (the teacher revealing one token per forward, in the dilated order) runs from the batch's
start canvas to the end, and the trajectory is cut into chunks of K steps where the sampler makes
its full forwards. In a chunk starting at state x_s the head sees the teacher's hidden states on
x_s at the chunk's K positions p_0..p_{K-1} (the ones the exact sampler reveals at steps
s..s+K-1) and, at pass m, the tokens it drew at p_0..p_{m-1}. Target of pass m: the teacher on
x_{s+m} at p_m, the exact sampler's next distribution. Loss: forward KL per pass, averaged. All
passes of a chunk run at once (the head is causal over the chunk); only the head trains.
"""

from __future__ import annotations

import torch
from torch import Tensor

from distill.objectives.base import start_canvas
from distill.objectives.joint_head import JointHeadObjective, teacher_trajectory
from distill.objectives.losses import forward_kl


def revealed_positions(states: list[Tensor], final: Tensor, mask_id: int) -> tuple[Tensor, Tensor]:
    """(B, T) the position each step of a one-token-per-step trajectory revealed, and (B, T) whether it revealed one."""
    after = [*states[1:], final]
    revealed = torch.stack([(x == mask_id) & (y != mask_id) for x, y in zip(states, after)], dim=1)  # (B, T, L)
    return revealed.float().argmax(-1), revealed.any(-1)


def gather_rows(values: Tensor, positions: Tensor) -> Tensor:
    """values (B, L, D) at positions (B, K) -> (B, K, D)."""
    return values.gather(1, positions[..., None].expand(-1, -1, values.shape[-1]))


class ChunkHeadObjective(JointHeadObjective):
    """Trains a ChunkHeadSampler (student=chunk_head) on the teacher's dilated-order trajectories."""

    objective_name = "chunk_head"

    def __init__(self, student, teacher, *args, seq_len: int, **kwargs) -> None:
        super().__init__(student, teacher, *args, seq_len=seq_len, **kwargs)
        if type(self.student).__name__ != "ChunkHeadSampler":
            raise ValueError(f"objective=chunk_head trains a ChunkHeadSampler, got {type(self.student).__name__}; "
                             "use student=chunk_head")

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        teacher, mask_id, K = self.teacher, self.teacher.mask_id, self.student.tokens_per_forward
        path = teacher_trajectory(teacher, start_canvas(batch, mask_id), self.trajectory_rule, generator)
        T = len(path["states"])
        positions, valid = revealed_positions(path["states"], path["final"], mask_id)
        with torch.no_grad():
            embedded = teacher.embed(path["final"])  # the tokens the exact sampler drew
        kl_sum, count = 0.0, 0
        for s in range(0, T, K):
            pos, ok = positions[:, s:s + K], valid[:, s:s + K]
            with torch.no_grad():
                hidden = gather_rows(path["hidden"][s], pos)
                target = torch.cat([teacher.lm_head(gather_rows(path["hidden"][s + m], pos[:, m:m + 1]))
                                    for m in range(pos.shape[1])], dim=1)  # (B, K, V)
            logits = teacher.lm_head(self.student.head(hidden, gather_rows(embedded, pos), pos))
            kl_sum = kl_sum + (forward_kl(target, logits) * ok).sum()
            count += int(ok.sum())
        loss = kl_sum / max(count, 1)
        return loss, {"objective": loss.detach()}
