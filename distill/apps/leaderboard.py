"""fewstep-leaderboard: the pipeline a user comes for, on one source, in one command.

    fewstep-leaderboard                                   # the chain, a trained teacher (the main job)
    fewstep-leaderboard data=hmm teacher=oracle           # the text-like source on its exact conditionals
    fewstep-leaderboard data=hmm data.seed=1                 # the text-like source, a trained teacher
    fewstep-leaderboard teacher=saved teacher.path=DIR       # a teacher you trained on this data

Stages, each printed as it starts:
1. the teacher: trained with `teacher_experiment` (or reused from `workdir`) when no `teacher=` is
   given, else the oracle or a saved teacher;
2. every student in `students`: distilled from that teacher by `fewstep-train` (or reused);
3. every row evaluated in this one process, on the same threads and the same canvases: the
   training-free references at their step counts, then each student at its own budget;
4. one table (leaderboard.md / .csv, metrics.json + samples.safetensors as fewstep-eval writes them,
   so every number recomputes from the samples) and one Pareto plot (leaderboard.png): gen NLL and
   pair KL vs mean forward passes, and gen NLL vs seconds per 1000 sequences; then a verdict per student.

Seconds are wall time of sampling only (no scoring), summed over batches, the fastest of
`eval.timing_repeats` passes over the same canvases, timed round robin over the rows. Head passes and other
non-teacher work are inside that time and listed in their own column; they are not in `nfe`.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import students
from distill.apps.cli import CONF_DIR, check_override_keys, set_threads, user_errors
from distill.apps.eval import check_eval
from distill.apps.teacher_setup import oracle_teacher, saved_teacher
from distill.evaluation.evaluate import evaluate_sampler, reference_row, sample_key, write_run
from distill.evaluation.leaderboard_report import pareto_plot, verdicts, write_table

def stage(text: str) -> None:
    print(f"\n== {text}", flush=True)


def data_overrides() -> list[str]:
    """The `data...` overrides of this command line: every training run gets the same data."""
    return [o for o in HydraConfig.get().overrides.task if o.split("=", 1)[0].lstrip("+~").startswith("data")]


def run_dir(cfg: DictConfig, datamodule) -> Path:
    """workdir/<data>-<hash of the data spec>: a teacher or student there was trained on exactly this data."""
    spec = json.dumps(datamodule.spec(), sort_keys=True, default=str)
    name = HydraConfig.get().runtime.choices.get("data", "data")
    return Path(cfg.workdir) / f"{name}-{hashlib.sha256(spec.encode()).hexdigest()[:8]}"


def train(name: str, args: list[str], export_dir: Path, log_dir: Path) -> None:
    """fewstep-train in a child process (its own progress bar), unless its export is already there."""
    if (export_dir / "sampler.json").is_file() or (export_dir / "model.safetensors").is_file():
        print(f"{name}: reusing {export_dir}")
        return
    cmd = [sys.executable, "-m", "distill.apps.train", *args, f"export_dir={export_dir}", f"hydra.run.dir={log_dir}"]
    print(f"{name}: fewstep-train {' '.join(args)}  (log: {log_dir})", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise RuntimeError(f"training {name} failed (exit {proc.returncode}); its command: fewstep-train "
                           f"{' '.join(args)} export_dir={export_dir}")
    print(f"{name}: trained in {time.perf_counter() - start:.0f} s", flush=True)


def check_config(cfg: DictConfig) -> None:
    """Bad settings fail before any training starts."""
    kind = teacher_kind(cfg)
    if kind not in ("trained", "oracle", "saved"):
        raise ValueError(f"teacher={kind}: the leaderboard distils from teacher=oracle, teacher=saved teacher.path=DIR, "
                         "or (no teacher=) a teacher it trains; for a transformers model use fewstep-train and fewstep-eval")
    if kind == "saved" and (OmegaConf.is_missing(cfg.teacher, "path") or not cfg.teacher.path):
        raise ValueError("teacher=saved needs teacher.path=DIR (the export_dir of a fewstep-train teacher run)")
    if kind == "saved" and not Path(cfg.teacher.path).is_dir():
        raise FileNotFoundError(f"teacher.path {cfg.teacher.path}: no such directory")
    if not cfg.students and not cfg.references:
        data = HydraConfig.get().runtime.choices.get("data")
        raise ValueError(f"no rows to evaluate: conf/lineup/{data}.yaml does not exist; pick a lineup (lineup=markov or "
                         "lineup=hmm) or name rows with +students.NAME={experiment: ..., overrides: [...]}")
    if cfg.eval.timing_repeats < 1:
        raise ValueError(f"eval.timing_repeats must be >= 1, got {cfg.eval.timing_repeats}")
    for name, ref in (cfg.references or {}).items():
        if not (Path(CONF_DIR) / "sampler" / f"{ref.sampler}.yaml").is_file():
            raise ValueError(f"references.{name}.sampler={ref.sampler!r} is not a sampler config (conf/sampler/)")
    for name, spec in (cfg.students or {}).items():
        for suffix in ("_oracle", "_teacher"):
            if not (Path(CONF_DIR) / "experiment" / f"{spec.experiment}{suffix}.yaml").is_file():
                raise ValueError(f"students.{name}.experiment={spec.experiment!r}: conf/experiment/"
                                 f"{spec.experiment}{suffix}.yaml does not exist")


def time_sampling(teacher, sampler, benchmark, steps: int, eval_cfg: DictConfig) -> float:
    """Seconds to sample the evaluation's canvases again (same seed, same batches), without scoring."""
    generator = torch.Generator().manual_seed(eval_cfg.seed)
    canvases = benchmark.canvases(eval_cfg.num_samples, teacher.mask_id, generator)
    start = time.perf_counter()
    for chunk in canvases.split(eval_cfg.batch_size):
        sampler.sample(teacher, steps, prompt=chunk, generator=generator)
    return time.perf_counter() - start


