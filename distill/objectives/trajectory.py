"""Trajectory distillation: pseudo-trajectory distillation (d3LLM, 2025) with a curriculum over the
jump size, and optionally a consistency term (CDLM, 2025).

The data are the frozen teacher's own deterministic decodings of the training prompts
(distill/data/self_generated.py with `trajectory=True`: blockwise, confidence order, one token per
step, argmax), kept when the checker accepts them, with the step at which each answer token was
revealed. A trajectory state at step t shows every token the teacher had revealed before step t and
masks the rest. From that state the student learns to predict, in one forward pass, the teacher's
final tokens at every position the teacher reveals within the next k steps:

    window  = {i : t <= reveal_step[i] < t + k}
    loss    = CE(student(x_t), x0) on window + beta * entropy where already correct (certainty
              forcing, as in dParallel and d3LLM's own recipe: the entropy-threshold decoder commits
              only where the student is sure)
            + consistency * KL(sg(p_student(x_{t+k})) || p_student(x_t)) on the positions still masked
              at t + k (the student's prediction from the earlier state matches its own, stop-gradient,
              prediction from the later state of the same trajectory: CDLM's consistency term)

k is drawn per row from U{1..K(step)}, where the curriculum K(step) grows linearly from `jump_start`
to `jump_end` over `ramp_steps` optimizer steps: short jumps first (close to the teacher's own one
token per step), then whole blocks, while short jumps keep being seen.

Which variant and why: d3LLM's pseudo-trajectory distillation rather than SDTT or a full CDLM. SDTT
matches the teacher's 2M-step output distribution with an M-step student round by round, which fits
unconditional sampling but needs many rounds and a divergence on rollouts; on a conditional task
with one verified answer per prompt, supervising the teacher's final tokens directly from its own
intermediate states is the cheaper signal and trains in one run. The states are the teacher's real
states (its reveal order), so the student learns from exactly the partial answers the threshold
decoder meets when it commits the teacher's most certain positions first. CDLM's consistency term is
kept as an option (`consistency` > 0, one extra forward pass without gradient per batch) rather than
the default: it pulls the early-state prediction towards the student's own later one, which helps
when the student's later predictions are better than the data's targets; here the targets are the
teacher's verified final tokens already.

The student is the certainty student (students.EntropyThresholdSampler with its own copy of the
teacher, LoRA or all weights): threshold selection, checkpoint choice and the export are
CertaintyObjective's, so `students.load` and `fewstep-eval sampler=saved` run it unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.objectives.certainty import CertaintyObjective, certainty_loss


def jump_size(step: int, jump_start: int, jump_end: int, ramp_steps: int) -> int:
    """The curriculum's largest jump K at optimizer step `step`: jump_start, growing linearly to
    jump_end at `ramp_steps` (0: jump_end from the start), then jump_end."""
    if ramp_steps <= 0:
        return jump_end
    progress = min(1.0, max(0, step) / ramp_steps)
    return int(round(jump_start + (jump_end - jump_start) * progress))


def trajectory_states(reveal_step: Tensor, largest_jump: int,
                      generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One training state per row along its trajectory.

    Args:
        reveal_step: (B, L) step at which the teacher revealed each position; -1 where always shown.
        largest_jump: K; each row's jump k is drawn from U{1..K}.
    Returns:
        t: (B,) the trajectory step of the state, drawn from U{0..T-1}, T the row's trajectory length;
        k: (B,) the jump;
        masked: (B, L) bool, the positions still masked in the state (reveal_step >= t).
    """
    B = reveal_step.shape[0]
    device = reveal_step.device
    length = (reveal_step.amax(-1) + 1).clamp_min(1)  # (B,) steps in each row's trajectory
    t = (torch.rand(B, generator=generator, device=device) * length).long()  # (B,)
    k = 1 + (torch.rand(B, generator=generator, device=device) * largest_jump).long()  # (B,)
    return t, k, reveal_step >= t[:, None]


def consistency_kl(logits: Tensor, target_logits: Tensor, mask: Tensor) -> Tensor:
    """Mean over `mask` of KL(softmax(target_logits) || softmax(logits)), with the target detached
    (stop-gradient), in float32; 0 when nothing is masked."""
    target = F.log_softmax(target_logits.detach().float(), -1)
    kl = (target.exp() * (target - F.log_softmax(logits.float(), -1))).sum(-1)  # (B, L)
    return (kl * mask).sum() / mask.sum().clamp_min(1)


class TrajectoryObjective(CertaintyObjective):
    """Args (besides CertaintyObjective's; beta and tau weight its certainty term):
        jump_start, jump_end: the curriculum's largest jump K at the start and at the end of the ramp
            (in teacher steps; jump_end = the block size covers the rest of a block in one jump).
        ramp_steps: optimizer steps over which K grows from jump_start to jump_end.
        consistency: weight of the consistency term (0: off, no extra forward pass).

    Batches need `reveal_step` (B, L): the self-generated data module with `trajectory: true`.
    """

    objective_name = "trajectory"

    def __init__(self, student, teacher, jump_start: int = 1, jump_end: int = 32, ramp_steps: int = 500,
                 consistency: float = 0.0, **kwargs) -> None:
        if not 1 <= jump_start <= jump_end:
            raise ValueError(f"objective.jump_start and jump_end must satisfy 1 <= jump_start <= jump_end, "
                             f"got {jump_start} and {jump_end}")
        if ramp_steps < 0:
            raise ValueError(f"objective.ramp_steps must be >= 0, got {ramp_steps}")
        if consistency < 0:
            raise ValueError(f"objective.consistency must be >= 0 (0 turns it off), got {consistency}")
        super().__init__(student, teacher, jump_start=jump_start, jump_end=jump_end, ramp_steps=ramp_steps,
                         consistency=consistency, **kwargs)
        self.jump_start, self.jump_end, self.ramp_steps = int(jump_start), int(jump_end), int(ramp_steps)
        self.consistency = float(consistency)

    def largest_jump(self) -> int:
        return jump_size(int(self.global_step), self.jump_start, self.jump_end, self.ramp_steps)

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        if "reveal_step" not in batch:
            raise ValueError("objective=trajectory needs the teacher's trajectories: data.trajectory=true "
                             "(distill.data.self_generated.SelfGeneratedDataModule)")
        tokens, reveal, mask_id = batch["tokens"], batch["reveal_step"], self.teacher.mask_id
        # 1. a state on each row's trajectory and the positions the teacher reveals within the next k steps
        t, k, masked = trajectory_states(reveal, self.largest_jump(), generator)
        window = masked & (reveal < (t + k)[:, None])
        logits = self.student.denoiser(torch.where(masked, mask_id, tokens))  # (B, L, V)
        # 2. reach the teacher's final tokens there, confidently
        out = certainty_loss(logits, tokens, window, self.beta, self.tau)
        values = {"ce": out.ce.detach(), "entropy": out.entropy.detach(), "correct": out.correct.detach(),
                  "jump": torch.tensor(float(self.largest_jump()))}
        loss = out.loss
        # 3. consistency with the student's own prediction from the later state t + k (stop-gradient)
        if self.consistency > 0:
            later = reveal >= (t + k)[:, None]
            with torch.no_grad():
                target = self.student.denoiser(torch.where(later, mask_id, tokens))
            kl = consistency_kl(logits, target, later)
            loss = loss + self.consistency * kl
            values["consistency"] = kl.detach()
        values["objective"] = loss.detach()
        return loss, values
