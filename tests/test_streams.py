"""Training streams and step generators: batch i is a pure function of (seed, i), split by rank."""

from __future__ import annotations

import itertools

import torch

from distill.seeding import derived_seed
from distill.data.streams import SlicedStream, sampled_batches, shuffled_batches


def _take(stream: SlicedStream, n: int) -> list[torch.Tensor]:
    return [b["tokens"] for b in itertools.islice(iter(stream), n)]


def sample(num: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 1000, (num, 3), generator=generator)


MASK = torch.ones(1, 3, dtype=torch.bool)


def test_two_ranks_together_see_the_one_process_batch_and_differ_from_each_other():
    batches = sampled_batches(sample, seed=4)
    one = _take(SlicedStream(batches, MASK, batch_size=8), 3)
    ranks = [_take(SlicedStream(batches, MASK, batch_size=4, rank=r, world_size=2), 3) for r in range(2)]
    for i in range(3):
        assert torch.equal(torch.cat([ranks[0][i], ranks[1][i]]), one[i])
        assert not torch.equal(ranks[0][i], ranks[1][i])


def test_a_stream_started_at_k_continues_the_uninterrupted_one():
    batches = sampled_batches(sample, seed=4)
    full = _take(SlicedStream(batches, MASK, batch_size=5), 6)
    resumed = _take(SlicedStream(batches, MASK, batch_size=5, start=4), 2)
    assert torch.equal(resumed[0], full[4]) and torch.equal(resumed[1], full[5])
    assert not torch.equal(full[0], full[1])
    other_seed = _take(SlicedStream(sampled_batches(sample, seed=5), MASK, batch_size=5), 1)
    assert not torch.equal(other_seed[0], full[0])


def test_shuffled_rows_visit_every_row_once_per_epoch_across_batch_boundaries():
    rows = torch.arange(10)[:, None].expand(10, 3)
    batch = shuffled_batches(rows, seed=1)
    seen = torch.cat([batch(i, 4)[:, 0] for i in range(5)])  # 20 rows = 2 epochs, batch 2 straddles them
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    assert seen[:10].tolist() != seen[10:].tolist()  # each epoch has its own order
    assert torch.equal(batch(2, 4), shuffled_batches(rows, seed=1)(2, 4))


def test_derived_seeds_separate_their_parts():
    assert derived_seed(1, 2) == derived_seed(1, 2)
    assert len({derived_seed(1, 2), derived_seed(2, 1), derived_seed(12), derived_seed(1, 2, 0)}) == 4
    assert 0 <= derived_seed(7) < 2**63


def test_per_row_answer_masks_are_sliced_with_their_rows():
    def sample_with_masks(num: int, generator: torch.Generator):
        tokens = sample(num, generator)
        return tokens, tokens % 2 == 0

    batches = sampled_batches(sample_with_masks, seed=2)
    for rank in range(2):
        batch = _take_dicts(SlicedStream(batches, MASK, batch_size=3, rank=rank, world_size=2), 1)[0]
        assert torch.equal(batch["answer_mask"], batch["tokens"] % 2 == 0)


def _take_dicts(stream: SlicedStream, n: int) -> list[dict]:
    return list(itertools.islice(iter(stream), n))