def teacher_kind(cfg: DictConfig) -> str:
    """trained (no teacher= given), or the teacher config's option name (oracle, saved, ...)."""
    if not cfg.get("teacher"):
        return "trained"
    return HydraConfig.get().runtime.choices.get("teacher") or "saved"


def reference_sampler(ref: DictConfig, **options):
    config = OmegaConf.merge(OmegaConf.load(Path(CONF_DIR) / "sampler" / f"{ref.sampler}.yaml"), ref.options or {}, options)
    return instantiate(config)


def reference_samplers(name: str, ref: DictConfig) -> list[tuple[str, object]]:
    """One sampler, or one per value of its `sweep` ({option: [values]}: an adaptive decoder's
    threshold swept to land near the students' budgets), each labelled with its setting."""
    sweep = ref.get("sweep") or {}
    if not sweep:
        return [(name, reference_sampler(ref))]
    if len(sweep) != 1:
        raise ValueError(f"references.{name}.sweep sweeps one option, got {list(sweep)}")
    [(option, values)] = sweep.items()
    return [(f"{name} {option}={v}", reference_sampler(ref, **{option: v})) for v in values]


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="leaderboard")
@user_errors
def run(cfg: DictConfig) -> None:
    check_config(cfg)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    datamodule = instantiate(cfg.data)
    generated = int(datamodule.answer_mask.sum())
    check_eval(cfg.eval, generated, datamodule.seq_len)  # the same checks as fewstep-eval, before any training
    set_threads(cfg.threads)  # every evaluated row runs on these threads (trainings are child processes)
    for name, ref in (cfg.references or {}).items():
        bad = [s for s in ref.steps if not 1 <= s <= generated]
        if bad:
            raise ValueError(f"references.{name}.steps {bad}: steps must be between 1 and {generated}")
    work = run_dir(cfg, datamodule)
    data_args = data_overrides()

    # 1. the teacher
    kind = teacher_kind(cfg)
    stage(f"1/4 teacher ({kind})")
    if kind == "oracle":
        teacher, teacher_args, suffix = oracle_teacher(datamodule), ["teacher=oracle"], "_oracle"
    else:
        path = Path(cfg.teacher.path) if kind == "saved" else work / "teacher"
        if kind == "trained":
            train("teacher", [f"experiment={cfg.teacher_experiment}", *data_args, *cfg.teacher_overrides],
                  path, work / "logs" / "teacher")
        teacher, teacher_args, suffix = saved_teacher(str(path), datamodule), [f"teacher.path={path.resolve()}"], "_teacher"

    # 2. the students
    stage(f"2/4 students ({', '.join(cfg.students or {}) or 'none'})")
    student_dirs = {}
    for name, spec in (cfg.students or {}).items():
        tag = "oracle" if suffix == "_oracle" else hashlib.sha256(str(teacher_args).encode()).hexdigest()[:6]
        student_dirs[name] = work / f"{name}-{tag}"
        train(name, [f"experiment={spec.experiment}{suffix}", *teacher_args, *data_args, *spec.overrides],
              student_dirs[name], work / "logs" / f"{name}-{tag}")

    # 3. every row in this process, same threads
    stage(f"3/4 evaluation ({cfg.eval.num_samples} sequences per row, {torch.get_num_threads()} threads)")
    benchmark = datamodule.benchmark(pair_distances=list(cfg.eval.pair_distances), kl_smoothing=cfg.eval.kl_smoothing,
                                     repeats=cfg.eval.repeats, judge_path=cfg.eval.judge_path)
    teacher = teacher.eval()
    rows, samples, kinds, timed = [], {}, {}, []

    def add(name: str, sampler, steps: int, kind: str, family: str | None = None) -> None:
        warm = benchmark.canvases(min(8, cfg.eval.num_samples), teacher.mask_id, torch.Generator().manual_seed(0))
        sampler.sample(teacher, steps, prompt=warm, generator=torch.Generator().manual_seed(0))  # first-call costs untimed
        row, tokens, nfe = evaluate_sampler(teacher, sampler, benchmark, steps, cfg.eval.num_samples,
                                            cfg.eval.batch_size, cfg.eval.seed, name)
        row["kind"], row["family"] = kind, family or name
        rows.append(row)
        timed.append((row, sampler, steps))
        kinds[name] = kind
        samples[sample_key(name, steps)] = tokens
        samples[sample_key(name, steps) + "/nfe"] = nfe
        print(f"  {name:>16} steps={steps:<3} nfe={row['nfe']:<6.2f} "
              + " ".join(f"{k}={row[k]:.4f}" for k in ("gen_nll", "accuracy", "pair_kl_d1", "entropy") if k in row)
              + f"  {row['wall_s'] / cfg.eval.num_samples * 1000:.2f} s/1k (first pass)", flush=True)

    for name, ref in (cfg.references or {}).items():
        for label, sampler in reference_samplers(name, ref):
            for steps in ref.steps:
                add(label, sampler, steps, "reference", family=name)
    add("teacher", reference_sampler(OmegaConf.create({"sampler": "ancestral", "options": {}})), generated, "teacher")
    for name, path in student_dirs.items():
        student = students.load(path).eval()
        students.check_teacher(student.teacher_ref, teacher, datamodule.spec())
        for steps in student.default_steps(generated):
            add(name, student, steps, "student")
    # seconds: the fastest of several passes, timed round robin over all rows, so a busy spell slows them alike
    for round_ in range(2, cfg.eval.timing_repeats + 1):
        print(f"  timing pass {round_}/{cfg.eval.timing_repeats} over {len(timed)} rows", flush=True)
        for row, sampler, steps in timed:
            row["wall_s"] = min(row["wall_s"], time_sampling(teacher, sampler, benchmark, steps, cfg.eval))
    for row, _, _ in timed:
        row["s_per_1k"] = row["wall_s"] / cfg.eval.num_samples * 1000
    truth, tokens = reference_row(benchmark, cfg.eval.num_samples, cfg.eval.seed)
    samples[sample_key("data", None)] = tokens

    # 4. table, plot, verdict
    stage("4/4 table and plot")
    config = OmegaConf.to_container(cfg, resolve=True)
    config["student_dirs"] = {k: str(v) for k, v in student_dirs.items()}
    write_run(out_dir, rows + [truth], samples, benchmark, config)
    lines = verdicts(rows, truth, cfg.eval.tolerance)
    table = write_table(rows, truth, lines, out_dir)
    pareto_plot(rows, truth, out_dir / "leaderboard.png")
    print(table)
    print("\n".join(lines))
    print(f"wrote {out_dir / 'leaderboard.md'}, leaderboard.csv, leaderboard.png, metrics.json, samples.safetensors")


def main() -> None:
    """Console entry point (fewstep-leaderboard)."""
    check_override_keys("leaderboard", sys.argv[1:])
    run()


if __name__ == "__main__":
    main()
