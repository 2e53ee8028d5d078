"""Sample-quality metrics as torchmetrics classes with float64 summed states (they reduce
correctly across processes). Each takes generated token ids (B, L) in `update`, and torchmetrics'
own keyword settings (`sync_on_compute`, `process_group`, ...) in its constructor.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torchmetrics import Metric

from teachers.sources.hmm import HiddenMarkovSource
from teachers.sources.paths import PROMPT_LEN, PathsTask


def _zero() -> Tensor:
    return torch.tensor(0.0, dtype=torch.float64)


class GenNLLMetric(Metric):
    """Mean negative log-likelihood per token under the true source (nats). True data scores its
    entropy per token; lower than that means sharper than the truth, not better."""

    full_state_update = False

    def __init__(self, source: HiddenMarkovSource, **kwargs) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.add_state("nll_sum", _zero(), dist_reduce_fx="sum")
        self.add_state("tokens", _zero(), dist_reduce_fx="sum")

    def update(self, tokens: Tensor) -> None:
        self.nll_sum += -self.source.log_prob(tokens.cpu()).sum().to(self.nll_sum)
        self.tokens += tokens.numel()

    def compute(self) -> Tensor:
        return self.nll_sum / self.tokens


def kl_to_smoothed_counts(true: Tensor, counts: Tensor, smoothing: float) -> Tensor:
    """KL(true || (counts + smoothing) / (total + smoothing * cells)), both over the same cells."""
    q = (counts + smoothing) / (counts.sum() + smoothing * counts.numel())
    p = true.to(torch.float64)
    support = p > 0
    return (p[support] * (p[support].log() - q[support].log())).sum()


class PairKLMetric(Metric):
    """KL(true distribution of (x_i, x_{i+d}), averaged over i || smoothed empirical one of the samples).

    Distribution-level: it rises for incoherent samples and for collapsed, over-sharp ones alike.
    d = 1 is the bigram KL. `smoothing` is the add-constant pseudo-count per cell.
    """

    full_state_update = False

    def __init__(self, source: HiddenMarkovSource, distance: int = 1, smoothing: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.distance = distance
        self.smoothing = smoothing
        self.vocab_size = source.vocab_size
        self.register_buffer("true_pairs", source.pair_distribution(distance))
        self.add_state("counts", torch.zeros(self.vocab_size**2, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, tokens: Tensor) -> None:
        d, V = self.distance, self.vocab_size
        pairs = tokens[:, :-d] * V + tokens[:, d:]
        self.counts += torch.bincount(pairs.reshape(-1), minlength=V * V).to(self.counts)

    def compute(self) -> Tensor:
        return kl_to_smoothed_counts(self.true_pairs, self.counts.view(self.vocab_size, -1), self.smoothing)


class EntropyMetric(Metric):
    """Mean per-sample unigram entropy (nats), as reported beside generative perplexity in MDLM/DUO."""

    full_state_update = False

    def __init__(self, vocab_size: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.add_state("entropy_sum", _zero(), dist_reduce_fx="sum")
        self.add_state("samples", _zero(), dist_reduce_fx="sum")

    def update(self, tokens: Tensor) -> None:
        counts = torch.zeros(tokens.shape[0], self.vocab_size, dtype=torch.float64, device=tokens.device)
        counts.scatter_add_(1, tokens, torch.ones_like(tokens, dtype=torch.float64))  # (B, V), no (B, L, V) one-hot
        p = counts / counts.sum(-1, keepdim=True)
        self.entropy_sum += -(p * p.clamp_min(1e-300).log()).sum()
        self.samples += tokens.shape[0]

    def compute(self) -> Tensor:
        return self.entropy_sum / self.samples


class LowProbRateMetric(Metric):
    """Fraction of samples the unsmoothed source could not produce (a transition or emission that
    only the smoothing mass allows)."""

    full_state_update = False

    def __init__(self, source: HiddenMarkovSource, **kwargs) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.add_state("low", _zero(), dist_reduce_fx="sum")
        self.add_state("samples", _zero(), dist_reduce_fx="sum")

    def update(self, tokens: Tensor) -> None:
        self.low += (~self.source.in_support(tokens.cpu())).sum().to(self.low)
        self.samples += tokens.shape[0]

    def compute(self) -> Tensor:
        return self.low / self.samples


class AccuracyMetric(Metric):
    """Fraction of answers the task's checker accepts."""

    full_state_update = False

    def __init__(self, task: PathsTask, **kwargs) -> None:
        super().__init__(**kwargs)
        self.task = task
        self.add_state("correct", _zero(), dist_reduce_fx="sum")
        self.add_state("samples", _zero(), dist_reduce_fx="sum")

    def update(self, tokens: Tensor) -> None:
        self.correct += self.task.check(tokens.cpu()).sum().to(self.correct)
        self.samples += tokens.shape[0]

    def compute(self) -> Tensor:
        return self.correct / self.samples


