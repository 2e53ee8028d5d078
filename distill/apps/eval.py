"""fewstep-eval: sample a teacher (or the oracle) with one sampler at several step counts, print the
quality-vs-steps table and write metrics.json, samples.safetensors and the source's tensors.

    fewstep-eval teacher=oracle data=markov sampler=dilated "eval.steps=[4,8]"
    fewstep-eval teacher=saved teacher.path=DIR sampler=confidence
    fewstep-eval teacher=oracle sampler=saved sampler.path=STUDENT_DIR    (a distilled student)
"""

from __future__ import annotations

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
from distill.evaluation.evaluate import evaluate_sampler, reference_row, sample_key, write_run
from distill.evaluation.report import markdown_table
from teachers.saved import data_mismatch


def resolve_steps(steps: list[int] | None, generated: int) -> list[int]:
    """The step counts to evaluate: as given, or (null) 1, 2, 4, ... up to one token per step."""
    if steps is None:
        auto = [2**k for k in range(generated.bit_length()) if 2**k < generated]
        return auto + [generated]
    bad = [s for s in steps if not 1 <= s <= generated]
    if bad:
        raise ValueError(f"eval.steps {bad} out of range: steps must be between 1 and the {generated} generated "
                         "positions (eval.steps=null picks 1, 2, 4, ... up to one token per step)")
    return list(steps)


def check_eval(eval_cfg, generated: int, seq_len: int) -> None:
    """Evaluation settings that cannot work fail before any sampling (and, in fewstep-train, before training)."""
    for key in ("num_samples", "batch_size", "repeats"):
        value = eval_cfg.get(key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"eval.{key} must be a whole number >= 1, got {value!r}")
    if eval_cfg.get("kl_smoothing") is not None and eval_cfg.kl_smoothing < 0:
        raise ValueError(f"eval.kl_smoothing must be >= 0 (a pseudo-count per cell), got {eval_cfg.kl_smoothing}")
    distances = list(eval_cfg.get("pair_distances") or [])
    if any(not isinstance(d, int) or d < 1 for d in distances):
        raise ValueError(f"eval.pair_distances must be whole numbers >= 1, got {distances}")
    if distances and min(distances) >= seq_len:
        raise ValueError(f"eval.pair_distances {distances} all reach beyond the {seq_len} tokens of a sequence; "
                         f"give distances below {seq_len}, e.g. eval.pair_distances=[1,2]")
    if eval_cfg.get("steps") is not None:
        resolve_steps(eval_cfg.steps, generated)


def run_evaluation(denoiser, sampler, sampler_name: str, datamodule, eval_cfg, out_dir: Path, config: dict,
                   print_table: bool = True) -> list[dict]:
    """Rows for every step count in eval_cfg.steps plus the true-data row; writes the run files."""
    benchmark = datamodule.benchmark(pair_distances=eval_cfg.pair_distances, kl_smoothing=eval_cfg.kl_smoothing,
                                     repeats=eval_cfg.repeats, judge_path=eval_cfg.get("judge_path"))
    generated = int(datamodule.answer_mask.sum())
    steps = eval_cfg.steps
    if steps is None and hasattr(sampler, "default_steps"):  # a distilled student has its own step count
        steps = sampler.default_steps(generated)
    step_counts = resolve_steps(steps, generated)
    for count in step_counts if hasattr(sampler, "check_steps") else []:
        sampler.check_steps(count)  # a student distilled for other step counts fails before any work
    start = time.perf_counter()
    rows, samples = [], {}
    for steps in step_counts:
        row, tokens, nfe = evaluate_sampler(denoiser, sampler, benchmark, steps, eval_cfg.num_samples,
                                            eval_cfg.batch_size, eval_cfg.seed, sampler_name)
        rows.append(row)
        samples[sample_key(sampler_name, steps)] = tokens
        samples[sample_key(sampler_name, steps) + "/nfe"] = nfe  # forward passes per sequence
    row, tokens = reference_row(benchmark, eval_cfg.num_samples, eval_cfg.seed)
    rows.append(row)
    samples[sample_key("data", None)] = tokens
    write_run(out_dir, rows, samples, benchmark, config, wall_s=round(time.perf_counter() - start, 3))
    summary = ", ".join(f"{k} {v:.4f}" for k, v in benchmark.summary().items() if isinstance(v, float))
    if print_table:
        print(markdown_table(rows))
    if summary:
        print(f"truth: {summary}")
    print(f"wrote {out_dir / 'metrics.json'}")
    return rows


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
@user_errors
def run(cfg: DictConfig) -> None:
    set_threads(cfg.get("threads"))
    try:
        device = torch.device(cfg.device)
    except RuntimeError:
        raise ValueError(f"device={cfg.device} is not a torch device; use device=cpu or device=cuda (cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={cfg.device} but this torch sees no CUDA GPU; use device=cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device={cfg.device} is not supported; use device=cpu or device=cuda (cuda:N)")
    datamodule = instantiate(cfg.data)
    check_eval(cfg.eval, int(datamodule.answer_mask.sum()), datamodule.seq_len)
    sampler = instantiate(cfg.sampler)
    denoiser = instantiate(cfg.teacher, datamodule=datamodule)
    if denoiser.vocab_size < datamodule.vocab_size or (hasattr(datamodule, "source") and denoiser.vocab_size != datamodule.vocab_size):
        raise ValueError(f"teacher vocab_size {denoiser.vocab_size} does not fit the data's {datamodule.vocab_size} tokens; "
                         "use the teacher trained on this data (or the tokenizer of this teacher)")
    name = HydraConfig.get().runtime.choices.get("sampler", "sampler")
    if hasattr(sampler, "teacher_ref"):  # a loaded student: is this the teacher it was distilled from?
        students.check_teacher(sampler.teacher_ref, denoiser, datamodule.spec())
        split = getattr(sampler, "prompt_split", None)  # prompts a student trained on must stay out of the test
        message = split and hasattr(datamodule, "split_spec") and data_mismatch(
            split, datamodule.split_spec(), "this student was trained", "student", what="another prompt split")
        if message:
            raise ValueError(message)
        sampler = sampler.to(cfg.device)
        name = getattr(sampler, "method", name)
    denoiser = denoiser.to(cfg.device)  # a no-op for the oracle, which has no tensors
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    run_evaluation(denoiser, sampler, name, datamodule, cfg.eval, out_dir, OmegaConf.to_container(cfg, resolve=True))


def main() -> None:
    """Console entry point (fewstep-eval)."""
    check_override_keys("eval", sys.argv[1:])
    run()


if __name__ == "__main__":
    main()
