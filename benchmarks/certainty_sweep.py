"""Accuracy vs NFE of certainty-forced students and of the undistilled teacher over a sweep of
entropy thresholds, on the validation and the held-out test (start, goal) pairs; the reference rows
(teacher one token per step, teacher in confidence order at few steps); answer diversity; and the
seed-averaged rows of the `fewstep-eval` runs under --evals. Writes Markdown, JSON and a PNG.

Accuracy and NFE of the sweep are exact for the split: every pair decoded once (argmax decoding is
deterministic), weighted by its prompt probability (the distribution `fewstep-eval` draws from).

    python benchmarks/certainty_sweep.py --teacher runs/teacher_paths --student lora=DIR --student full=DIR \\
        --evals runs/certainty/eval --out docs
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from collections import defaultdict
from pathlib import Path

import torch

import students
from distill.evaluation.threshold_choice import score_pairs
from distill.data.sources import PathsDataModule
from distill.evaluation.evaluate import evaluate_sampler
from distill.evaluation.report import markdown_table
from students.entropy_threshold import EntropyThresholdSampler
from teachers import BlockwiseSampler, load_teacher

THRESHOLDS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5]


def sweep(teacher, learned: dict, dm: PathsDataModule, thresholds: list[float]) -> list[dict]:
    rows = []
    n = dm.task.config.answer_len
    for split in ("val", "test"):
        pairs = dm.pairs[split]

        def add(method: str, sampler, threshold=None, steps=None):
            accuracy, nfe = score_pairs(sampler, teacher, dm.task, pairs, steps)
            rows.append({"split": split, "method": method, "threshold": threshold, "accuracy": accuracy, "nfe": nfe,
                         "speedup": n / nfe})

        add("teacher argmax, 1 token/step (left to right)", BlockwiseSampler(temperature=0.0))
        for k in (2, 3, 4, 8):
            add(f"teacher argmax, confidence order, {k} steps", BlockwiseSampler(temperature=0.0, order="confidence"), steps=k)
        for t in thresholds:
            add("teacher + entropy threshold", EntropyThresholdSampler(threshold=t), t)
        for name, student in learned.items():
            for t in thresholds:
                s = copy.copy(student)
                s.threshold = t
                add(f"student {name}", s, t)
            add(f"student {name} (chosen threshold)", student, student.threshold)
    return rows


def diversity(teacher, learned: dict, dm: PathsDataModule, num: int, seed: int) -> list[dict]:
    """Distinct valid answers per test prompt over 8 draws, accuracy and NFE (the fewstep-eval rows)."""
    bench = dm.benchmark(repeats=8, split="test")
    n = dm.task.config.answer_len
    cases = [("teacher argmax, 1 token/step", BlockwiseSampler(temperature=0.0), n),
             ("teacher sampled (T=1), 1 token/step", BlockwiseSampler(temperature=1.0), n)]
    for name, student in learned.items():
        cases.append((f"teacher + entropy threshold {student.threshold:g}", EntropyThresholdSampler(student.threshold), n))
        cases.append((f"teacher + entropy threshold {student.threshold:g}, T=1",
                      EntropyThresholdSampler(student.threshold, temperature=1.0), n))
        cases.append((f"student {name} (threshold {student.threshold:g})", student, n))
        sampled = copy.copy(student)
        sampled.temperature = 1.0
        cases.append((f"student {name} (threshold {student.threshold:g}), T=1", sampled, n))
    rows = []
    for label, sampler, steps in cases:
        row, _, _ = evaluate_sampler(teacher, sampler, bench, steps, num, 400, seed, label)
        rows.append({"method": label, **{k: row[k] for k in ("accuracy", "nfe", "distinct_answers")}})
    return rows


def collect_evals(root: Path) -> list[dict]:
    """Mean and range over seeds of the fewstep-eval rows in root/<label>_s<seed>/metrics.json."""
    groups = defaultdict(list)
    for f in sorted(root.glob("*_s*/metrics.json")):
        label = f.parent.name.rsplit("_s", 1)[0]
        for row in json.loads(f.read_text())["rows"]:
            if row["sampler"] != "data":
                groups[(label, row["steps"])].append(row)
    out = []
    for (label, steps), rows in groups.items():
        acc = [r["accuracy"] for r in rows]
        out.append({"run": label, "steps": steps, "seeds": len(rows), "accuracy": statistics.mean(acc),
                    "accuracy_min": min(acc), "accuracy_max": max(acc), "nfe": statistics.mean(r["nfe"] for r in rows),
                    "distinct_answers": statistics.mean(r["distinct_answers"] for r in rows)})
    return out


def plot(rows: list[dict], pair_counts: dict[str, int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, split in zip(axes, ("val", "test")):
        split_rows = [r for r in rows if r["split"] == split]
        curves = dict.fromkeys(r["method"] for r in split_rows if r["threshold"] is not None and "chosen" not in r["method"])
        colors = {}
        for method in curves:
            pts = sorted((r["nfe"], 100 * r["accuracy"]) for r in split_rows if r["method"] == method)
            colors[method] = ax.plot(*zip(*pts), marker="o", ms=3, label=f"{method} (threshold sweep)")[0].get_color()
        conf = sorted((r["nfe"], 100 * r["accuracy"]) for r in split_rows if "confidence order" in r["method"])
        ax.plot(*zip(*conf), marker="s", ls="--", color="gray", label="teacher argmax, confidence order, k steps")
        ref = next(r for r in split_rows if "1 token/step" in r["method"])
        ax.scatter([ref["nfe"]], [100 * ref["accuracy"]], marker="*", s=150, color="k", zorder=5,
                   label="teacher argmax, 1 token/step")
        for r in split_rows:
            if "chosen" in r["method"]:
                color = colors.get(r["method"].replace(" (chosen threshold)", ""))
                ax.scatter([r["nfe"]], [100 * r["accuracy"]], marker="D", s=50, color=color, edgecolor="k", zorder=6)
        ax.axhline(100 * ref["accuracy"] - 1, color="k", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("average NFE per answer (log scale)")
        ax.set_title(f"{split} pairs ({pair_counts[split]})")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle("paths: accuracy vs NFE (diamonds: threshold chosen on val; dotted: teacher - 1 point)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--student", action="append", default=[], help="NAME=EXPORT_DIR (repeatable)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=THRESHOLDS)
    parser.add_argument("--evals", type=Path, default=None, help="directory of fewstep-eval runs named LABEL_sSEED")
    parser.add_argument("--diversity-samples", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()

    teacher = load_teacher(args.teacher)
    learned = {}
    for item in args.student:
        name, path = item.split("=", 1)
        learned[name] = students.load(path)
        students.check_teacher(learned[name].teacher_ref, teacher)
    splits = {s.prompt_split and json.dumps(s.prompt_split, sort_keys=True) for s in learned.values()}
    if len(splits) > 1:
        raise ValueError(f"the students were trained on different prompt splits: {splits}")
    split = next(iter(learned.values())).prompt_split if learned else None
    data = {k: v for k, v in teacher.data_spec.items() if k != "kind"}
    dm = PathsDataModule(**data, **(split or {}), seed=args.seed)

    torch.set_grad_enabled(False)
    rows = sweep(teacher, learned, dm, args.thresholds)
    div = diversity(teacher, learned, dm, args.diversity_samples, args.seed)
    evals = collect_evals(args.evals) if args.evals else []
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"teacher": {"path": teacher.path, "sha256": teacher.sha256}, "prompt_split": dm.split_spec(),
               "pairs": {k: len(v) for k, v in dm.pairs.items()},
               "students": {k: s.export_path for k, s in learned.items()}, "sweep": rows, "diversity": div,
               "evals": evals}
    (args.out / "certainty_sweep.json").write_text(json.dumps(payload, indent=2))
    parts = []
    if evals:
        parts += ["## fewstep-eval runs (mean over seeds; min-max accuracy)", "",
                  markdown_table(evals, ["run", "steps", "seeds", "accuracy", "accuracy_min", "accuracy_max", "nfe",
                                         "distinct_answers"]), ""]
    for split_name in ("test", "val"):
        parts += [f"## Exact accuracy vs NFE, {split_name} pairs ({len(dm.pairs[split_name])})", "",
                  markdown_table([r for r in rows if r["split"] == split_name],
                                 ["method", "threshold", "accuracy", "nfe", "speedup"]), ""]
    parts += [f"## Answer diversity on test prompts ({args.diversity_samples} answers, 8 draws per prompt)", "",
              markdown_table(div, ["method", "accuracy", "nfe", "distinct_answers"]), ""]
    text = "\n".join(parts)
    (args.out / "certainty_sweep.md").write_text(text)
    plot(rows, payload["pairs"], args.out / "certainty_curve.png")
    print(text)
    print(f"wrote {args.out / 'certainty_sweep.md'}, certainty_sweep.json, certainty_curve.png")


if __name__ == "__main__":
    main()
