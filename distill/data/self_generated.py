"""Self-generated distillation data (dParallel): the frozen teacher's own deterministic answers to
the prompts of a training split, kept only when the task's checker accepts them.

dParallel teaches the student to reach the teacher's *original sampling trajectories* in fewer
steps, so the data are the teacher's standard deterministic decoding (argmax tokens,
semi-autoregressive, one token per step), not samples. On `paths` a deterministic decoder gives
one answer per (start, goal) pair, so the data hold one answer per training pair (drawing prompts
with repetition would only repeat rows); the held-out test pairs are never decoded.

Prefix prompts (`prefix_draws` > 0): on `paths` the teacher's argmax walk is, to a good
approximation, a policy of (current node, goal, position), and a held-out pair's walk soon runs
through states that training walks of other pairs visit. With one walk per training pair those
states are few, so the student learns the teacher's convention from 371 examples. A prefix prompt
is a training pair plus the first k tokens of a walk drawn from the task (the teacher's own training
distribution); the teacher completes it with the same deterministic decoding, and the completion is
kept if the whole answer checks. Only training pairs are used, and the prefix is always shown, never
a target (distill.objectives.certainty masks only the completion).

Validation states (`val_prefix_draws` > 0): the val pairs with the first k tokens of a drawn walk
shown and the rest masked. They are not decoded by the teacher or stored; the certainty objective
completes them with the student when it chooses the decoding threshold (`selection_states`).

Trajectories (`trajectory=True`, for distill.objectives.trajectory): every decoded answer also
keeps its reveal order, `reveal_step` per answer position: the teacher's step (0-based, one token per
step) at which it committed that token; -1 where it was given (a prefix prompt's prefix). The state
after t steps of the teacher's trajectory is then the answer with every position of reveal_step >= t
masked, so states are read back exactly, never re-decoded.

On disk (built once under a temporary name, then renamed; reused while the key matches):

    cache_dir/<key>/train/, validation/   datasets.Dataset: start, goal, answer, prompt_weight
    cache_dir/<key>/train_prefixed/       the same with prefix_len (only when prefix_draws > 0)
                                          (trajectory=True: every split also has reveal_step)
    cache_dir/<key>/provenance.json       teacher path and SHA-256, sampler config, prompt split,
                                          prompts decoded and answers kept / rejected per split
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict, load_from_disk
from torch import Tensor, nn
from torch.utils.data import DataLoader

from distill.data.sources import PathsDataModule, _fixed_batches
from distill.data.streams import sampled_batches, train_loader
from teachers.files import atomic_directory
from teachers.samplers.blockwise import BlockwiseSampler
from teachers.sources.paths import PROMPT_LEN, PathsTask
from teachers.saved import load_teacher

FORMAT = "fewstep-self-generated/1"
SPLITS = {"train": "train", "validation": "val"}  # dataset split -> prompt split it decodes


@torch.no_grad()
def decode_canvases(teacher: nn.Module, canvases: Tensor, steps: int, sampler: BlockwiseSampler, batch_size: int = 512,
                    generator: torch.Generator | None = None) -> Tensor:
    """Fill the masked positions of `canvases` (K, L) with `sampler` in `steps` steps: (K, L)."""
    device = next(teacher.parameters()).device
    outputs = [sampler.sample(teacher, steps, prompt=chunk.to(device), generator=generator).tokens.cpu()
               for chunk in canvases.split(batch_size)]
    return torch.cat(outputs) if outputs else canvases.clone()


def reveal_steps(trace: list[Tensor], start: Tensor, mask_id: int) -> Tensor:
    """(K, L) step (0-based) at which each position of `start` (K, L) was revealed along `trace` (the
    states after each step); -1 where `start` already held a token."""
    if not trace:
        return torch.full(start.shape, -1, dtype=torch.long)
    still_masked = (torch.stack(trace) == mask_id).long().sum(0)  # (K, L): steps after which it was still masked
    return torch.where(start == mask_id, still_masked, -1)


@torch.no_grad()
def decode_trajectories(teacher: nn.Module, canvases: Tensor, steps: int, sampler: BlockwiseSampler,
                        batch_size: int = 512, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """`decode_canvases` that also records the teacher's reveal order: tokens (K, L), reveal_step (K, L)."""
    if len(canvases) == 0:
        return canvases.clone(), torch.full(canvases.shape, -1, dtype=torch.long)
    device = next(teacher.parameters()).device
    tokens, reveal = [], []
    for chunk in canvases.split(batch_size):
        out = sampler.sample(teacher, steps, prompt=chunk.to(device), generator=generator, return_trace=True)
        tokens.append(out.tokens.cpu())
        reveal.append(reveal_steps([state.cpu() for state in out.trace], chunk, teacher.mask_id))
    return torch.cat(tokens), torch.cat(reveal)


