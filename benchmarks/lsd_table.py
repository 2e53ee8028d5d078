"""The learned-sampler table of README: per teacher, the learned rows beside the untrained
ancestral sampler, the hand-made rules and one token per step, with the ratios the issue asks for.

    python benchmarks/lsd_table.py            # reads runs/lsd/<teacher>/ and runs/eval/<teacher>/
"""

from __future__ import annotations

import json
from pathlib import Path

TEACHERS = ["oracle_markov", "teacher_markov", "oracle_hmm", "teacher_hmm"]
ORDER = ["ancestral", "dilated", "avoid_neighbours", "lsd", "lsd_plus", "lsd_joint"]


def rows_of(path: Path) -> list[dict]:
    return json.loads(path.read_text())["rows"] if path.is_file() else []


def table(teacher: str, root: Path = Path("runs")) -> str:
    rows = rows_of(root / "eval" / teacher / "ancestral" / "metrics.json")
    rows += rows_of(root / "eval" / teacher / "dilated" / "metrics.json")
    for run in sorted((root / "lsd" / teacher).glob("*/metrics.json")):
        rows += [r for r in rows_of(run) if r["steps"] is not None]
    data = next((r for r in rows if r["sampler"] == "data"), None)
    if data is None:
        return f"### {teacher}\n\n(no runs)\n"
    truth = json.loads((root / "eval" / teacher / "ancestral" / "metrics.json").read_text())["reference"]["entropy_per_token"]
    base = {r["steps"]: r for r in rows if r["sampler"] == "ancestral"}
    lines = [f"### {teacher}  (entropy per token {truth:.4f}; true-data bigram KL {data['bigram_kl']:.4f}, "
             f"entropy {data['entropy']:.4f})", "",
             "| sampler | steps | gen NLL | excess / ancestral's | bigram KL | / ancestral's | pair KL d4 | entropy | vs data |",
             "|---|---|---|---|---|---|---|---|---|"]
    keep = [r for r in rows if r["sampler"] in ORDER and r["steps"] in (4, 8, 16, 32)]
    keep.sort(key=lambda r: (r["steps"], ORDER.index(r["sampler"])))
    for r in keep:
        if r["steps"] == 32 and r["sampler"] != "ancestral":
            continue
        b = base.get(r["steps"])
        excess = (r["gen_nll"] - truth) / (b["gen_nll"] - truth) if b else float("nan")
        kl = r["bigram_kl"] / b["bigram_kl"] if b else float("nan")
        name = "one token per step" if r["steps"] == 32 else r["sampler"]
        lines.append(f"| {name} | {r['steps']} | {r['gen_nll']:.4f} | {excess:.2f}x | {r['bigram_kl']:.4f} | {kl:.2f}x | "
                     f"{r['pair_kl_d4']:.4f} | {r['entropy']:.4f} | {100 * (r['entropy'] / data['entropy'] - 1):+.1f}% |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print("\n".join(table(t) for t in TEACHERS if (Path("runs") / "lsd" / t).is_dir()))