class DistinctAnswersMetric(Metric):
    """Answer diversity: distinct valid answers per prompt over `repeats` draws of the same prompt.
    Rows must come in consecutive groups of `repeats` rows sharing one prompt."""

    full_state_update = False

    def __init__(self, task: PathsTask, repeats: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.task = task
        self.repeats = repeats
        self.add_state("distinct", _zero(), dist_reduce_fx="sum")
        self.add_state("prompts", _zero(), dist_reduce_fx="sum")

    def update(self, tokens: Tensor) -> None:
        if tokens.shape[0] % self.repeats:
            raise ValueError(f"batch of {tokens.shape[0]} rows is not made of groups of repeats={self.repeats}")
        tokens = tokens.cpu()
        valid = self.task.check(tokens)
        for group, ok in zip(tokens.split(self.repeats), valid.split(self.repeats)):
            answers = {tuple(row[PROMPT_LEN:].tolist()) for row in group[ok]}
            self.distinct += len(answers)
            self.prompts += 1

    def compute(self) -> Tensor:
        return self.distinct / self.prompts


class ForwardPassMetric(Metric):
    """Average denoiser forward passes per sequence (NFE) and tokens generated per forward pass."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("forwards", _zero(), dist_reduce_fx="sum")  # summed over sequences
        self.add_state("tokens", _zero(), dist_reduce_fx="sum")
        self.add_state("sequences", _zero(), dist_reduce_fx="sum")

    def update(self, nfe: int, generated_tokens: int, sequences: int) -> None:
        self.forwards += nfe * sequences
        self.tokens += generated_tokens
        self.sequences += sequences

    def compute(self) -> dict[str, Tensor]:
        return {"nfe": self.forwards / self.sequences, "tokens_per_forward": self.tokens / self.forwards}


class GenPPLMetric(Metric):
    """Generative perplexity: exp(mean NLL per predicted token) of the samples' text under a judge
    causal LM (e.g. GPT-2 Large). Samples are decoded with the teacher's tokenizer and re-encoded
    with the judge's; the first judge token of each sample is context only. Always report it with
    entropy: a collapsed sampler scores a low perplexity.
    """

    full_state_update = False

    def __init__(self, judge, judge_tokenizer, decode, batch_size: int = 16, **kwargs) -> None:
        super().__init__(**kwargs)
        self.judge = judge
        self.judge_tokenizer = judge_tokenizer
        self.decode = decode
        self.batch_size = batch_size
        self.add_state("nll_sum", _zero(), dist_reduce_fx="sum")
        self.add_state("tokens", _zero(), dist_reduce_fx="sum")

    @torch.no_grad()
    def update(self, tokens: Tensor) -> None:
        texts = self.decode(tokens)
        device = next(self.judge.parameters()).device
        for start in range(0, len(texts), self.batch_size):
            encoded = [self.judge_tokenizer(t)["input_ids"] for t in texts[start:start + self.batch_size]]
            encoded = [ids for ids in encoded if len(ids) >= 2]
            if not encoded:
                continue
            width = max(len(ids) for ids in encoded)
            ids = torch.zeros(len(encoded), width, dtype=torch.long)
            attention = torch.zeros(len(encoded), width, dtype=torch.long)
            for row, seq in enumerate(encoded):
                ids[row, : len(seq)] = torch.tensor(seq)
                attention[row, : len(seq)] = 1
            ids, attention = ids.to(device), attention.to(device)
            logits = self.judge(input_ids=ids, attention_mask=attention).logits[:, :-1].double()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
            scored = attention[:, 1:].double()
            self.nll_sum += (nll * scored).sum().cpu()
            self.tokens += scored.sum().cpu()

    def compute(self) -> Tensor:
        return (self.nll_sum / self.tokens.clamp_min(1)).exp()


class AnswerAccuracyMetric(Metric):
    """Fraction of generated answers whose checked value equals the reference's."""

    full_state_update = False

    def __init__(self, references: dict[tuple, str], decode, prompt_len: int, check: Callable[[str], str | None],
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.references, self.decode, self.prompt_len = references, decode, prompt_len
        self.check = check
        self.add_state("correct", _zero(), dist_reduce_fx="sum")
        self.add_state("total", _zero(), dist_reduce_fx="sum")

    def update(self, tokens: Tensor) -> None:
        answers = self.decode(tokens[:, self.prompt_len:])
        for prompt, answer in zip(tokens[:, : self.prompt_len].tolist(), answers):
            expected = self.check(self.references[tuple(prompt)])
            self.correct += float(expected is not None and self.check(answer) == expected)
            self.total += 1

    def compute(self) -> Tensor:
        return self.correct / self.total
