"""Shared fixtures: tiny sources small enough to enumerate every sequence."""

from __future__ import annotations

import itertools

import pytest
import torch

from teachers import HiddenMarkovSource, SourceConfig


@pytest.fixture
def tiny_hmm() -> HiddenMarkovSource:
    """3 hidden states, 4 tokens, length 4: 256 sequences, enumerable."""
    return HiddenMarkovSource.random(
        SourceConfig(seed=3, hidden_states=3, vocab_size=4, seq_len=4, successors=2, emissions_per_state=2, smoothing=0.05)
    )


@pytest.fixture
def tiny_chain() -> HiddenMarkovSource:
    """First-order chain, 3 tokens, length 4."""
    return HiddenMarkovSource.random(SourceConfig(seed=5, hidden_states=3, vocab_size=3, seq_len=4, successors=2))


def all_sequences(vocab_size: int, length: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(vocab_size), repeat=length)))


def brute_force_prob(source: HiddenMarkovSource, tokens: torch.Tensor) -> torch.Tensor:
    """p(tokens) by summing over every hidden path (float64)."""
    S, L = source.num_states, tokens.shape[1]
    paths = all_sequences(S, L)
    probs = torch.zeros(tokens.shape[0], dtype=torch.float64)
    for path in paths:
        p_path = source.initial[path[0]] * torch.prod(source.transition[path[:-1], path[1:]])
        emit = torch.prod(source.emission[path[None, :], tokens], dim=1)  # (N,)
        probs += p_path * emit
    return probs
