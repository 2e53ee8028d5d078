"""Did SDTT's optimiser do what its loss asks? On held-out states of the 16-step grid, the reverse KL
(the training loss), the forward KL to the same sampled targets and the mean predictive entropy of the
teacher itself (round 1's starting point) and of a round-1 student (docs/sdtt.md, "Why").

    python benchmarks/sdtt_diagnostic.py TEACHER_DIR STUDENT_EXPORT_DIR [--states 512]
"""

from __future__ import annotations

import argparse

import torch

import students
import teachers
from distill.data.sources import SourceDataModule
from distill.objectives.losses import masked_forward_kl, masked_reverse_kl
from distill.objectives.sdtt import grid_states, sdtt_target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("teacher")
    ap.add_argument("student", help="a round-1 export (DIR/rounds/round1)")
    ap.add_argument("--states", type=int, default=512)
    args = ap.parse_args()
    torch.set_num_threads(1)
    teacher = teachers.load(args.teacher)
    spec = {k: v for k, v in teacher.data_spec.items() if k != "kind"}
    source = SourceDataModule(**spec).source
    student = students.load(args.student)
    steps = student.steps
    tokens = source.sample(args.states, torch.Generator().manual_seed(123))  # not the training stream's seed
    answer = torch.ones_like(tokens, dtype=torch.bool)
    with torch.no_grad():
        for name, net in (("teacher (round 1's start)", teacher), ("round-1 student", student.denoiser)):
            generator = torch.Generator().manual_seed(0)  # the same states and targets for both
            i, masked = grid_states(answer, steps, generator)
            xt = torch.where(masked, teacher.mask_id, tokens)
            target, _, _ = sdtt_target(teacher, xt, masked, answer.sum(-1), i, steps, generator)
            logits = net(xt)
            log_q = logits.log_softmax(-1)
            entropy = -(log_q.exp() * log_q).sum(-1)[masked].mean()
            print(f"{name}: reverse KL {masked_reverse_kl(logits, target, masked):.4f}, forward KL "
                  f"{masked_forward_kl(logits, target, masked):.4f}, predictive entropy {entropy:.4f} nats")


if __name__ == "__main__":
    main()
