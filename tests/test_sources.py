"""Ground truth: exact likelihoods, conditionals and pair statistics against brute force."""

from __future__ import annotations

import math

import pytest
import torch

from teachers import HiddenMarkovSource, OracleDenoiser, SourceConfig
from tests.conftest import all_sequences, brute_force_prob


def test_hmm_log_prob_matches_enumeration(tiny_hmm):
    seqs = all_sequences(4, 4)
    exact = brute_force_prob(tiny_hmm, seqs)
    assert torch.allclose(tiny_hmm.log_prob(seqs).exp(), exact, rtol=1e-10, atol=0)
    assert exact.sum().item() == pytest.approx(1.0, abs=1e-12)


def test_chain_log_prob_is_initial_times_transitions(tiny_chain):
    seqs = all_sequences(3, 4)
    direct = tiny_chain.initial[seqs[:, 0]].log() + tiny_chain.transition[seqs[:, :-1], seqs[:, 1:]].log().sum(1)
    assert torch.allclose(tiny_chain.log_prob(seqs), direct, atol=1e-12)
    assert torch.allclose(tiny_chain.log_prob(seqs), brute_force_prob(tiny_chain, seqs).log(), atol=1e-12)


def test_first_order_special_case_equals_hmm_with_identity_emission():
    chain = HiddenMarkovSource.random(SourceConfig(seed=1, hidden_states=5, vocab_size=5, seq_len=6))
    # the same chain, written as a general HMM whose emission happens to be the identity
    general = HiddenMarkovSource(chain.initial, chain.transition, torch.eye(5, dtype=torch.float64) * 1.0, 6)
    tokens = chain.sample(50, torch.Generator().manual_seed(0))
    revealed = torch.rand(tokens.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    assert torch.allclose(chain.log_prob(tokens), general.log_prob(tokens))
    assert torch.allclose(chain.conditionals(tokens, revealed), general.conditionals(tokens, revealed))


def test_entropy_per_token_of_chain_matches_enumeration(tiny_chain):
    seqs = all_sequences(3, 4)
    logp = tiny_chain.log_prob(seqs)
    exact = -(logp.exp() * logp).sum().item() / 4
    value, stderr = tiny_chain.entropy_per_token()
    assert value == pytest.approx(exact, abs=1e-10) and stderr == 0.0


def test_hmm_entropy_per_token_monte_carlo_matches_enumeration(tiny_hmm):
    seqs = all_sequences(4, 4)
    logp = tiny_hmm.log_prob(seqs)
    exact = -(logp.exp() * logp).sum().item() / 4
    value, stderr = tiny_hmm.entropy_per_token(num_samples=40_000, seed=0)
    assert abs(value - exact) < 4 * stderr
    with pytest.raises(ValueError, match="no closed-form entropy rate"):
        tiny_hmm.entropy_rate()


def test_entropy_rate_matches_long_run_estimate():
    chain = HiddenMarkovSource.random(SourceConfig(seed=2, hidden_states=8, vocab_size=8, seq_len=16))
    long = chain.sample(4, torch.Generator().manual_seed(0), length=20_000)
    estimate = (-chain.log_prob(long) / long.shape[1]).mean().item()
    assert estimate == pytest.approx(chain.entropy_rate(), rel=0.02)


def brute_force_conditional(source, tokens, revealed, i):
    """p(x_i | x_j for revealed j != i) by enumerating every sequence."""
    seqs = all_sequences(source.vocab_size, source.seq_len)
    probs = brute_force_prob(source, seqs)
    keep = revealed.clone()
    keep[i] = False
    consistent = (seqs[:, keep] == tokens[keep]).all(1)
    out = torch.zeros(source.vocab_size, dtype=torch.float64)
    out.index_add_(0, seqs[consistent, i], probs[consistent])
    return out / out.sum()


@pytest.mark.parametrize("pattern", [[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0], [1, 1, 0, 1]])
def test_oracle_conditionals_match_enumeration(tiny_hmm, pattern):
    tokens = torch.tensor([[2, 0, 3, 1]])
    revealed = torch.tensor([pattern], dtype=torch.bool)
    cond = tiny_hmm.conditionals(tokens, revealed)[0]
    for i in range(4):
        assert torch.allclose(cond[i], brute_force_conditional(tiny_hmm, tokens[0], revealed[0], i), atol=1e-12)


def test_oracle_denoiser_contract(tiny_hmm):
    oracle = OracleDenoiser(tiny_hmm)
    tokens = torch.tensor([[oracle.mask_id, 1, oracle.mask_id, 0]])
    logits = oracle(tokens)
    assert logits.shape == (1, 4, 4) and oracle.mask_id == 4
    assert torch.allclose(logits.exp().sum(-1), torch.ones(1, 4), atol=1e-5)
    assert torch.equal(oracle.lm_head(oracle.hidden_states(tokens)), logits)


def test_pair_distribution_matches_large_sample(tiny_hmm):
    source = HiddenMarkovSource(tiny_hmm.initial, tiny_hmm.transition, tiny_hmm.emission, seq_len=8)
    tokens = source.sample(40_000, torch.Generator().manual_seed(0))
    for d in (1, 3):
        pairs = tokens[:, :-d] * 4 + tokens[:, d:]
        empirical = torch.bincount(pairs.reshape(-1), minlength=16).double().view(4, 4)
        empirical /= empirical.sum()
        exact = source.pair_distribution(d)
        assert exact.sum().item() == pytest.approx(1.0)
        assert (empirical - exact).abs().max().item() < 0.006


def test_in_support_flags_smoothing_only_transitions(tiny_chain):
    allowed = tiny_chain.transition_support
    a, b = next((i, j) for i in range(3) for j in range(3) if not allowed[i, j])
    assert not tiny_chain.in_support(torch.tensor([[a, b, b, b]])).item()  # a -> b exists only by smoothing
    walk = [0]
    for _ in range(3):
        walk.append(int(allowed[walk[-1]].nonzero()[0]))
    assert tiny_chain.in_support(torch.tensor([walk])).item()


def test_sampling_is_deterministic_with_a_generator(tiny_hmm):
    a = tiny_hmm.sample(10, torch.Generator().manual_seed(7))
    b = tiny_hmm.sample(10, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(hidden_states=5, vocab_size=6), "hidden_states == vocab_size"),
        (dict(smoothing=0.0), "smoothing must be in"),
        (dict(successors=0), "successors must be in"),
        (dict(emissions_per_state=9, vocab_size=6, hidden_states=4), "emissions_per_state must be in"),
        (dict(weight_exponent=0.0), "weight_exponent must be > 0"),
    ],
)
def test_bad_source_config_names_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HiddenMarkovSource.random(SourceConfig(**kwargs))


def test_log_prob_of_true_data_is_entropy_per_token():
    source = HiddenMarkovSource.random(SourceConfig(seed=0, hidden_states=6, vocab_size=6, seq_len=10))
    nll = -source.log_prob(source.sample(20_000, torch.Generator().manual_seed(0))) / 10
    value, _ = source.entropy_per_token()
    assert nll.mean().item() == pytest.approx(value, abs=4 * nll.std().item() / math.sqrt(20_000))
