"""Why the composed student's head passes commit little on `paths`: after the first head pass of the first
forward, how many masked answer tokens the second head pass, and a fresh full forward of the distilled
denoiser on the same state, are sure of (entropy below a threshold), and how often their argmax agree.

    python benchmarks/composed_probe.py T D3 [DATA_SEED]      # 125 held-out prompts, as fewstep-eval draws them
"""

from __future__ import annotations

import sys

import torch

import students
from distill.data.sources import PathsDataModule
from teachers.saved import load_teacher
from teachers.samplers.selection import certainty


@torch.no_grad()
def main() -> None:
    torch.set_num_threads(1)
    teacher, composed = load_teacher(sys.argv[1]), students.load(sys.argv[2])
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    datamodule = PathsDataModule(seed=seed, graph_seed=composed.teacher_ref["data"]["graph_seed"])
    canvases = datamodule.benchmark().canvases(1000, teacher.mask_id, torch.Generator().manual_seed(0))[::8]  # (125, L)
    net, mask_id, tau = composed.network(teacher), teacher.mask_id, composed.threshold
    hidden, logits = composed.head_pass(net, canvases, net.hidden_states(canvases))
    masked = canvases == mask_id
    commit = masked & (-certainty(logits, "entropy") < tau)
    state = torch.where(commit, logits.argmax(-1), canvases)
    left = state == mask_id
    print(f"first head pass at threshold {tau:g}: {commit.sum(-1).float().mean():.2f} of {masked.sum(-1).float().mean():.0f} "
          f"tokens committed, {left.sum(-1).float().mean():.2f} left")
    _, head_logits = composed.head_pass(net, state, hidden)
    full_logits = net(state)
    for t in (tau, 0.5, 1.0):
        head = (left & (-certainty(head_logits, "entropy") < t)).sum(-1).float().mean()
        full = (left & (-certainty(full_logits, "entropy") < t)).sum(-1).float().mean()
        print(f"below {t:g} nats: second head pass {head:.2f}, a fresh full forward {full:.2f} per answer")
    agree = (head_logits.argmax(-1) == full_logits.argmax(-1))[left].float().mean()
    print(f"argmax of the second head pass agrees with a fresh forward on {agree:.1%} of the tokens left")


if __name__ == "__main__":
    main()
