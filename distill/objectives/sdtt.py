"""Self-distillation through time (SDTT, Deschenaux & Gulcehre 2025, "Beyond Autoregression: Fast
LLMs via Self-Distillation Through Time"), in rounds, for unconditional sources.

The student is a copy of the teacher's network (all weights trained) that samples with the same
ancestral rule (students.AncestralStudentSampler). Round r trains it to take M steps where its
target network takes 2M; the target of round 1 is the frozen teacher at `teacher_steps`, the target
of round r > 1 a frozen copy of the student at the end of round r - 1. A round lasts `round_steps`
optimizer steps and halves the student's steps: 32 -> 16 -> 8 -> 4 in three rounds on 32 positions.

One training example (the paper's `_teacher_logprobs_on_mask` and `loss`, on this project's grid):

  1. a state on the student's grid: a data sequence, a step i ~ U{0..M-1}, and the positions the
     M-step ancestral sampler still has masked before its step i (n - floor(n i / M) of the n
     generated positions, a uniformly random set: the sampler's order is uniform);
  2. the target network's two half-steps from it: its first half-step (step 2i of the 2M-step grid,
     the same state: floor(2 n i / 2M) = floor(n i / M)) reveals its share S1 of the masked
     positions with tokens drawn from its own prediction p(. | x_t); the second half-step predicts
     from x_t + x_S1. Target per masked position j (SDTT's, which supervises every masked position,
     not only those the step reveals):
         p(x_j | x_t)           for j in S1 (the prediction the target drew x_j from)
         p(x_j | x_t, x_S1)     for every other masked position (SDTT takes the last half-step's
                                prediction for the positions it reveals and for those it leaves masked)
     The two half-steps reveal exactly the student's one step's count (the counts telescope), and a
     random order makes the union of S1 and S2 a uniform subset, as the student's set is: the only
     thing one step cannot copy is that the second half's tokens see the first half's.
  3. loss: reverse KL(student(x_t) || target) per masked position, averaged over them
     (losses.masked_reverse_kl). SDTT compared MSE, TVD and KL and found KL best, the reverse one
     (their `kl-bwd` default, "best results using the reverse KL divergence").

What this can and cannot do: the student still draws the tokens of one step independently, so no
weights fix the joint error of revealing several positions at once. A position's target is one
sample's conditional p(x_j | x_t, x_S1); if the target network were exact, its average over x_S1
would be p(x_j | x_t) itself (the forward-KL optimum: nothing to learn). Reverse KL against sampled
targets is minimised by their normalised geometric mean exp(E log p(x_j | x_t, x_S1)) instead, which
is not the truth even for an exact target: where the draws of x_S1 leave x_j's options much as they
were, it is sharper than the average; where they pick between branches that rule each other's tokens
out, it moves mass to tokens that no branch rules out and none favours, flatter and wrong
(tests/test_sdtt.py computes both cases by hand). Which one wins on a source is for the evaluation
to say; on the hidden Markov source the student came out flatter and worse at every step count
(docs/sdtt.md). SDTT's forward-KL contrast is objective=sdtt_forward_kl.

Rounds run inside one fit: `on_train_batch_start` ends a round at every multiple of `round_steps`
(trainer.max_steps must be rounds * round_steps). The learning rate restarts its warm-up and cosine
at every round. The teacher is never trained and never saved (distill/objectives/frozen.py); round
targets are frozen copies kept out of the module's submodules, written into checkpoints under
"sdtt" beside every finished round's student so a resumed run or `fewstep-export` rebuilds them.
The export is the last round's student; `DIR/rounds/round<r>/` holds each round's student, each a
full student export (`fewstep-eval sampler=saved sampler.path=DIR/rounds/round1`).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

import students
from distill.evaluation.model_card import model_card
from distill.objectives.base import StudentObjective
from distill.objectives.losses import masked_forward_kl, masked_reverse_kl
from distill.objectives.schedule import warmup_cosine
from students.ancestral_student import AncestralStudentSampler
from students.own_denoiser import copy_denoiser
from teachers.samplers.base import draw_tokens, reveal_counts, top_k_mask, uniform_scores


def grid_states(answer_mask: Tensor, steps: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """States of an M-step ancestral sampler before a uniformly drawn step.

    Args:
        answer_mask: (B, L) bool, the generated positions (n per row).
        steps: M.
    Returns:
        i: (B,) the step, from U{0..M-1};
        masked: (B, L) bool, n - floor(n i / M) of the generated positions, a uniformly random set.
    """
    B, L = answer_mask.shape
    n = answer_mask.sum(-1)  # (B,)
    i = (torch.rand(B, generator=generator, device=answer_mask.device) * steps).long()  # (B,)
    left = n - (n * i) // steps  # (B,) still masked before step i
    scores = uniform_scores(answer_mask.shape, generator, answer_mask.device)
    return i, top_k_mask(scores, answer_mask, left)


@torch.no_grad()
def sdtt_target(network: nn.Module, xt: Tensor, masked: Tensor, generated: Tensor, i: Tensor, steps: int,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """SDTT's target from the student's state before its step i of `steps`: the target network's
    steps 2i and 2i + 1 of 2 * steps (ancestral, even counts, random order, temperature 1).

    Args:
        network: the target denoiser (frozen).
        xt: (B, L) the state; masked: (B, L) its masked positions.
        generated: (B,) n, the generated positions of each row (the grid's length).
        i: (B,) the student's step.
    Returns:
        target: (B, L, V) logits: p(. | x_t) on the first half-step's positions S1, p(. | x_t, x_S1) elsewhere;
        first: (B, L) bool, S1;
        x_mid: (B, L) the state after the first half-step.
    """
    logits = network(xt)  # (B, L, V) p(. | x_t)
    k = reveal_counts(generated, 2 * i, 2 * steps)  # (B,) the first half-step's share
    first = top_k_mask(uniform_scores(masked.shape, generator, masked.device), masked, k)  # uniformly random S1
    x_mid = torch.where(first, draw_tokens(logits, 1.0, generator), xt)
    later = network(x_mid)  # (B, L, V) p(. | x_t, x_S1)
    return torch.where(first[..., None], logits, later), first, x_mid


class SDTTObjective(StudentObjective):
    """Args (besides StudentObjective's):
        rounds: distillation rounds; the student ends at teacher_steps / 2**rounds steps.
        round_steps: optimizer steps per round (trainer.max_steps must be rounds * round_steps).
        teacher_steps: the teacher's steps, the first round's target (null: seq_len, one token per step).

    The student is a students.AncestralStudentSampler; its `steps` is set here (teacher_steps / 2,
    halved every round), so student.steps must be null or that value.
    """

    objective_name = "sdtt"
    divergence_name = "reverse_kl"
    divergence = staticmethod(masked_reverse_kl)  # (student logits, target logits, mask) -> loss

    def __init__(self, student: nn.Module | dict, teacher: nn.Module, rounds: int = 3, round_steps: int = 500,
                 teacher_steps: int | None = None, **kwargs) -> None:
        if not isinstance(student, nn.Module):
            student = OmegaConf.to_container(student, resolve=True) if OmegaConf.is_config(student) else dict(student)
            student = students.build(student)
        if not isinstance(student, AncestralStudentSampler):
            raise ValueError(f"objective=sdtt trains students.AncestralStudentSampler (student=sdtt), got "
                             f"{type(student).__name__}")
        teacher_steps = int(teacher_steps or kwargs["seq_len"])
        if rounds < 1 or round_steps < 1:
            raise ValueError(f"objective.rounds and objective.round_steps must be >= 1, got {rounds} and {round_steps}")
        if teacher_steps % 2**rounds:
            raise ValueError(f"objective.teacher_steps={teacher_steps} cannot be halved {rounds} times; use a multiple "
                             f"of {2**rounds} or fewer rounds")
        if student.steps not in (None, teacher_steps // 2):
            raise ValueError(f"student.steps is set by objective=sdtt (teacher_steps / 2 = {teacher_steps // 2}, halved "
                             f"every round); got {student.steps}: leave it null")
        student.steps = teacher_steps // 2
        student.init_denoiser(teacher)  # round 1 starts from the teacher's weights (SDTT: the student is the teacher)
        super().__init__(student, teacher, rounds=rounds, round_steps=round_steps, teacher_steps=teacher_steps, **kwargs)
        self.rounds, self.round_steps, self.teacher_steps = int(rounds), int(round_steps), teacher_steps
        self.round = 1  # the round being trained
        self.target_steps = teacher_steps  # the target network's steps in this round (2 * student.steps)
        self.__dict__["target"] = self.teacher  # round 1's target; never a submodule
        self.finished: list[dict] = []  # one record per finished round (primitives)
        self.finished_states: list[dict[str, Tensor]] = []  # each finished round's student network (CPU)

    # --- rounds ----------------------------------------------------------------------------------
    def round_of(self, step: int) -> int:
        """The round optimizer step `step` belongs to (1-based; steps past the last round stay in it)."""
        return min(self.rounds, step // self.round_steps + 1)

    def round_record(self) -> dict:
        """What defines the current round's student, beyond its weights."""
        return {"round": self.round, "steps": self.student.steps, "target_steps": self.target_steps,
                "target": "teacher" if self.round == 1 else f"round {self.round - 1} student",
                "start_step": (self.round - 1) * self.round_steps}

    def set_target(self, state: dict[str, Tensor]) -> None:
        """The frozen target network: a copy of the student's network with `state`, out of the submodules."""
        target = copy_denoiser(self.student.denoiser)
        target.load_state_dict(state)
        self.__dict__["target"] = target.eval().requires_grad_(False)

    def next_round(self) -> None:
        """End the current round: keep its student, freeze a copy of it as the new target, halve the steps."""
        state = {k: v.detach().cpu().clone() for k, v in self.student.denoiser.state_dict().items()}
        self.finished.append({**self.round_record(), "end_step": int(self.global_step)})
        self.finished_states.append(state)
        self.set_target(state)
        self.target.to(next(self.student.denoiser.parameters()).device)
        self.target_steps = self.student.steps
        self.student.steps //= 2
        self.round += 1

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.trainer.max_steps != self.rounds * self.round_steps:
            raise ValueError(f"objective=sdtt trains {self.rounds} rounds of {self.round_steps} steps: set "
                             f"trainer.max_steps={self.rounds * self.round_steps} (got {self.trainer.max_steps})")
        self.target.to(self.device)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        while self.round < self.round_of(int(self.global_step)):
            self.next_round()

    # --- the loss --------------------------------------------------------------------------------
    def loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        tokens, mask_id, steps = batch["tokens"], self.teacher.mask_id, self.student.steps
        # 1. a state on the student's M-step grid, from data
        i, masked = grid_states(batch["answer_mask"], steps, generator)
        xt = torch.where(masked, mask_id, tokens)
        # 2. the target network's two half-steps from it
        target, first, _ = sdtt_target(self.target, xt, masked, batch["answer_mask"].sum(-1), i, steps, generator)
        # 3. the student's one step matches them on every masked position
        logits = self.student.denoiser(xt)  # (B, L, V)
        loss = self.divergence(logits, target, masked)
        return loss, {"objective": loss.detach(), "round": torch.tensor(float(self.round)),
                      "steps": torch.tensor(float(steps)), "first_half": first.sum() / masked.sum().clamp_min(1)}

    def configure_optimizers(self):
        """AdamW on the student's network; warm-up and cosine restart at every round."""
        optimizer = self.optimizer_factory([p for p in self.student.parameters() if p.requires_grad])
        within = warmup_cosine(optimizer, self.warmup_steps, self.round_steps).lr_lambdas[0]
        schedule = LambdaLR(optimizer, lambda step: within(step % self.round_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step", "name": "train/lr"}}

    # --- checkpoints and export ------------------------------------------------------------------
    def student_record(self) -> dict:
        return {**super().student_record(), "round": self.round, "steps": self.student.steps,
                "target_steps": self.target_steps, "finished": copy.deepcopy(self.finished)}

    def restore_record(self, record: dict) -> None:
        super().restore_record(record)
        self.round, self.student.steps = int(record["round"]), int(record["steps"])
        self.target_steps, self.finished = int(record["target_steps"]), list(record["finished"])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Besides the record: every finished round's student (the last one is the current target)."""
        super().on_save_checkpoint(checkpoint)
        checkpoint["sdtt"] = {"finished_states": self.finished_states}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.finished_states = [dict(s) for s in checkpoint["sdtt"]["finished_states"]]
        if self.finished_states:
            self.set_target(self.finished_states[-1])
        else:
            self.__dict__["target"] = self.teacher

    def trained_rounds(self) -> list[dict]:
        """A record per round so far: the finished ones and the current one, ending at the last trained step."""
        steps = int(self.global_step) if self._trainer is not None else int(self.trained_steps or 0)
        return self.finished + [{**self.round_record(), "end_step": steps}]

    def export_extra(self) -> dict:
        return {"sdtt": {"divergence": self.divergence_name, "teacher_steps": self.teacher_steps, "round_steps": self.round_steps,
                         "rounds": self.trained_rounds()}}

    def round_student(self, index: int) -> AncestralStudentSampler:
        """The student at the end of finished round `index` (0-based) as its own sampler."""
        record = self.finished[index]
        out = AncestralStudentSampler(record["steps"], self.student.denoiser_config, self.student.temperature)
        out.denoiser.load_state_dict(self.finished_states[index])
        return out.eval()

    def export(self, path: str, rows: list[dict] | None = None) -> None:
        """The last round's student at `path` (the one export path), then every round's at path/rounds/round<r>."""
        super().export(path, rows)
        rounds = Path(path) / "rounds"
        rounds.mkdir()
        current = copy.deepcopy(self.student).eval()
        samplers = [self.round_student(k) for k in range(len(self.finished))] + [current]
        for record, sampler in zip(self.trained_rounds(), samplers):
            card = model_card(f"{self.method} round {record['round']}", sampler, self.teacher_ref, [], self.generated)
            students.save_student(sampler, rounds / f"round{record['round']}", teacher=self.teacher_ref,
                                  config_yaml=self.config_yaml, card=card,
                                  extra={"method": f"{self.method}_round{record['round']}", "objective": self.objective_name,
                                         "data": self.data_spec, "trained_steps": record["end_step"], "sdtt_round": record})


class SDTTForwardKLObjective(SDTTObjective):
    """SDTT with forward KL(target || student) instead of the paper's reverse KL: the contrast that
    shows where the reverse-KL student's sharpness comes from. Against sampled targets forward KL is
    minimised by their mean, which for an exact target network is its own one-step prediction."""

    objective_name = "sdtt_forward_kl"
    divergence_name = "forward_kl"
    divergence = staticmethod(masked_forward_kl)
