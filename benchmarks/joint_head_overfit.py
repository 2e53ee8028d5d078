"""Can the joint head fit one fixed batch? The check to run before any long training.

    python benchmarks/joint_head_overfit.py --target oracle --k 4 --steps 100 --n-layer 2
    python benchmarks/joint_head_overfit.py --target teacher --teacher runs/teacher_markov --flat

Trains the head of the chain task on one batch (the same exact-sampler trajectory every step, no
clipping, no schedule) and prints the objective and per-pass KL every tenth of the run. `--flat`
starts the attention bias at zero (the head before it started local).
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch

from distill.data.sources import SourceDataModule
from distill.objectives.joint_head import JointHeadObjective
from distill.apps.teacher_setup import oracle_teacher, saved_teacher
from students import JointHeadSampler


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", choices=["oracle", "teacher"], default="oracle")
    ap.add_argument("--teacher", default="runs/teacher_markov")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--n-layer", type=int, default=1)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--flat", action="store_true", help="zero initial attention bias")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    datamodule = SourceDataModule(batch_size=args.batch_size)
    datamodule.setup("fit")
    teacher = oracle_teacher(datamodule) if args.target == "oracle" else saved_teacher(args.teacher, datamodule)
    student = JointHeadSampler(args.k, width=args.width, n_layer=args.n_layer)
    objective = JointHeadObjective(student=student, teacher=teacher, optimizer=partial(torch.optim.AdamW, lr=args.lr),
                                   vocab_size=datamodule.vocab_size, seq_len=datamodule.seq_len, val_samples=0)
    if args.flat:
        torch.nn.init.zeros_(student.head.rel_bias)
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr)
    batch = next(iter(datamodule.train_dataloader()))
    for step in range(args.steps):
        start = time.perf_counter()
        loss, values = objective.loss(batch, torch.Generator().manual_seed(0))  # same trajectory every step
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % max(1, args.steps // 10) == 0 or step == args.steps - 1:
            passes = " ".join(f"{k}={v.item():.4f}" for k, v in values.items() if k != "objective")
            print(f"step {step:4d}  objective {loss.item():.4f}  {passes}  {time.perf_counter() - start:.2f} s", flush=True)


if __name__ == "__main__":
    main()
