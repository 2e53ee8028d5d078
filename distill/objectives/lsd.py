"""Distilling a LearnedSampler's coefficients from the frozen teacher (LSD, LSD+, lsd_joint).

divergence="transition" (LSD / LSD+, the published formulation done with a proper divergence):
    the teacher's many-step rollout (N steps, default one token per step) is run from the same
    start state; student step i covers the teacher's interval [c_{i-1}, c_i] of the reveal
    fraction and is fitted, per position still masked at the interval's start, by the
    cross-entropy of the student's one-step transition (stay masked with probability 1 - r_i,
    else token v with probability r_i * softmax(coef_i * logits)_v, r_i = share of the masked
    positions the step reveals) toward what the teacher did over that interval. Gradients are
    per step: the states come from the teacher's chain, nothing is backpropagated through it.
    relaxed > 0 re-draws that fraction of the start state's generated tokens uniformly (LSD's
    relaxed start).

divergence="joint" (lsd_joint): the student runs its own M steps. At step i it reveals a set S
    with tokens drawn from its factorized proposal q_i(x_S) = prod_j softmax(coef_i logits_j);
    the teacher scores the same tokens revealed one at a time, p(x_S | x) = prod_m
    p(x_{s_m} | x, x_{s_1..s_{m-1}}), an exact joint under the teacher. log q - log p is an
    unbiased one-sample estimate of KL(q_i || p) given S. Summed over steps it is the KL between
    the student's and the teacher's trajectory distributions (same sets, teacher's joint for the
    tokens), an upper bound on the KL between their sequence distributions. Its gradient with
    respect to the coefficients, the grid (randomised rounding) and the rule is estimated by
    REINFORCE with reward-to-go and a leave-one-out batch-mean baseline per step: unbiased, and
    nothing is backpropagated through the chain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.objectives.base import StudentObjective
from teachers.samplers.ancestral import AncestralSampler
from teachers.samplers.confidence import ConfidenceSampler
from teachers.samplers.base import draw_tokens

DIVERGENCES = ("transition", "joint")


def start_canvas(batch: dict[str, Tensor], mask_id: int) -> Tensor:
    return torch.where(batch["answer_mask"], mask_id, batch["tokens"])


def leave_one_out_mean(values: Tensor) -> Tensor:
    """Per row, the mean of the other rows (B,) -- a baseline independent of the row's own action."""
    B = values.shape[0]
    if B < 2:
        return torch.zeros_like(values)
    return (values.sum(0, keepdim=True) - values) / (B - 1)


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


def reinforce_loss(rollout: dict[str, Tensor]) -> Tensor:
    """Surrogate whose gradient is the REINFORCE estimate of d E[sum_i KL_i] (reward-to-go, baselines)."""
    kl = rollout["kl"]
    to_go = kl.flip(1).cumsum(1).flip(1)  # (B, M): KL of this step and every later one
    advantage = (to_go - leave_one_out_mean(to_go)).detach()
    loss = (advantage * rollout["log_pi"]).sum(1).mean()
    total = to_go[:, 0]
    grid_advantage = (total - leave_one_out_mean(total)).detach()
    return loss + (grid_advantage * rollout["grid_log_prob"].float()).mean()


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
        log_q = F.log_softmax(student.step_logits(logits, i), dim=-1)
        revealed = masked & (end != mask_id)
        target = torch.where(revealed, end, 0)
        log_reveal = reveal.log() + log_q.gather(-1, target[..., None])[..., 0]
        log_stay = (1 - reveal).clamp_min(1e-6).log().expand_as(log_reveal)
        ce = -torch.where(revealed, log_reveal, log_stay)
        total = total + (ce * masked).sum() / masked.sum().clamp_min(1)
    return total / student.steps


class LSDObjective(StudentObjective):
    """Args (besides StudentObjective's):
        divergence: "transition" (LSD, LSD+) or "joint" (lsd_joint).
        teacher_steps: N of the teacher's rollout for "transition" (null: one token per step).
        relaxed: fraction of the start state perturbed for "transition" (LSD's relaxed start).
        rollout: the teacher's rollout for "transition": "ancestral" (MDLM, the default) or "greedy"
            (most confident position, argmax token: deterministic, so the loss is a function of the
            batch alone -- what the DDP equivalence test relies on).
    """

    objective_name = "lsd"

    def __init__(self, *args, divergence: str = "joint", teacher_steps: int | None = None, relaxed: float = 0.0,
                 rollout: str = "ancestral", **kwargs) -> None:
        if divergence not in DIVERGENCES:
            raise ValueError(f"objective.divergence must be one of {DIVERGENCES}, got {divergence!r}")
        if rollout not in ROLLOUTS:
            raise ValueError(f"objective.rollout must be one of {tuple(ROLLOUTS)}, got {rollout!r}")
        if not 0 <= relaxed < 1:
            raise ValueError(f"objective.relaxed must be in [0, 1), got {relaxed}")
        super().__init__(*args, divergence=divergence, teacher_steps=teacher_steps, relaxed=relaxed, rollout=rollout,
                         **kwargs)
        if divergence == "transition" and "rule" in self.student.learn:
            raise ValueError("the transition divergence cannot train the reveal rule (it never sees which positions "
                             "the student picks); use objective=lsd_joint or student.learn=[coefficient,grid]")
        self.divergence = divergence
        self.teacher_steps = teacher_steps
        self.relaxed = relaxed
        self.rollout = rollout

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        canvas = start_canvas(batch, self.teacher.mask_id)
        generated = int((canvas == self.teacher.mask_id).sum(-1).max())
        if self.divergence == "transition":
            steps = self.teacher_steps or generated
            loss = transition_loss(self.student, self.teacher, canvas, steps, self.relaxed, generator, self.rollout)
            return loss, {"objective": loss.detach()}
        rollout = joint_rollout(self.student, self.teacher, canvas, generator, "grid" in self.student.learn)
        per_token = rollout["kl"].sum(1) / rollout["num_masked"].clamp_min(1)
        return reinforce_loss(rollout), {"objective": per_token.mean().detach()}
