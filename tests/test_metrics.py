"""Every metric against a value computed by hand on a tiny batch."""

from __future__ import annotations

import math

import pytest
import torch

from distill.evaluation.metrics import (
    AccuracyMetric, DistinctAnswersMetric, EntropyMetric, ForwardPassMetric, GenNLLMetric, LowProbRateMetric,
    PairKLMetric, kl_to_smoothed_counts,
)
from teachers import HiddenMarkovSource, PathsConfig, PathsTask


@pytest.fixture
def two_state_chain() -> HiddenMarkovSource:
    initial = torch.tensor([0.5, 0.5], dtype=torch.float64)
    transition = torch.tensor([[0.9, 0.1], [0.2, 0.8]], dtype=torch.float64)
    support = torch.tensor([[True, False], [True, True]])  # 0 -> 1 only by smoothing
    return HiddenMarkovSource(initial, transition, torch.eye(2, dtype=torch.float64), 3, support, torch.eye(2).bool())


def test_gen_nll_by_hand(two_state_chain):
    metric = GenNLLMetric(two_state_chain)
    metric.update(torch.tensor([[0, 0, 1], [1, 1, 1]]))
    by_hand = -(math.log(0.5 * 0.9 * 0.1) + math.log(0.5 * 0.8 * 0.8)) / 6
    assert metric.compute().item() == pytest.approx(by_hand, abs=1e-12)
    assert metric.compute().dtype == torch.float64


def test_pair_kl_by_hand(two_state_chain):
    metric = PairKLMetric(two_state_chain, distance=1, smoothing=0.5)
    metric.update(torch.tensor([[0, 0, 1], [1, 1, 1]]))  # pairs: 00, 01, 11, 11
    q = torch.tensor([[1.5, 1.5], [0.5, 2.5]], dtype=torch.float64) / 6.0
    # true bigram averaged over positions 0 and 1: marginals (.5,.5) then (.55,.45)
    p0 = torch.tensor([0.5, 0.5], dtype=torch.float64)
    p1 = p0 @ two_state_chain.transition
    p = ((p0[:, None] + p1[:, None]) / 2) * two_state_chain.transition
    by_hand = (p * (p / q).log()).sum().item()
    assert metric.compute().item() == pytest.approx(by_hand, abs=1e-12)


def test_pair_kl_at_distance_two_uses_two_step_transitions(two_state_chain):
    metric = PairKLMetric(two_state_chain, distance=2, smoothing=1.0)
    metric.update(torch.tensor([[0, 1, 1]]))  # one pair (0, 1)
    p = (torch.tensor([0.5, 0.5], dtype=torch.float64)[:, None]) * (two_state_chain.transition @ two_state_chain.transition)
    q = torch.tensor([[1.0, 2.0], [1.0, 1.0]], dtype=torch.float64) / 5.0
    assert metric.compute().item() == pytest.approx((p * (p / q).log()).sum().item(), abs=1e-12)


def test_kl_is_zero_when_counts_match_truth():
    true = torch.tensor([[0.25, 0.25], [0.25, 0.25]], dtype=torch.float64)
    assert kl_to_smoothed_counts(true, torch.full((2, 2), 10.0, dtype=torch.float64), 0.5).item() == pytest.approx(0.0)


def test_entropy_by_hand():
    metric = EntropyMetric(vocab_size=3)
    metric.update(torch.tensor([[0, 0, 1, 1], [2, 2, 2, 2]]))
    assert metric.compute().item() == pytest.approx(math.log(2) / 2, abs=1e-12)


def test_low_prob_rate_by_hand(two_state_chain):
    metric = LowProbRateMetric(two_state_chain)
    metric.update(torch.tensor([[0, 0, 1], [1, 1, 1], [1, 0, 0], [0, 1, 0]]))
    assert metric.compute().item() == pytest.approx(0.5)


def test_accuracy_and_distinct_answers_by_hand():
    task = PathsTask(PathsConfig(nodes=6, successors=2, answer_len=3, graph_seed=0))
    good = task.sample(3, torch.Generator().manual_seed(0))
    bad = good[0].clone()
    bad[1] = (bad[1] + 1) % 6  # wrong goal
    # prompt group 1: [good0, good0, bad]; group 2: [good1, good2, good2] (answers for other prompts still
    # count if valid for the prompt they carry)
    batch = torch.stack([good[0], good[0], bad, good[1], good[2], good[2]])
    acc = AccuracyMetric(task)
    acc.update(batch)
    assert acc.compute().item() == pytest.approx(5 / 6)
    distinct = DistinctAnswersMetric(task, repeats=3)
    distinct.update(batch)
    expected_second = len({tuple(good[1, 2:].tolist()), tuple(good[2, 2:].tolist())})
    assert distinct.compute().item() == pytest.approx((1 + expected_second) / 2)
    with pytest.raises(ValueError, match="groups of repeats=3"):
        distinct.update(batch[:4])


def test_forward_pass_metric_by_hand():
    metric = ForwardPassMetric()
    metric.update(nfe=8, generated_tokens=32 * 4, sequences=4)
    metric.update(nfe=4, generated_tokens=32 * 4, sequences=4)
    out = metric.compute()
    assert out["nfe"].item() == pytest.approx(6.0)
    assert out["tokens_per_forward"].item() == pytest.approx(256 / 48)
