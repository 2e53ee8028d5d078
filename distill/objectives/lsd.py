"""Distilling a LearnedSampler's coefficients from the frozen teacher: LSD and LSD+.

The published formulation done with a proper divergence: the teacher's many-step rollout (N steps,
default one token per step) is run from the same start state; student step i covers the teacher's
interval [c_{i-1}, c_i] of the reveal fraction and is fitted, per position still masked at the
interval's start, by the cross-entropy of the student's one-step transition (stay masked with
probability 1 - r_i, else token v with probability r_i * softmax(coef_i * logits)_v, r_i = share of
the masked positions the step reveals) toward what the teacher did over that interval
(losses.transition_ce). Gradients are per step: the states come from the teacher's chain, nothing
is backpropagated through it. relaxed > 0 re-draws that fraction of the start state's generated
tokens uniformly (LSD's relaxed start).

lsd_joint, which matches whole trajectories instead, is distill/objectives/lsd_joint.py.
"""

from __future__ import annotations

import torch
from torch import Tensor

from distill.objectives.base import StudentObjective, start_canvas
from distill.objectives.losses import transition_ce
from teachers.samplers.ancestral import AncestralSampler
from teachers.samplers.confidence import ConfidenceSampler

ROLLOUTS = {
    "ancestral": lambda: AncestralSampler(),  # MDLM: random order, tokens drawn
    "greedy": lambda: ConfidenceSampler(temperature=0.0, score="max_prob"),  # deterministic: most confident argmax
}


def transition_loss(student, teacher, canvas: Tensor, teacher_steps: int, relaxed: float,
                    generator: torch.Generator | None, rollout: str = "ancestral") -> Tensor:
    """Per-position cross-entropy of each student step's transition toward the teacher's over the same interval."""
    mask_id = teacher.mask_id
    with torch.no_grad():
        trace = ROLLOUTS[rollout]().sample(teacher, teacher_steps, prompt=canvas, generator=generator,
                                           return_trace=True).trace
    states = [canvas] + trace
    fractions = torch.softmax(student.grid_logits.float(), dim=0)
    cumulative = torch.cat([fractions.new_zeros(1), fractions.cumsum(0)])
    total = canvas.new_zeros((), dtype=torch.float32)
    for i in range(student.steps):
        a = int(torch.round(cumulative[i].detach() * teacher_steps))
        b = max(a + 1, int(torch.round(cumulative[i + 1].detach() * teacher_steps))) if i < student.steps - 1 else teacher_steps
        b = min(b, teacher_steps)
        start, end = states[a], states[b]
        masked = start == mask_id
        if relaxed > 0:  # perturb a fraction of the generated tokens already revealed
            generated = (canvas == mask_id) & ~masked
            flip = generated & (torch.rand(start.shape, generator=generator, device=start.device) < relaxed)
            noise = torch.randint(0, teacher.vocab_size, start.shape, generator=generator, device=start.device)
            start = torch.where(flip, noise, start)
        with torch.no_grad():
            logits = teacher(start).float()
        reveal = (fractions[i] / (1 - cumulative[i]).clamp_min(1e-6)).clamp(1e-6, 1.0)
        total = total + transition_ce(student.step_logits(logits, i), reveal, end, masked & (end != mask_id), masked)
    return total / student.steps


class LSDObjective(StudentObjective):
    """LSD / LSD+ (Learnable Sampler Distillation): per-step transitions matched to the teacher's rollout.

    Args (besides StudentObjective's):
        teacher_steps: N of the teacher's rollout (null: one token per step).
        relaxed: fraction of the start state perturbed (LSD's relaxed start).
        rollout: the teacher's rollout: "ancestral" (MDLM, the default) or "greedy" (most confident
            position, argmax token: deterministic, so the loss is a function of the batch alone --
            what the DDP equivalence test relies on).
    """

    objective_name = "lsd"

    def __init__(self, *args, teacher_steps: int | None = None, relaxed: float = 0.0, rollout: str = "ancestral",
                 **kwargs) -> None:
        if rollout not in ROLLOUTS:
            raise ValueError(f"objective.rollout must be one of {tuple(ROLLOUTS)}, got {rollout!r}")
        if not 0 <= relaxed < 1:
            raise ValueError(f"objective.relaxed must be in [0, 1), got {relaxed}")
        super().__init__(*args, teacher_steps=teacher_steps, relaxed=relaxed, rollout=rollout, **kwargs)
        if "rule" in self.student.learn:
            raise ValueError("objective=lsd cannot train the reveal rule (its transitions never see which positions "
                             "the student picks); use objective=lsd_joint or student.learn=[coefficient,grid]")
        self.teacher_steps = teacher_steps
        self.relaxed = relaxed
        self.rollout = rollout

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        canvas = start_canvas(batch, self.teacher.mask_id)
        steps = self.teacher_steps or int((canvas == self.teacher.mask_id).sum(-1).max())
        loss = transition_loss(self.student, self.teacher, canvas, steps, self.relaxed, generator, self.rollout)
        return loss, {"objective": loss.detach()}
