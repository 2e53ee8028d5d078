"""Distilling a JointHeadSampler's head from the frozen teacher (ADJUST).

States are drawn like the teacher's own trajectories: the exact sampler (the teacher revealing one
token per forward, with the student's reveal rule) runs from the batch's start canvas to the end,
x_0, x_1, ..., x_{T-1}. The trajectory is cut into chunks of K consecutive states starting at
0, K, 2K, ... (where the sampler makes its full forwards), and in every chunk the head is unrolled
as it is when sampling: pass 1 starts from the teacher's hidden state on the chunk's first state,
each later pass from the head's own previous output, and pass k + 1 sees the state with the
chunk's first k tokens revealed (the tokens the exact sampler drew). Target of every pass: the frozen teacher on that same state, i.e. the exact sampler's next
distribution. Loss: forward KL(target || head), per still-masked position, averaged over positions
and passes (losses.multi_pass_forward_kl). The teacher's targets and hidden states carry no gradient; only the head trains.
"""

from __future__ import annotations

import copy

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

import students
from distill.objectives.base import StudentObjective, start_canvas
from distill.objectives.losses import multi_pass_forward_kl
from students.joint_head import reveal_one


@torch.no_grad()
def teacher_trajectory(teacher: nn.Module, canvas: Tensor, rule, generator: torch.Generator | None) -> dict:
    """The exact sampler's states x_0..x_{T-1} (B, L), with the teacher's hidden states (B, L, H) on each,
    and its final canvas x_T ("final").

    Only hidden states are kept (in the teacher's dtype): targets are the LM head applied to them again
    per pass, which costs H instead of 4 V bytes per position (LLaDA-8B: 8 KB instead of 506 KB in bf16).
    """
    mask_id = teacher.mask_id
    x = canvas
    start_mask = canvas == mask_id
    states, hidden = [], []
    for _ in range(int((canvas == mask_id).sum(-1).max())):
        h = teacher.hidden_states(x)
        states.append(x)
        hidden.append(h)
        x = reveal_one(rule, teacher.lm_head(h), x, mask_id, (x == mask_id).any(-1), generator, start_mask)
    return {"states": states, "hidden": hidden, "final": x}


def generated_columns(teacher: nn.Module, canvas: Tensor) -> slice:
    """The columns whose logits the loss reads: from the first masked one on (the prompt's logits are never
    a target). A model that shifts its logits (Dream: column i scores from hidden i - 1) needs one more on
    the left, whose own logits are then wrong but never read (nothing there is masked)."""
    masked_cols = (canvas == teacher.mask_id).any(0).nonzero()
    first = int(masked_cols[0]) if len(masked_cols) else 0
    return slice(max(first - int(bool(getattr(teacher, "shift_logits", False))), 0), None)


class JointHeadObjective(StudentObjective):
    """The student (a JointHeadSampler) is given or built from its config; its head is sized from the teacher here,
    before the hyperparameters are recorded, so checkpoints and exports rebuild it."""

    objective_name = "joint_head"

    def __init__(self, student: nn.Module | dict, teacher: nn.Module, *args, seq_len: int,
                 trajectory_temperature: float | None = None, **kwargs) -> None:
        if trajectory_temperature is not None and trajectory_temperature < 0:
            raise ValueError(f"objective.trajectory_temperature must be >= 0 or null (the student's temperature), "
                             f"got {trajectory_temperature}")
        if not isinstance(student, nn.Module):
            student = students.build(OmegaConf.to_container(student, resolve=True) if OmegaConf.is_config(student)
                                     else dict(student))
        if not hasattr(student, "resolve"):
            raise ValueError(f"objective=joint_head trains a JointHeadSampler, got {type(student).__name__}; "
                             "use student=joint_head")
        student.resolve(teacher, seq_len)
        super().__init__(student, teacher, *args, seq_len=seq_len, trajectory_temperature=trajectory_temperature, **kwargs)
        self.trajectory_temperature = trajectory_temperature
        self.prompt_split: dict | None = None  # the (start, goal) pairs it trained on, when the data keep a split

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = self.trainer.datamodule
        if getattr(datamodule, "trains_on_split", False):  # e.g. paths' self-generated data: train pairs only
            self.prompt_split = datamodule.split_spec()

    def student_record(self) -> dict:
        return {**super().student_record(), "prompt_split": self.prompt_split}

    def restore_record(self, record: dict) -> None:
        super().restore_record(record)
        self.prompt_split = record.get("prompt_split")

    def export_extra(self) -> dict:
        return {"prompt_split": self.prompt_split} if self.prompt_split is not None else {}

    @property
    def trajectory_rule(self):
        """The exact sampler whose trajectories give the training states: the student's reveal order, its tokens
        drawn at `trajectory_temperature` (null: the student's own; e.g. 1 for diverse states under an argmax student)."""
        if self.trajectory_temperature is None:
            return self.student.rule
        rule = copy.copy(self.student.rule)
        rule.temperature = self.trajectory_temperature
        return rule

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        mask_id = self.teacher.mask_id
        K = self.student.tokens_per_forward
        # 1. the exact sampler's trajectory, with the teacher's hidden states on every state
        canvas = start_canvas(batch, mask_id)
        path = teacher_trajectory(self.teacher, canvas, self.trajectory_rule, generator)
        T = len(path["states"])
        cols = generated_columns(self.teacher, canvas)  # the LM head runs only where targets are read
        starts = range(0, T, K)  # full forwards where the sampler makes them; chunks stacked along the batch
        hidden = torch.cat([path["hidden"][s] for s in starts])  # (chunks * B, L, H)
        # 2. pass m of every chunk at once; only the last chunk can be shorter than K
        targets, predictions, masks = [], [], []
        for m in range(min(K, T)):
            at = [s + m for s in starts if s + m < T]
            state = torch.cat([path["states"][s] for s in at])
            with torch.no_grad():  # target: the teacher's LM head on its own hidden state of that state
                targets.append(self.teacher.lm_head(torch.cat([path["hidden"][s] for s in at])[:, cols]))
            hidden, logits = self.student.head_pass(self.teacher, state, hidden[: state.shape[0]], columns=cols)
            predictions.append(logits)
            masks.append(state[:, cols] == mask_id)
        # 3. forward KL per still-masked position, over every pass
        loss, per_pass = multi_pass_forward_kl(targets, predictions, masks)
        values = {"objective": loss.detach()}
        values.update({f"kl_pass{m + 1}": kl.detach() for m, kl in enumerate(per_pass) if kl is not None})
        return loss, values
