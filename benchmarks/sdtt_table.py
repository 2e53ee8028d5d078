"""docs/sdtt.md from the runs of benchmarks/sdtt_rounds.sh: the teacher's own ancestral rows at
32/16/8/4 steps beside every SDTT round's student at 16/8/4, and a verdict computed from the rows.

    python benchmarks/sdtt_table.py runs/sdtt --out docs/sdtt.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

METRICS = ("gen_nll", "pair_kl_d1", "pair_kl_d8", "entropy")


def load(path: Path) -> dict:
    return json.loads((path / "metrics.json").read_text())


def rounds_of(out: Path) -> list[dict]:
    meta = json.loads((out / "export" / "sampler.json").read_text())
    return meta["sdtt"]["rounds"]


def fmt(row: dict, key: str, bold: bool = False) -> str:
    text = f"{row[key]:.4f}"
    return f"**{text}**" if bold else text


def table(out: Path) -> tuple[str, list[str], dict]:
    teacher = load(out / "eval" / "teacher")
    truth = teacher["reference"]["entropy_per_token"]
    data = next(r for r in teacher["rows"] if r["sampler"] == "data")
    own = {r["steps"]: r for r in teacher["rows"] if r["steps"] is not None}
    rounds = rounds_of(out)
    lines = [f"| row | steps | gen NLL (truth {truth:.4f}) | pair KL d1 | pair KL d8 | entropy | s / 1000 seq |",
             "|---|---|---|---|---|---|---|"]
    n = teacher["config"]["eval"]["num_samples"]
    for steps in sorted(own, reverse=True):
        r = own[steps]
        lines.append(f"| teacher, ancestral | {steps} | {fmt(r, 'gen_nll')} | {fmt(r, 'pair_kl_d1')} | "
                     f"{fmt(r, 'pair_kl_d8')} | {fmt(r, 'entropy')} | {1000 * r['wall_s'] / n:.2f} |")
    verdict, students = [], {}
    for record in rounds:
        run = load(out / "eval" / f"round{record['round']}")
        rows = {r["steps"]: r for r in run["rows"] if r["steps"] is not None}
        students[record["round"]] = rows
        for steps in sorted(rows, reverse=True):
            r, mine = rows[steps], steps == record["steps"]
            name = f"round {record['round']} student ({record['steps']} steps, target {record['target']} at {record['target_steps']})"
            lines.append(f"| {name} | {steps}{' (its own)' if mine else ''} | {fmt(r, 'gen_nll', mine)} | "
                         f"{fmt(r, 'pair_kl_d1', mine)} | {fmt(r, 'pair_kl_d8', mine)} | {fmt(r, 'entropy', mine)} | "
                         f"{1000 * r['wall_s'] / n:.2f} |")
        M = record["steps"]
        s, t, target = rows[M], own[M], own[2 * M]
        verdict.append(
            f"- round {record['round']} at its {M} steps against the teacher at {M}: gen NLL {s['gen_nll']:.4f} vs "
            f"{t['gen_nll']:.4f} ({s['gen_nll'] - t['gen_nll']:+.4f}), entropy {s['entropy']:.4f} vs {t['entropy']:.4f} "
            f"({s['entropy'] - t['entropy']:+.4f}; data {data['entropy']:.4f}), pair KL d1 {s['pair_kl_d1']:.4f} vs "
            f"{t['pair_kl_d1']:.4f} ({s['pair_kl_d1'] / t['pair_kl_d1']:.2f}x), d8 {s['pair_kl_d8']:.4f} vs "
            f"{t['pair_kl_d8']:.4f} ({s['pair_kl_d8'] / t['pair_kl_d8']:.2f}x); its target, the teacher at {2 * M}: "
            f"gen NLL {target['gen_nll']:.4f}, pair KL d1 {target['pair_kl_d1']:.4f}, d8 {target['pair_kl_d8']:.4f}.")
    lines.append(f"| true data (floor) | - | {fmt(data, 'gen_nll')} | {fmt(data, 'pair_kl_d1')} | {fmt(data, 'pair_kl_d8')} | "
                 f"{fmt(data, 'entropy')} | - |")
    return "\n".join(lines), verdict, {"teacher": own, "students": students, "rounds": rounds, "truth": truth,
                                        "data": data, "n": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="the OUT directory of benchmarks/sdtt_rounds.sh")
    ap.add_argument("--out", dest="doc", type=Path, default=None, help="write the table section here (else print)")
    args = ap.parse_args()
    text, verdict, _ = table(args.out)
    meta = json.loads((args.out / "export" / "sampler.json").read_text())["sdtt"]
    head = (f"Divergence {meta['divergence']}, {len(meta['rounds'])} rounds of {meta['round_steps']} optimizer steps, "
            f"runs in `{args.out.name}`:")
    section = "\n".join([head, "", text, "", "Each round at its own steps (computed from the rows above):", "", *verdict, ""])
    if args.doc is None:
        print(section)
        return
    doc = args.doc.read_text() if args.doc.is_file() else ""
    name = args.out.resolve().name  # one generated section per run directory
    begin, end = f"<!-- sdtt_table.py {name}: begin -->", f"<!-- sdtt_table.py {name}: end -->"
    if begin in doc and end in doc:  # replace the generated section, keep the prose around it
        doc = doc[: doc.index(begin) + len(begin)] + "\n" + section + doc[doc.index(end):]
    else:
        doc = doc + f"\n{begin}\n{section}{end}\n"
    args.doc.write_text(doc)
    print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
