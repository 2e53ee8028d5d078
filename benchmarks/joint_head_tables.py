"""The joint-head tables of docs/joint_head.md from the runs of benchmarks/joint_head.sh.

    python benchmarks/joint_head_tables.py runs/joint_head [--wall-samples 500]

Quality rows come from the fewstep-eval metrics.json files; the wall-time ratios are measured
here, in one process on the same canvases: the head sampler at K tokens per forward, naive
parallel decoding at the same K (ConfidenceSampler, lowest entropy first) and one token per forward,
with one CPU thread (as the experiments train).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import students
from distill.data.sources import SourceDataModule
from distill.apps.teacher_setup import oracle_teacher, saved_teacher
from teachers import ConfidenceSampler

COLS = ["sampler", "full forwards", "head passes", "gen NLL", "bigram KL", "pair KL d4", "low-prob rate", "entropy",
        "gap closed"]


def rows_of(path: Path) -> list[dict]:
    return json.loads((path / "metrics.json").read_text())["rows"]


def fmt(v, integer: bool = False) -> str:
    if v is None:
        return "-"
    return str(int(v)) if integer else (f"{v:.4f}" if isinstance(v, float) else str(v))


def quality_table(base: list[dict], heads: dict[int, list[dict]], length: int) -> str:
    by_steps = {r["steps"]: r for r in base}
    exact, data = by_steps[length], by_steps[None]
    lines = ["| " + " | ".join(COLS) + " |", "|" + "---|" * len(COLS)]

    def line(name, r, closed=None):
        cells = [name, fmt(r.get("nfe"), True), fmt(r.get("head_passes"), True), fmt(r["gen_nll"]), fmt(r["bigram_kl"]),
                 fmt(r.get("pair_kl_d4")), fmt(r["low_prob_rate"]), fmt(r["entropy"]), "-" if closed is None else f"{closed:.1%}"]
        lines.append("| " + " | ".join(cells) + " |")

    for k, head_rows in sorted(heads.items()):
        naive, head = by_steps[length // k], head_rows[0]
        gap = naive["bigram_kl"] - exact["bigram_kl"]
        line(f"naive parallel, K={k}", naive)
        line(f"joint head, K={k}", head, (naive["bigram_kl"] - head["bigram_kl"]) / gap)
    line("one token per forward (exact sampler)", exact)
    line("data", data)
    return "\n".join(lines)


def wall_times(teacher, head, k: int, length: int, num: int, seed: int = 0) -> dict[str, float]:
    """Seconds per sequence of each sampler on the same `num` all-mask canvases (one batch)."""
    samplers = {"head": (head, length // k), "naive": (ConfidenceSampler(score="neg_entropy"), length // k),
                "exact": (ConfidenceSampler(score="neg_entropy"), length)}
    out = {}
    for name, (sampler, steps) in samplers.items():
        sampler.sample(teacher, steps, batch_size=8, seq_len=length, generator=torch.Generator().manual_seed(seed))
        start = time.perf_counter()
        sampler.sample(teacher, steps, batch_size=num, seq_len=length, generator=torch.Generator().manual_seed(seed))
        out[name] = (time.perf_counter() - start) / num
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", nargs="?", default="runs/joint_head")
    ap.add_argument("--wall-samples", type=int, default=500)
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = Path(args.root)
    datamodule = SourceDataModule()
    length = datamodule.seq_len
    for target in ("oracle", "teacher"):
        heads = {int(p.name.split("_k")[-1]): rows_of(p) for p in sorted(root.glob(f"eval/{target}_head_k*"))}
        if not heads:
            continue
        print(f"### target: {target}\n\n{quality_table(rows_of(root / 'eval' / f'{target}_base'), heads, length)}\n")
        exports = {k: students.load(root / f"{target}_k{k}") for k in heads}
        ref = next(iter(exports.values())).teacher_ref
        teacher = oracle_teacher(datamodule) if ref["kind"] == "oracle" else saved_teacher(ref["path"], datamodule)
        params = sum(p.numel() for p in teacher.parameters())
        print("| K | head params | teacher params | head s/seq | naive s/seq | exact s/seq | head / naive | head / exact |")
        print("|---|---|---|---|---|---|---|---|")
        for k, head in exports.items():
            w = wall_times(teacher, head, k, length, args.wall_samples)
            hp = sum(p.numel() for p in head.parameters())
            print(f"| {k} | {hp} | {params if params else '0 (oracle)'} | {w['head']:.5f} | {w['naive']:.5f} | "
                  f"{w['exact']:.5f} | {w['head'] / w['naive']:.2f} | {w['head'] / w['exact']:.2f} |")
        print()


if __name__ == "__main__":
    main()
