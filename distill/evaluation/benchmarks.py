"""What a generated sample is scored against: the canvases to fill, the metrics, and true data
for the reference row. One class per kind of task."""

from __future__ import annotations

import os

import torch
from torch import Tensor
from torchmetrics import Metric

from distill.evaluation.metrics import (
    AccuracyMetric, AnswerAccuracyMetric, DistinctAnswersMetric, EntropyMetric, GenNLLMetric, GenPPLMetric,
    LowProbRateMetric, PairKLMetric,
)
from teachers.hf import left_padding_mask
from teachers.sources.hmm import HiddenMarkovSource
from teachers.sources.paths import PROMPT_LEN, PathsTask


class SequenceBenchmark:
    """Unconditional generation of whole sequences, scored against a known hidden Markov source."""

    def __init__(self, source: HiddenMarkovSource, pair_distances: list[int], kl_smoothing: float) -> None:
        self.source = source
        self.pair_distances = [d for d in pair_distances if d < source.seq_len]
        self.kl_smoothing = kl_smoothing
        self.seq_len = source.seq_len

    def canvases(self, num: int, mask_id: int, generator: torch.Generator) -> Tensor:
        return torch.full((num, self.seq_len), mask_id, dtype=torch.long)

    def true_samples(self, canvases: Tensor, generator: torch.Generator) -> Tensor:
        return self.source.sample(canvases.shape[0], generator)

    def metrics(self, **kwargs) -> dict[str, Metric]:
        """Fresh metrics by name; `kwargs` are torchmetrics' settings (e.g. sync_on_compute)."""
        metrics: dict[str, Metric] = {"gen_nll": GenNLLMetric(self.source, **kwargs)}
        for d in self.pair_distances:
            metrics[f"pair_kl_d{d}"] = PairKLMetric(self.source, d, self.kl_smoothing, **kwargs)
        metrics["entropy"] = EntropyMetric(self.source.vocab_size, **kwargs)
        metrics["low_prob_rate"] = LowProbRateMetric(self.source, **kwargs)
        return metrics

    def summary(self) -> dict[str, float]:
        entropy, stderr = self.source.entropy_per_token()
        out = {"entropy_per_token": entropy, "entropy_per_token_stderr": stderr}
        if self.source.identity_emission:
            out["entropy_rate"] = self.source.entropy_rate()
        return out

    def files(self) -> dict[str, dict[str, Tensor]]:
        return {"chain.safetensors": self.source.tensors()}


