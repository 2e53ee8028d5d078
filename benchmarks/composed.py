"""The composed-student benchmark on held-out `paths` prompts, every row in one process on the same threads:
the teacher's argmax one token per step (blockwise, temperature 0, 16 steps: the interface's teacher row)
beside students (certainty, trajectory, composed; any export `students.load` reads). Per row: accuracy,
full forwards per answer (NFE), head passes, wall time per 1000 answers, distinct valid answers per prompt
over repeated draws, and how many times fewer forwards and how much less wall time than the teacher.

Rows are timed `--timing-repeats` times in turn (round robin, so a busy machine slows them alike) and the
fastest time is kept; tokens and accuracy come from the first round (the same generator seed every round).

    python benchmarks/composed.py --teacher T --student certainty=D2 --student composed=D3 \\
        --student "composed, 2 forced passes=D3:threshold=0.3,head_passes=2,forced_passes=1" --graph-seed 0 --seeds 0 1 --out runs/composed/bench_g0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import students
from distill.data.sources import PathsDataModule
from distill.evaluation.evaluate import evaluate_sampler
from distill.evaluation.report import markdown_table
from teachers import BlockwiseSampler, load_teacher

COLUMNS = ["graph_seed", "data_seed", "sampler", "accuracy", "nfe", "head_passes", "wall_s", "distinct_answers",
           "x_fewer_forwards", "x_less_wall", "within_1_point"]


def parse_student(spec: str) -> tuple[str, str, dict]:
    """NAME=DIR or NAME=DIR:KEY=VALUE,... with the decoding rule's settings replaced (threshold, and for a
    composed student head_passes and forced_passes; temperature for a head's draws), e.g.
    "composed, 0.3=D3:threshold=0.3,head_passes=2" or "chunk head, argmax=D4:temperature=0"."""
    name, _, rest = spec.partition("=")
    path, _, settings = rest.partition(":")
    if not name or not path:
        raise SystemExit(f"--student takes NAME=DIR[:KEY=VALUE,...], got {spec!r}")
    types = {"threshold": float, "head_passes": int, "forced_passes": lambda v: v.lower() in ("1", "true"),
             "temperature": float}
    changes = dict(kv.split("=", 1) for kv in settings.split(",") if kv)
    if set(changes) - set(types):
        raise SystemExit(f"--student {spec!r}: settings are {sorted(types)}")
    return name, path, {k: types[k](v) for k, v in changes.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--student", action="append", default=[], help="NAME=DIR[:KEY=VALUE,...]")
    ap.add_argument("--graph-seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--num-samples", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=8, help="draws per prompt (answer diversity)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timing-repeats", type=int, default=3)
    ap.add_argument("--teacher-sampled", action="store_true", help="also the teacher at temperature 1 (diversity)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    teacher = load_teacher(args.teacher)
    samplers = {"teacher, argmax, 1 token/step": (BlockwiseSampler(temperature=0.0), 16)}
    if args.teacher_sampled:  # the teacher's own answer diversity, beside the students' sampled rows
        samplers["teacher, sampled, 1 token/step"] = (BlockwiseSampler(temperature=1.0), 16)
    for name, path, changes in map(parse_student, args.student):
        student = students.load(path)
        for key, value in changes.items():
            setattr(student, key, value)
        samplers[name] = (student, None)
    rows = []
    for seed in args.seeds:
        datamodule = PathsDataModule(graph_seed=args.graph_seed, seed=seed)
        for name, (sampler, _) in samplers.items():
            if hasattr(sampler, "teacher_ref"):
                students.check_teacher(sampler.teacher_ref, teacher, datamodule.spec())
        benchmark = datamodule.benchmark(repeats=args.repeats)  # held-out (test) pairs only
        generated = int(datamodule.answer_mask.sum())
        first: dict[str, dict] = {}
        for round_ in range(args.timing_repeats):
            for name, (sampler, steps) in samplers.items():
                if steps is None:  # a student's own full forwards (adaptive ones ignore the count)
                    steps = sampler.default_steps(generated)[0] if hasattr(sampler, "default_steps") else generated
                row, _, _ = evaluate_sampler(teacher, sampler, benchmark, steps, args.num_samples,
                                             args.batch_size, seed=0, sampler_name=name)
                if name not in first:
                    first[name] = row
                else:
                    assert row["accuracy"] == first[name]["accuracy"] or sampler.temperature > 0
                    first[name]["wall_s"] = min(first[name]["wall_s"], row["wall_s"])
        reference = first["teacher, argmax, 1 token/step"]
        for name, row in first.items():
            rows.append({"graph_seed": args.graph_seed, "data_seed": seed, **row,
                         "x_fewer_forwards": round(reference["nfe"] / row["nfe"], 2),
                         "x_less_wall": round(reference["wall_s"] / row["wall_s"], 2),
                         "within_1_point": row["accuracy"] >= reference["accuracy"] - 0.01})
        print(markdown_table([r for r in rows if r["data_seed"] == seed], COLUMNS), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    (args.out / "composed_bench.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))
    (args.out / "composed_bench.md").write_text(markdown_table(rows, COLUMNS) + "\n")
    print(f"wrote {args.out / 'composed_bench.md'}")


if __name__ == "__main__":
    main()
