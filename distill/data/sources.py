"""LightningDataModules for the embedded benchmark: fresh training samples from a ground-truth
source, a fixed validation set, and the benchmark that scores generated samples.

Batches are dicts: `tokens` (B, L) and `answer_mask` (B, L) bool, True where the model must
generate (everywhere for unconditional sources, the answer span for `paths`).
"""

from __future__ import annotations

from dataclasses import asdict

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from distill.evaluation.benchmarks import PathsBenchmark, SequenceBenchmark
from distill.data.streams import sampled_batches, train_loader
from teachers.sources.hmm import HiddenMarkovSource, SourceConfig
from teachers.sources.paths import PROMPT_LEN, PathsConfig, PathsTask


def _fixed_batches(tokens: Tensor, answer_mask: Tensor, batch_size: int) -> list[dict[str, Tensor]]:
    return [{"tokens": t, "answer_mask": answer_mask.expand_as(t)} for t in tokens.split(batch_size)]


def check_sizes(**sizes: int) -> None:
    """Batch and split sizes must be whole numbers >= 1 (data.batch_size=0 would train on nothing)."""
    for name, value in sizes.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"data.{name} must be a whole number >= 1, got {value!r}")


class SourceDataModule(L.LightningDataModule):
    """Sequences from a hidden Markov source; `data=markov` is the first-order chain
    (emissions_per_state=null), `data=hmm` the hidden source with long-range dependence."""

    def __init__(
        self,
        seed: int = 0,
        hidden_states: int = 24,
        vocab_size: int = 24,
        seq_len: int = 32,
        successors: int = 3,
        emissions_per_state: int | None = None,
        smoothing: float = 0.01,
        weight_exponent: float = 1.0,
        batch_size: int = 128,
        val_size: int = 1024,
    ) -> None:
        super().__init__()
        check_sizes(batch_size=batch_size, val_size=val_size)
        self.config = SourceConfig(seed, hidden_states, vocab_size, seq_len, successors, emissions_per_state, smoothing,
                                   weight_exponent)
        self.source = HiddenMarkovSource.random(self.config)  # validates the config
        self.batch_size = batch_size
        self.val_size = val_size
        self.answer_mask = torch.ones(1, seq_len, dtype=torch.bool)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    def spec(self) -> dict:
        """What defines the data distribution; a saved teacher records it."""
        return {"kind": "hidden_markov", **asdict(self.config)}

    def train_dataloader(self) -> DataLoader:
        return train_loader(self, sampled_batches(self.source.sample, self.config.seed + 1), self.answer_mask, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        tokens = self.source.sample(self.val_size, torch.Generator().manual_seed(self.config.seed + 2))
        return DataLoader(_fixed_batches(tokens, self.answer_mask, self.batch_size), batch_size=None)

    def benchmark(self, pair_distances: list[int] = (1, 2, 4, 8), kl_smoothing: float = 0.5, **_) -> SequenceBenchmark:
        return SequenceBenchmark(self.source, list(pair_distances), kl_smoothing)


class PathsDataModule(L.LightningDataModule):
    """(start, goal) -> walk of `answer_len` nodes on a sparse graph. `graph_seed` fixes the graph;
    `seed` only changes which prompts and answers are drawn.

    The reachable (start, goal) pairs are split once (by `split_seed`, never by `seed`) into train,
    val and test ("held-out") pairs. The benchmark draws its prompts from the test pairs only, so a
    student trained on prompts of the train split (e.g. self-generated data) is scored on prompts it
    never saw; the teacher's own training stream still covers every pair.
    """

    def __init__(
        self,
        nodes: int = 24,
        successors: int = 3,
        answer_len: int = 16,
        graph_seed: int = 0,
        seed: int = 0,
        batch_size: int = 256,
        val_size: int = 1024,
        heldout_fraction: float = 0.2,
        val_fraction: float = 0.1,
        split_seed: int = 0,
    ) -> None:
        super().__init__()
        check_sizes(batch_size=batch_size, val_size=val_size)
        self.config = PathsConfig(nodes, successors, answer_len, graph_seed)
        self.task = PathsTask(self.config)
        self.split = {"heldout_fraction": heldout_fraction, "val_fraction": val_fraction, "split_seed": split_seed}
        self.pairs = self.task.prompt_splits(heldout_fraction, val_fraction, split_seed)
        self.seed = seed
        self.batch_size = batch_size
        self.val_size = val_size
        self.answer_mask = (torch.arange(self.task.seq_len) >= PROMPT_LEN)[None]

    @property
    def vocab_size(self) -> int:
        return self.task.vocab_size

    @property
    def seq_len(self) -> int:
        return self.task.seq_len

    def spec(self) -> dict:
        return {"kind": "paths", **asdict(self.config)}

    def split_spec(self) -> dict:
        """Which (start, goal) pairs are train, val and test: recorded by students trained on a split."""
        return dict(self.split)

    def train_dataloader(self) -> DataLoader:
        return train_loader(self, sampled_batches(self.task.sample, self.seed + 1), self.answer_mask, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        tokens = self.task.sample(self.val_size, torch.Generator().manual_seed(self.seed + 2))
        return DataLoader(_fixed_batches(tokens, self.answer_mask, self.batch_size), batch_size=None)

    def benchmark(self, repeats: int = 8, split: str = "test", **_) -> PathsBenchmark:
        """Prompts from the `split` pairs ("test" by default: held out from every training split)."""
        return PathsBenchmark(self.task, repeats, prompt_seed=self.seed + 3, pairs=self.pairs[split])