class PathsBenchmark:
    """Answers to (start, goal) prompts, each prompt drawn `repeats` times for answer diversity;
    prompts come only from `pairs` (K, 2) when given (a held-out split)."""

    def __init__(self, task: PathsTask, repeats: int, prompt_seed: int, pairs: Tensor | None = None) -> None:
        self.task = task
        self.repeats = repeats
        self.prompt_seed = prompt_seed
        self.pairs = pairs
        self.seq_len = task.seq_len

    def canvases(self, num: int, mask_id: int, generator: torch.Generator) -> Tensor:
        num_prompts = max(1, num // self.repeats)
        prompts = self.task.sample_prompts(num_prompts, torch.Generator().manual_seed(self.prompt_seed), self.pairs)
        prompts = prompts.repeat_interleave(self.repeats, dim=0)
        answers = torch.full((prompts.shape[0], self.task.config.answer_len), mask_id, dtype=torch.long)
        return torch.cat([prompts, answers], dim=1)

    def true_samples(self, canvases: Tensor, generator: torch.Generator) -> Tensor:
        prompts = canvases[:, :PROMPT_LEN]
        return torch.cat([prompts, self.task.sample_answers(prompts, generator)], dim=1)

    def metrics(self, **kwargs) -> dict[str, Metric]:
        """Fresh metrics by name; `kwargs` are torchmetrics' settings (e.g. sync_on_compute)."""
        return {"accuracy": AccuracyMetric(self.task, **kwargs),
                "distinct_answers": DistinctAnswersMetric(self.task, self.repeats, **kwargs)}

    def summary(self) -> dict[str, float]:
        return {"repeats_per_prompt": self.repeats}

    def files(self) -> dict[str, dict[str, Tensor]]:
        return {"graph.safetensors": {"transition": self.task.transition}}


class TextBenchmark:
    """Unconditional blocks of text: entropy always, generative perplexity under a judge if given."""

    def __init__(self, tokenizer, true_blocks: Tensor, judge_path: str | None) -> None:
        self.tokenizer = tokenizer
        self.true_blocks = true_blocks
        self.seq_len = true_blocks.shape[1]
        self.judge_path = judge_path
        self._judge = None

    def canvases(self, num: int, mask_id: int, generator: torch.Generator) -> Tensor:
        return torch.full((num, self.seq_len), mask_id, dtype=torch.long)

    def true_samples(self, canvases: Tensor, generator: torch.Generator) -> Tensor:
        index = torch.randint(0, len(self.true_blocks), (canvases.shape[0],), generator=generator)
        return self.true_blocks[index]

    def decode(self, tokens: Tensor) -> list[str]:
        return self.tokenizer.batch_decode(tokens.tolist(), skip_special_tokens=True)

    def judge(self):
        if self._judge is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            if not os.path.exists(self.judge_path) and os.sep in self.judge_path:
                raise FileNotFoundError(f"eval.judge_path {self.judge_path} does not exist; give a causal LM directory "
                                        "(e.g. a save_pretrained GPT-2) or a hub id")
            model = AutoModelForCausalLM.from_pretrained(self.judge_path).eval()
            self._judge = (model, AutoTokenizer.from_pretrained(self.judge_path))
        return self._judge

    def metrics(self, **kwargs) -> dict[str, Metric]:
        """Fresh metrics by name; `kwargs` are torchmetrics' settings (e.g. sync_on_compute)."""
        metrics: dict[str, Metric] = {"entropy": EntropyMetric(len(self.tokenizer), **kwargs)}
        if self.judge_path:
            judge, judge_tokenizer = self.judge()
            metrics["gen_ppl"] = GenPPLMetric(judge, judge_tokenizer, self.decode, **kwargs)
        return metrics

    def summary(self) -> dict[str, float]:
        return {}

    def files(self) -> dict[str, dict[str, Tensor]]:
        return {}


class PromptBenchmark:
    """Held-out prompts, answers scored by the checker; entropy of the answers beside accuracy."""

    def __init__(self, tokenizer, held_out: Tensor, references: dict, prompt_len: int, check) -> None:
        self.tokenizer, self.held_out, self.references = tokenizer, held_out, references
        self.prompt_len, self.check, self.seq_len = prompt_len, check, held_out.shape[1]

    def canvases(self, num: int, mask_id: int, generator: torch.Generator) -> Tensor:
        rows = self.held_out[torch.arange(num) % len(self.held_out)].clone()
        rows[:, self.prompt_len:] = mask_id
        return rows

    def attention_mask(self, canvases: Tensor) -> Tensor:
        """(B, L) bool: False on each prompt's left padding; samplers pass it to the denoiser."""
        return left_padding_mask(canvases, self.tokenizer.pad_token_id, self.prompt_len)

    def true_samples(self, canvases: Tensor, generator: torch.Generator) -> Tensor:
        lookup = {tuple(t[: self.prompt_len].tolist()): t for t in self.held_out}
        return torch.stack([lookup[tuple(c[: self.prompt_len].tolist())] for c in canvases])

    def decode(self, tokens: Tensor) -> list[str]:
        return self.tokenizer.batch_decode(tokens.tolist(), skip_special_tokens=True)

    def metrics(self, **kwargs) -> dict[str, Metric]:
        """Fresh metrics by name; `kwargs` are torchmetrics' settings (e.g. sync_on_compute)."""
        return {"accuracy": AnswerAccuracyMetric(self.references, self.decode, self.prompt_len, self.check, **kwargs),
                "entropy": EntropyMetric(len(self.tokenizer), **kwargs)}

    def summary(self) -> dict[str, float]:
        return {}

    def files(self) -> dict[str, dict[str, Tensor]]:
        return {}
