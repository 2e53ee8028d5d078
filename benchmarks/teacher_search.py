"""Search teacher hyperparameters fast (plain torch loop; runs on a GPU or the CPU).

Each configuration trains for a fixed number of optimizer steps, the unit that carries over to
the 2-core CPU budget (measure seconds per step there), and prints gen NLL at one token per step
against the truth at a few checkpoints.

    python benchmarks/teacher_search.py --data hmm --steps 3000 --batch 128 --lr 2e-3
"""

from __future__ import annotations

import argparse
import time

import torch

from distill.data.sources import PathsDataModule, SourceDataModule
from distill.evaluation.evaluate import evaluate_sampler
from distill.objectives.losses import masked_ce
from distill.objectives.masked_diffusion import mask_tokens
from distill.objectives.schedule import warmup_cosine
from teachers import AncestralSampler, BlockwiseSampler, TransformerDenoiser

DATA = {
    "markov": lambda: SourceDataModule(),
    "hmm": lambda: SourceDataModule(hidden_states=16, vocab_size=32, emissions_per_state=4, weight_exponent=6.0),
    "paths": lambda: PathsDataModule(),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="hmm", choices=list(DATA))
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--mlp", type=int, default=4)
    ap.add_argument("--abs", action="store_true", help="learned absolute positions too")
    ap.add_argument("--weighting", default="none", choices=["none", "elbo"])
    ap.add_argument("--evals", type=int, default=4)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    dm = DATA[args.data]()
    net = TransformerDenoiser(dm.vocab_size, dm.seq_len, args.layers, args.heads, args.d, args.mlp, absolute_positions=args.abs).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    sched = warmup_cosine(opt, args.warmup, args.steps)
    stream = iter(dm.train_dataloader())
    benchmark = dm.benchmark()
    full = int(dm.answer_mask.sum())
    sampler = BlockwiseSampler(block_size=full) if args.data == "paths" else AncestralSampler()
    ref = benchmark.summary()
    start = time.time()
    for step in range(1, args.steps + 1):
        batch = {k: v.to(device) for k, v in next(stream).items()}
        xt, noise_mask, t = mask_tokens(batch["tokens"], batch["answer_mask"], net.mask_id)
        loss = masked_ce(net(xt), batch["tokens"], noise_mask, 1 / t if args.weighting == "elbo" else None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % (args.steps // args.evals) == 0:
            net.eval()
            row, _, _ = evaluate_sampler(net, sampler, benchmark, full, 1000, 1000, 0, "search")
            net.train()
            quality = (f"gen_nll {row['gen_nll']:.4f} (+{100 * (row['gen_nll'] / ref['entropy_per_token'] - 1):.1f}%) "
                       f"bigram_kl {row['bigram_kl']:.4f}") if "gen_nll" in row else f"accuracy {row['accuracy']:.4f}"
            print(f"{vars(args)} step {step} loss {loss.item():.4f} {quality} [{time.time() - start:.0f}s]", flush=True)


if __name__ == "__main__":
    main()
