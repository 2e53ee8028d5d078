"""Probe of certainty forcing on `paths`: the objective's loss in a plain training loop (no Lightning),
with the exact accuracy / NFE sweep over thresholds on the val and test pairs every --every steps, so
one run shows how the accuracy-vs-NFE trade-off moves with training. For exploring settings on
another split (--split_seed 1) than the one the default experiment is judged on (0).

    flock /tmp/fewstep_cpu.lock python benchmarks/certainty_probe.py --split_seed 1 --lora 16 --lr 1e-3 --steps 1000
"""
import argparse
import json
import time

import torch
from distill.data.sources import PathsDataModule
from distill.data.self_generated import complete_prefixes, load_or_generate, prefix_canvases, to_tokens
from distill.evaluation.threshold_choice import score_canvases, score_pairs
from distill.objectives.certainty import complementary_masks
from distill.objectives.losses import certainty_loss
from distill.objectives.schedule import warmup_cosine
from students.entropy_threshold import EntropyThresholdSampler
from teachers import BlockwiseSampler, load_teacher

ap = argparse.ArgumentParser()
ap.add_argument("--teacher", default="/work/main/runs/teacher_paths")
ap.add_argument("--cache", default="runs/self_generated_probe")
ap.add_argument("--split_seed", type=int, default=1)
ap.add_argument("--graph_seed", type=int, default=0, help="the teacher's graph (data.graph_seed it was trained with)")
ap.add_argument("--val_fraction", type=float, default=0.1)
ap.add_argument("--steps", type=int, default=800)
ap.add_argument("--lr", type=float, default=1e-4)
ap.add_argument("--wd", type=float, default=0.0)
ap.add_argument("--beta", type=float, default=2.0)
ap.add_argument("--tau", type=float, default=0.5)
ap.add_argument("--lora", type=int, default=0)
ap.add_argument("--lo", type=float, default=0.0)
ap.add_argument("--hi", type=float, default=1.0)
ap.add_argument("--bs", type=int, default=128)
ap.add_argument("--every", type=int, default=200)
ap.add_argument("--warmup", type=int, default=50)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--out", default=None)
ap.add_argument("--save", default=None)
ap.add_argument("--order", default="left_to_right")
ap.add_argument("--prefix_draws", type=int, default=0)
ap.add_argument("--prefix_frac", type=float, default=0.5)
ap.add_argument("--block", type=int, default=32)
ap.add_argument("--val_prefix_draws", type=int, default=0, help="also score prefix canvases of the val pairs")
a = ap.parse_args()
print(vars(a), flush=True)
torch.manual_seed(a.seed)
teacher = load_teacher(a.teacher)
dm = PathsDataModule(val_fraction=a.val_fraction, split_seed=a.split_seed, graph_seed=a.graph_seed)
data, prov, _ = load_or_generate(teacher, dm, BlockwiseSampler(temperature=0.0, order=a.order), a.cache)
print(prov["counts"], flush=True)
rows = to_tokens(data["train"])
n = dm.task.config.answer_len
plen = torch.zeros(len(rows), dtype=torch.long)
n_orig = len(rows)
if a.prefix_draws:  # prefix prompts of the training pairs (distill/data/self_generated.py)
    t0 = time.time()
    extra, extra_k, ok = complete_prefixes(teacher, dm.task, dm.pairs["train"], a.prefix_draws,
                                           BlockwiseSampler(temperature=0.0, order=a.order), torch.Generator().manual_seed(123))
    print("prefix rows", int(ok.sum()), "of", len(ok), f"{time.time()-t0:.1f}s", flush=True)
    rows = torch.cat([rows, extra[ok]]); plen = torch.cat([plen, extra_k[ok]])
print("train rows", len(rows), "val", len(dm.pairs["val"]), "test", len(dm.pairs["test"]), flush=True)
lora = {"r": a.lora, "alpha": 2 * a.lora, "dropout": 0.0, "target_modules": ["qkv", "proj", "mlp.0", "mlp.2", "head"]} if a.lora else None
student = EntropyThresholdSampler(threshold=0.1, block_size=a.block, lora=lora)
student.init_denoiser(teacher)
params = [p for p in student.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=a.wd)
sched = warmup_cosine(opt, a.warmup, a.steps)
gen = torch.Generator().manual_seed(a.seed + 1)
amask = dm.answer_mask
val_states = None
if a.val_prefix_draws:  # val pairs + the first k tokens of a task walk, the rest masked
    walks, _ = prefix_canvases(dm.task, dm.pairs["val"], a.val_prefix_draws, teacher.mask_id,
                               torch.Generator().manual_seed(a.seed + 7))
    val_states = (walks, dm.task.prompt_weights(walks[:, :2]))
    ref, _ = score_canvases(BlockwiseSampler(temperature=0.0), teacher, *val_states, dm.task.check)
    print(f"val states {len(walks)}; teacher argmax one token per step: {100 * ref:.2f}%", flush=True)
TH = [0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5]
log = []
scorers = {"val": lambda: score_pairs(student, teacher, dm.task, dm.pairs["val"]),
           "val_states": lambda: score_canvases(student, teacher, *val_states, dm.task.check),
           "test": lambda: score_pairs(student, teacher, dm.task, dm.pairs["test"])}
if val_states is None:
    del scorers["val_states"]
def evaluate(step):
    student.eval()
    res = {"step": step}
    for split, score in scorers.items():
        out = []
        for t in TH:
            student.threshold = t
            acc, nfe = score()
            out.append((t, round(acc * 100, 2), round(nfe, 2)))
        res[split] = out
    student.train()
    log.append(res)
    for split in scorers:
        print(f"step {step} {split}: " + "  ".join(f"{t}:{acc}/{nfe}" for t, acc, nfe in res[split]), flush=True)
t0 = time.time()
for step in range(1, a.steps + 1):
    if a.prefix_draws:
        n_pre = round(a.bs * a.prefix_frac)
        idx = torch.cat([torch.randint(n_orig, (a.bs - n_pre,), generator=gen), n_orig + torch.randint(len(rows) - n_orig, (n_pre,), generator=gen)])
    else:
        idx = torch.randint(len(rows), (a.bs,), generator=gen)
    tokens = rows[idx]
    am = torch.arange(tokens.shape[1])[None] >= 2 + plen[idx][:, None]
    first, second, later = complementary_masks(am, a.block, (a.lo, a.hi), gen)
    mid = teacher.mask_id
    xt = torch.cat([torch.where(first | later, mid, tokens), torch.where(second | later, mid, tokens)])
    logits = student.denoiser(xt)
    out = certainty_loss(logits, tokens.repeat(2, 1), torch.cat([first, second]), a.beta, a.tau)
    opt.zero_grad(); out.loss.backward(); opt.step(); sched.step()
    if step % 100 == 0:
        print(f"step {step} loss {out.loss.item():.4f} ce {out.ce.item():.4f} ent {out.entropy.item():.4f} corr {out.correct.item():.4f} t {time.time()-t0:.0f}s", flush=True)
    if step % a.every == 0:
        evaluate(step)
print("total", time.time() - t0)
if a.out:
    json.dump({"args": vars(a), "log": log}, open(a.out, "w"))

if a.save:
    torch.save(student.denoiser.state_dict(), a.save)
