"""Distilling a LearnedSampler from the frozen teacher by whole trajectories (lsd_joint).

The student runs its own M steps. At step i it reveals a set S with tokens drawn from its
factorized proposal q_i(x_S) = prod_j softmax(coef_i logits_j); the teacher scores the same tokens
revealed one at a time, p(x_S | x) = prod_m p(x_{s_m} | x, x_{s_1..s_{m-1}}), an exact joint under
the teacher. log q - log p is an unbiased one-sample estimate of KL(q_i || p) given S. Summed over
steps it is the KL between the student's and the teacher's trajectory distributions (same sets,
teacher's joint for the tokens), an upper bound on the KL between their sequence distributions. Its
gradient with respect to the coefficients, the grid (randomised rounding) and the rule is estimated
by REINFORCE with reward-to-go and a leave-one-out batch-mean baseline per step
(losses.reinforce_loss): unbiased, and nothing is backpropagated through the chain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.objectives.base import StudentObjective, start_canvas
from distill.objectives.losses import reinforce_loss
from teachers.samplers.base import draw_tokens


def joint_rollout(student, teacher, canvas: Tensor, generator: torch.Generator | None, learn_grid: bool) -> dict[str, Tensor]:
    """Run the student's M steps; per step the KL estimate (B, M) and the log-probability of its actions (B, M)."""
    mask_id = teacher.mask_id
    B, L = canvas.shape
    device = canvas.device
    rows = torch.arange(B, device=device)
    n = (canvas == mask_id).sum(-1)
    shift = torch.rand(B, generator=generator, device=device) if learn_grid else None
    counts, grid_log_prob = student.counts(n.cpu(), None if shift is None else shift.cpu())
    counts = counts.to(device)
    x = canvas.clone()
    kl, log_pi = [], []
    for i in range(student.steps):
        masked = x == mask_id
        with torch.no_grad():
            logits = teacher(x).float()
        log_q_all = F.log_softmax(student.step_logits(logits, i), dim=-1)
        draws = draw_tokens(log_q_all.detach(), 1.0, generator)
        uniforms = torch.rand(masked.shape, generator=generator, device=device)
        chosen, order, rule_log_prob = student.select(logits, masked, counts[:, i], i, uniforms)
        log_q = (log_q_all.gather(-1, draws[..., None])[..., 0] * chosen).sum(-1)
        log_p = torch.zeros(B, device=device)
        teacher_log_probs = F.log_softmax(logits, dim=-1)
        for m in range(order.shape[1]):  # the teacher reveals the same tokens one at a time
            active = order[:, m] >= 0
            pos = order[:, m].clamp_min(0)
            if m > 0:
                with torch.no_grad():
                    teacher_log_probs = F.log_softmax(teacher(x).float(), dim=-1)
            token = draws[rows, pos]
            log_p = log_p + torch.where(active, teacher_log_probs[rows, pos, token], torch.zeros_like(log_p))
            x = x.clone()
            x[rows[active], pos[active]] = token[active]
        kl.append(log_q.detach() - log_p)
        log_pi.append(rule_log_prob + log_q)
    return {"kl": torch.stack(kl, 1), "log_pi": torch.stack(log_pi, 1), "grid_log_prob": grid_log_prob.to(device),
            "tokens": x, "num_masked": n}


class LSDJointObjective(StudentObjective):
    """lsd_joint: the student's own trajectories scored by the teacher's joint, trained by REINFORCE.
    Trains the coefficients, the grid and the reveal rule (whichever `student.learn` names)."""

    objective_name = "lsd"  # exports keep the name they always had; `method` tells lsd_joint apart

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        canvas = start_canvas(batch, self.teacher.mask_id)
        rollout = joint_rollout(self.student, self.teacher, canvas, generator, "grid" in self.student.learn)
        per_token = rollout["kl"].sum(1) / rollout["num_masked"].clamp_min(1)
        loss = reinforce_loss(rollout["kl"], rollout["log_pi"], rollout["grid_log_prob"])
        return loss, {"objective": per_token.mean().detach()}