def decode_prompts(teacher: nn.Module, task: PathsTask, prompts: Tensor, sampler: BlockwiseSampler,
                   batch_size: int = 512, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The teacher's answers (K, 2 + n) to `prompts` (K, 2), one token per step, and which are correct (K,)."""
    tokens, ok, _ = decode_prompt_trajectories(teacher, task, prompts, sampler, batch_size, generator, trajectory=False)
    return tokens, ok


def decode_prompt_trajectories(teacher: nn.Module, task: PathsTask, prompts: Tensor, sampler: BlockwiseSampler,
                               batch_size: int = 512, generator: torch.Generator | None = None,
                               trajectory: bool = True) -> tuple[Tensor, Tensor, Tensor | None]:
    """`decode_prompts` plus (trajectory=True) the step each position was revealed at (K, 2 + n), else None."""
    n = task.config.answer_len
    canvases = torch.cat([prompts, torch.full((len(prompts), n), teacher.mask_id, dtype=prompts.dtype)], dim=1)
    if not trajectory:
        tokens = decode_canvases(teacher, canvases, n, sampler, batch_size, generator)
        return tokens, task.check(tokens), None
    tokens, reveal = decode_trajectories(teacher, canvases, n, sampler, batch_size, generator)
    return tokens, task.check(tokens), reveal


def complete_prefixes(teacher: nn.Module, task: PathsTask, pairs: Tensor, draws: int, sampler: BlockwiseSampler,
                      generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Prefix prompts for `pairs` (K, 2): `draws` walks per pair from the task, each cut after
    k ~ U{1..n-1} tokens and completed by the teacher one token per step.
    Returns tokens (K * draws, 2 + n), prefix lengths k (K * draws,) and which answers check (K * draws,)."""
    tokens, prefix_len, ok, _ = complete_prefix_trajectories(teacher, task, pairs, draws, sampler, generator, False)
    return tokens, prefix_len, ok


def complete_prefix_trajectories(teacher: nn.Module, task: PathsTask, pairs: Tensor, draws: int,
                                 sampler: BlockwiseSampler, generator: torch.Generator,
                                 trajectory: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Prefix prompts for `pairs` (K, 2) as in `complete_prefixes`, and with `trajectory` the reveal order
    of each completion.
    Returns tokens (K * draws, 2 + n), prefix lengths k (K * draws,), which answers check (K * draws,)
    and (trajectory=True) the completion's reveal steps (K * draws, 2 + n; -1 on prompt and prefix), else None."""
    n = task.config.answer_len
    tokens, prefix_len = prefix_canvases(task, pairs, draws, teacher.mask_id, generator)
    reveal = torch.full(tokens.shape, -1, dtype=torch.long) if trajectory else None
    for k in prefix_len.unique().tolist():  # one step count per prefix length: one token per step
        rows = (prefix_len == k).nonzero().squeeze(1)
        if trajectory:
            tokens[rows], reveal[rows] = decode_trajectories(teacher, tokens[rows], n - k, sampler, generator=generator)
        else:
            tokens[rows] = decode_canvases(teacher, tokens[rows], n - k, sampler, generator=generator)
    return tokens, prefix_len, task.check(tokens), reveal


def prefix_canvases(task: PathsTask, pairs: Tensor, draws: int, mask_id: int,
                    generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Mid-answer states for `pairs` (K, 2): `draws` walks per pair from the task, each cut after
    k ~ U{1..n-1} tokens, the rest masked. Returns canvases (K * draws, 2 + n) and prefix lengths k."""
    n = task.config.answer_len
    prompts = pairs.repeat_interleave(draws, dim=0)
    tokens = torch.cat([prompts, task.sample_answers(prompts, generator)], dim=1)
    prefix_len = torch.randint(1, n, (len(prompts),), generator=generator)
    tokens[torch.arange(tokens.shape[1])[None] >= PROMPT_LEN + prefix_len[:, None]] = mask_id
    return tokens, prefix_len


def answers_dataset(tokens: Tensor, weights: Tensor, prefix_len: Tensor | None = None,
                    reveal: Tensor | None = None) -> Dataset:
    columns = {
        "start": tokens[:, 0].tolist(), "goal": tokens[:, 1].tolist(), "answer": tokens[:, PROMPT_LEN:].tolist(),
        "prompt_weight": weights.tolist(),
    }
    if prefix_len is not None:
        columns["prefix_len"] = prefix_len.tolist()
    if reveal is not None:
        columns["reveal_step"] = reveal[:, PROMPT_LEN:].tolist()
    return Dataset.from_dict(columns)


def generate(teacher: nn.Module, task: PathsTask, pairs: dict[str, Tensor], sampler: BlockwiseSampler,
             draws_per_prompt: int = 1, seed: int = 0, prefix_draws: int = 0,
             trajectory: bool = False) -> tuple[DatasetDict, dict]:
    """Decode the train and val pairs with the teacher (and, with `prefix_draws`, prefix prompts of
    the train pairs); keep what `task.check` accepts (with `trajectory`, and each answer's reveal steps).
    Returns the data set and the per-split counts (prompts, kept, rejected)."""
    generator = torch.Generator().manual_seed(seed)
    data, counts = {}, {}
    for name, split in SPLITS.items():
        prompts = pairs[split].repeat_interleave(draws_per_prompt, dim=0)
        tokens, ok, reveal = decode_prompt_trajectories(teacher, task, prompts, sampler, generator=generator,
                                                        trajectory=trajectory)
        data[name] = answers_dataset(tokens[ok], task.prompt_weights(prompts[ok]),
                                     reveal=reveal[ok] if reveal is not None else None)
        counts[name] = {"prompts": len(prompts), "kept": int(ok.sum()), "rejected": int((~ok).sum())}
    if prefix_draws > 0:
        prefix_generator = torch.Generator().manual_seed(seed + 1)  # argmax decoding leaves `generator` unused
        tokens, prefix_len, ok, reveal = complete_prefix_trajectories(teacher, task, pairs["train"], prefix_draws,
                                                                      sampler, prefix_generator, trajectory)
        data["train_prefixed"] = answers_dataset(tokens[ok], task.prompt_weights(tokens[ok, :PROMPT_LEN]), prefix_len[ok],
                                                 reveal[ok] if reveal is not None else None)
        counts["train_prefixed"] = {"prompts": len(tokens), "kept": int(ok.sum()), "rejected": int((~ok).sum())}
    return DatasetDict(data), counts


def cache_key(provenance: dict) -> str:
    """What determines the data: teacher weights, sampler, task, split and draws (not the counts)."""
    keyed = {k: provenance[k] for k in ("teacher_sha256", "sampler", "data", "prompt_split", "draws_per_prompt", "seed")}
    if provenance.get("prefix_draws"):
        keyed["prefix_draws"] = provenance["prefix_draws"]
    if provenance.get("trajectory"):
        keyed["trajectory"] = True
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]


def load_or_generate(teacher: nn.Module, datamodule: PathsDataModule, sampler: BlockwiseSampler, cache_dir: str | Path,
                     draws_per_prompt: int = 1, seed: int = 0, prefix_draws: int = 0,
                     trajectory: bool = False) -> tuple[DatasetDict, dict, Path]:
    """The data set for this teacher, sampler and split: read from cache_dir, or generated and saved there."""
    task = datamodule.task
    provenance = {
        "format": FORMAT,
        "teacher_path": getattr(teacher, "path", None),
        "teacher_sha256": getattr(teacher, "sha256", None),
        "sampler": {"class": type(sampler).__name__, "temperature": sampler.temperature, "block_size": sampler.block_size,
                    "order": sampler.order, "steps": task.config.answer_len},
        "data": datamodule.spec(),
        "prompt_split": datamodule.split_spec(),
        "draws_per_prompt": draws_per_prompt,
        "seed": seed if sampler.temperature > 0 or prefix_draws > 0 else None,  # argmax decoding alone uses none
        "prefix_draws": prefix_draws,
        "trajectory": trajectory,
    }
    if provenance["teacher_sha256"] is None:
        raise ValueError("self-generated data need a saved teacher (its SHA-256 names the data); use teacher=saved")
    path = Path(cache_dir) / cache_key(provenance)
    if (path / "provenance.json").is_file():
        return load_from_disk(str(path)), json.loads((path / "provenance.json").read_text()), path
    start = time.perf_counter()
    data, counts = generate(teacher, task, datamodule.pairs, sampler, draws_per_prompt, seed, prefix_draws, trajectory)
    provenance.update(counts=counts, generation_s=round(time.perf_counter() - start, 3),
                      created=time.strftime("%Y-%m-%dT%H:%M:%S"),
                      note="test (held-out) pairs are never decoded; only answers task.check accepts are kept")
    with atomic_directory(path, done_marker="provenance.json") as tmp:  # another writer may finish first
        data.save_to_disk(str(tmp))
        (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2))
    return load_from_disk(str(path)), provenance, path


def to_tokens(split: Dataset) -> Tensor:
    """(K, 2 + n) sequences [start, goal, answer] of a data-set split."""
    if len(split) == 0:
        return torch.empty(0, PROMPT_LEN, dtype=torch.long)
    cols = split.with_format("torch")[:]  # dict of tensors
    return torch.cat([cols["start"][:, None], cols["goal"][:, None], cols["answer"]], dim=1).long()


def to_reveal_steps(split: Dataset) -> Tensor:
    """(K, 2 + n) reveal steps of a trajectory split: -1 on the prompt (always shown)."""
    if "reveal_step" not in split.column_names:
        raise ValueError("these self-generated data hold no trajectories; set data.trajectory=true")
    if len(split) == 0:
        return torch.empty(0, PROMPT_LEN, dtype=torch.long)
    reveal = split.with_format("torch")[:]["reveal_step"].long()
    return torch.cat([torch.full((len(split), PROMPT_LEN), -1, dtype=torch.long), reveal], dim=1)


def trajectory_batch(tokens: Tensor, reveal: Tensor) -> dict[str, Tensor]:
    """A batch of trajectory rows: tokens, reveal_step and answer_mask (the positions the teacher decoded)."""
    return {"tokens": tokens, "reveal_step": reveal, "answer_mask": reveal >= 0}


def report_kept(path: Path, data: DatasetDict, provenance: dict, hint: str = "") -> None:
    """Print the kept / rejected counts per split; no kept training answer is an error."""
    counts = provenance["counts"]
    print(f"self-generated data {path}: " + ", ".join(
        f"{k} {v['kept']} kept / {v['rejected']} rejected of {v['prompts']} prompts" for k, v in counts.items()))
    if len(data["train"]) == 0:
        raise ValueError(f"the teacher answered none of the {counts['train']['prompts']} training prompts "
                         f"correctly; nothing to distill{hint}")


class SelfGeneratedDataModule(PathsDataModule):
    """`paths` with training batches drawn (with replacement) from the teacher's own verified answers
    on the train pairs; validation batches are its answers on the val pairs; the benchmark still
    draws prompts from the held-out test pairs.

    Args (besides PathsDataModule's):
        teacher_path: the saved teacher that generates the data (the distillation teacher).
        cache_dir: where generated data sets are kept and reused.
        temperature, order, block_size: the teacher's decoding (0 / left_to_right: its standard
            deterministic one-token-per-step decoding).
        draws_per_prompt: answers decoded per prompt (more than 1 only makes sense with temperature > 0).
        prefix_draws: prefix prompts per training pair (0: none); see the module docstring.
        prefix_fraction: share of each training batch drawn from the prefix prompts (when there are any).
        val_prefix_draws: mid-answer states per val pair for choosing the decoding threshold (0: none);
            see `selection_states`.
        trajectory: keep the teacher's reveal order too; batches then carry `reveal_step` (B, L)
            (see the module docstring).
    """

    trains_on_split = True  # training prompts come from the train pairs only (students record the split)

    def __init__(self, teacher_path: str, cache_dir: str = "runs/self_generated", temperature: float = 0.0,
                 order: str = "left_to_right", block_size: int = 32, draws_per_prompt: int = 1, prefix_draws: int = 0,
                 prefix_fraction: float = 0.5, val_prefix_draws: int = 0, trajectory: bool = False, **paths) -> None:
        super().__init__(**paths)
        if teacher_path is None or teacher_path == "???":
            raise ValueError("self-generated data need the teacher: teacher.path=DIR")
        if draws_per_prompt < 1:
            raise ValueError(f"draws_per_prompt must be >= 1, got {draws_per_prompt}")
        if prefix_draws < 0:
            raise ValueError(f"prefix_draws must be >= 0, got {prefix_draws}")
        if val_prefix_draws < 0:
            raise ValueError(f"val_prefix_draws must be >= 0, got {val_prefix_draws}")
        if not 0 <= prefix_fraction <= 1:
            raise ValueError(f"prefix_fraction must be in [0, 1], got {prefix_fraction}")
        self.teacher_path = teacher_path
        self.cache_dir = cache_dir
        self.sampler = BlockwiseSampler(temperature=temperature, block_size=block_size, order=order)
        self.draws_per_prompt = draws_per_prompt
        self.prefix_draws = prefix_draws
        self.prefix_fraction = prefix_fraction
        self.val_prefix_draws = val_prefix_draws
        self.trajectory = bool(trajectory)
        self.data: DatasetDict | None = None
        self.provenance: dict | None = None

    def load(self) -> DatasetDict:
        if self.data is None:
            teacher = load_teacher(self.teacher_path)
            self.data, self.provenance, path = load_or_generate(teacher, self, self.sampler, self.cache_dir,
                                                                self.draws_per_prompt, self.seed, self.prefix_draws,
                                                                self.trajectory)
            report_kept(path, self.data, self.provenance)
        return self.data

    def selection_canvases(self, mask_id: int) -> tuple[Tensor, Tensor]:
        """The validation pairs with their answers masked (K, 2 + n), and their prompt weights (K,)."""
        pairs = self.pairs["val"]
        canvas = torch.cat([pairs, torch.full((len(pairs), self.task.config.answer_len), mask_id)], dim=1)
        return canvas, self.task.prompt_weights(pairs)

    def selection_states(self, mask_id: int) -> tuple[Tensor, Tensor] | None:
        """Mid-answer states of the val pairs (`val_prefix_draws` per pair: a walk drawn from the task,
        cut after k ~ U{1..n-1} tokens, the rest masked) and their prompt weights; None without them.

        53 val pairs resolve about 2 points of accuracy, too coarse for a target of 1. Completing many
        states of the same pairs shows where parallel commits start to splice walks, which the
        threshold choice compares against the student's own near-sequential decoding of the states."""
        if self.val_prefix_draws == 0:
            return None
        generator = torch.Generator().manual_seed(self.seed + 2)
        canvases, _ = prefix_canvases(self.task, self.pairs["val"], self.val_prefix_draws, mask_id, generator)
        return canvases, self.task.prompt_weights(canvases[:, :PROMPT_LEN])

    def check(self, tokens: Tensor) -> Tensor:
        return self.task.check(tokens)

    def prepare_data(self) -> None:
        self.load()

    def setup(self, stage: str | None = None) -> None:
        self.load()

    def train_dataloader(self) -> DataLoader:
        data = self.load()
        if self.trajectory:
            return self.trajectory_loader(data)
        rows = to_tokens(data["train"])
        prefixed = data["train_prefixed"] if "train_prefixed" in data and len(data["train_prefixed"]) else None
        if prefixed is None:
            def draw(num: int, generator: torch.Generator) -> Tensor:
                return rows[torch.randint(len(rows), (num,), generator=generator)]

            return train_loader(self, sampled_batches(draw, self.seed + 1), self.answer_mask, self.batch_size)
        prefixed_rows = to_tokens(prefixed)
        prefix_len = torch.tensor(prefixed["prefix_len"], dtype=torch.long)
        positions = torch.arange(rows.shape[1])

        def draw_mixed(num: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
            """A `prefix_fraction` of the rows from prefix prompts (their prefix shown, never a target), the
            rest whole answers: only these train the first pass from the bare prompt, which sets the NFE."""
            k = round(num * self.prefix_fraction)
            plain = rows[torch.randint(len(rows), (num - k,), generator=generator)]
            index = torch.randint(len(prefixed_rows), (k,), generator=generator)
            tokens = torch.cat([plain, prefixed_rows[index]])
            shown = torch.cat([torch.zeros(num - k, dtype=torch.long), prefix_len[index]])
            order = torch.randperm(num, generator=generator)  # mixed, so every rank's slice has both kinds
            return tokens[order], positions[None] >= PROMPT_LEN + shown[order, None]

        return train_loader(self, sampled_batches(draw_mixed, self.seed + 1), self.answer_mask, self.batch_size)

    def trajectory_loader(self, data: DatasetDict) -> DataLoader:
        """Training batches of whole trajectories: a `prefix_fraction` of the rows from prefix prompts
        (their prefix has reveal_step -1: shown, never a target) when there are any."""
        rows, reveal = to_tokens(data["train"]), to_reveal_steps(data["train"])
        prefixed = data["train_prefixed"] if "train_prefixed" in data and len(data["train_prefixed"]) else None
        fraction = self.prefix_fraction if prefixed is not None else 0.0
        if prefixed is not None:
            prefixed_rows, prefixed_reveal = to_tokens(prefixed), to_reveal_steps(prefixed)

        def draw(num: int, generator: torch.Generator) -> dict[str, Tensor]:
            k = round(num * fraction)
            index = torch.randint(len(rows), (num - k,), generator=generator)
            tokens, steps = rows[index], reveal[index]
            if k:
                index = torch.randint(len(prefixed_rows), (k,), generator=generator)
                tokens, steps = torch.cat([tokens, prefixed_rows[index]]), torch.cat([steps, prefixed_reveal[index]])
            order = torch.randperm(num, generator=generator)  # mixed, so every rank's slice has both kinds
            return trajectory_batch(tokens[order], steps[order])

        return train_loader(self, sampled_batches(draw, self.seed + 1), self.answer_mask, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        if self.trajectory:
            validation = self.load()["validation"]
            batches = zip(to_tokens(validation).split(self.batch_size), to_reveal_steps(validation).split(self.batch_size))
            return DataLoader([trajectory_batch(t, r) for t, r in batches], batch_size=None)
        return DataLoader(_fixed_batches(to_tokens(self.load()["validation"]), self.answer_mask, self.batch_size),
                          batch_size=None)
