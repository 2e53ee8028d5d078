"""Training batches as a resumable stream, identical however the global batch is split.

Batch i of a run is a pure function of (seed, i): the global batch (per-device batch size x world
size) is built once from a generator seeded by (seed, i) and each rank keeps its own slice. So
- ranks see different data, and 2 processes with batch b see what 1 process with batch 2b sees;
- a run resumed from a checkpoint at step s starts at batch s and sees exactly the batches an
  uninterrupted run would have seen (Lightning checkpoints hold no data-loader position).
"""

from __future__ import annotations

from typing import Callable

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from distill.seeding import derived_seed


Batch = Tensor | tuple[Tensor, Tensor] | dict[str, Tensor]  # tokens (B, L), or tokens and a per-row answer_mask
# (B, L), or a dict of per-row tensors holding at least "tokens" and "answer_mask" (e.g. a trajectory's reveal steps)


class SlicedStream(IterableDataset):
    """Endless batches {"tokens", "answer_mask"}; `global_batch(i, size)` -> batch i: its (size, L)
    tokens, or (tokens, answer_mask) when rows have their own answer spans (else `answer_mask`), or
    a dict of per-row tensors (each sliced the same way, so extra columns reach the objective)."""

    def __init__(self, global_batch: Callable[[int, int], Batch], answer_mask: Tensor, batch_size: int,
                 start: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.global_batch = global_batch
        self.answer_mask = answer_mask
        self.batch_size, self.start, self.rank, self.world_size = batch_size, start, rank, world_size

    def __iter__(self):
        if torch.utils.data.get_worker_info() is not None:
            raise ValueError("training streams are built in the main process; keep the data loader's num_workers=0")
        i = self.start
        while True:
            drawn = self.global_batch(i, self.batch_size * self.world_size)
            mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
            if isinstance(drawn, dict):
                yield {name: column[mine] for name, column in drawn.items()}
                i += 1
                continue
            tokens, answer_mask = drawn if isinstance(drawn, tuple) else (drawn, self.answer_mask.expand_as(drawn))
            yield {"tokens": tokens[mine], "answer_mask": answer_mask[mine]}
            i += 1


def sampled_batches(sample: Callable[[int, torch.Generator], Batch], seed: int) -> Callable[[int, int], Batch]:
    """Batch i drawn fresh from a source: `sample(size, generator seeded by (seed, i))`."""
    return lambda i, size: sample(size, torch.Generator().manual_seed(derived_seed(seed, i)))


def shuffled_batches(rows: Tensor, seed: int) -> Callable[[int, int], Tensor]:
    """Batch i of a fixed set of rows: items [i*size, (i+1)*size) of the endless sequence of
    per-epoch permutations (epoch e shuffled by (seed, e)), so every row is seen once per epoch."""
    n = rows.shape[0]

    def batch(i: int, size: int) -> Tensor:
        positions = torch.arange(i * size, (i + 1) * size)
        epochs, offsets = positions // n, positions % n
        index = torch.empty(size, dtype=torch.long)
        for epoch in epochs.unique().tolist():
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(derived_seed(seed, epoch)))
            here = epochs == epoch
            index[here] = perm[offsets[here]]
        return rows[index]

    return batch


def train_loader(datamodule: L.LightningDataModule, global_batch: Callable[[int, int], Batch],
                 answer_mask: Tensor, batch_size: int) -> DataLoader:
    """The stream positioned where the attached trainer is (0 without one), sliced for its rank."""
    trainer = datamodule.trainer
    start, rank, world = 0, 0, 1
    if trainer is not None:
        start = trainer.global_step * trainer.accumulate_grad_batches
        rank, world = trainer.global_rank, trainer.world_size
    return DataLoader(SlicedStream(global_batch, answer_mask, batch_size, start, rank, world), batch_size=None)
