"""Training curves of teacher runs: validation metrics per step from Lightning's CSV log,
printed as a table and drawn to a PNG.

    python benchmarks/training_curves.py runs/train_teacher_markov runs/train_teacher_hmm --out docs/curves.png
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

KEYS = ("val/loss", "val/gen_nll", "val/bigram_kl", "val/accuracy")


def read_validation_rows(run_dir: Path) -> list[dict]:
    (log,) = sorted(run_dir.glob("csv/*/metrics.csv"))[-1:]
    with open(log) as f:
        return [{k: v for k, v in r.items() if v} for r in csv.DictReader(f) if r.get("val/loss")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    fig, axes = plt.subplots(1, len(args.runs), figsize=(4.5 * len(args.runs), 3.5), squeeze=False)
    for ax, run in zip(axes[0], args.runs):
        rows = read_validation_rows(run)
        keys = [k for k in KEYS if k in rows[0]]
        print(f"### {run.name}\n\n| step | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
        for r in rows:
            print(f"| {int(r['step']) + 1} | " + " | ".join(f"{float(r[k]):.4f}" for k in keys) + " |")
        print()
        metric = "val/accuracy" if "val/accuracy" in rows[0] else "val/gen_nll"
        ax.plot([int(r["step"]) + 1 for r in rows], [float(r[metric]) for r in rows], marker="o")
        ax.set(title=run.name, xlabel="optimizer step", ylabel=f"{metric} (one token per step)")
        ax.grid(alpha=0.3)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(args.out, dpi=110)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
