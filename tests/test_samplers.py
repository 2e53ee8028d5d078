"""Reference samplers on the oracle denoiser: NFE, determinism, exactness at one token per step."""

from __future__ import annotations

import pytest
import torch

from distill.evaluation.metrics import PairKLMetric
from teachers import (
    AncestralSampler, BlockwiseSampler, ConfidenceSampler, DilatedSampler, HiddenMarkovSource, OracleDenoiser,
    SourceConfig,
)
from teachers.samplers.dilated import dilated_rank
from teachers.samplers.base import reveal_counts
from tests.conftest import all_sequences

SAMPLERS = [AncestralSampler(), AncestralSampler(counts="binomial"), ConfidenceSampler(), ConfidenceSampler(score="max_prob"),
            DilatedSampler(), BlockwiseSampler(block_size=4), BlockwiseSampler(block_size=8, order="confidence")]


@pytest.fixture(scope="module")
def oracle() -> OracleDenoiser:
    return OracleDenoiser(HiddenMarkovSource.random(SourceConfig(seed=0, hidden_states=8, vocab_size=8, seq_len=16)))


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: f"{s.name}")
@pytest.mark.parametrize("steps", [1, 4, 16])
def test_nfe_equals_steps_and_nothing_stays_masked(oracle, sampler, steps):
    out = sampler.sample(oracle, steps, batch_size=6, seq_len=16, generator=torch.Generator().manual_seed(0))
    assert out.nfe == steps
    assert out.tokens.shape == (6, 16)
    assert (out.tokens != oracle.mask_id).all()


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: f"{s.name}")
def test_same_generator_state_gives_same_tokens(oracle, sampler):
    a = sampler.sample(oracle, 4, batch_size=5, seq_len=16, generator=torch.Generator().manual_seed(1)).tokens
    b = sampler.sample(oracle, 4, batch_size=5, seq_len=16, generator=torch.Generator().manual_seed(1)).tokens
    c = sampler.sample(oracle, 4, batch_size=5, seq_len=16, generator=torch.Generator().manual_seed(2)).tokens
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("sampler", [AncestralSampler(), ConfidenceSampler(), DilatedSampler(), BlockwiseSampler()],
                         ids=lambda s: s.name)
def test_one_token_per_step_when_steps_equal_length(oracle, sampler):
    out = sampler.sample(oracle, 16, batch_size=3, seq_len=16, generator=torch.Generator().manual_seed(0), return_trace=True)
    masked_counts = [int((t == oracle.mask_id).sum()) for t in out.trace]
    assert masked_counts == [3 * (16 - i - 1) for i in range(16)]


def test_reveal_counts_cover_every_position_evenly():
    n = torch.tensor([32, 16, 7])
    counts = torch.stack([reveal_counts(n, i, 5) for i in range(5)])
    assert torch.equal(counts.sum(0), n)
    assert (counts.max(0).values - counts.min(0).values <= 1).all()


def test_ancestral_at_one_token_per_step_is_exact_on_the_oracle():
    """Chi-square test of the full joint over 3^4 = 81 sequences (fixed seed)."""
    source = HiddenMarkovSource.random(SourceConfig(seed=4, hidden_states=3, vocab_size=3, seq_len=4, successors=2, smoothing=0.1))
    n = 40_000
    out = AncestralSampler().sample(OracleDenoiser(source), 4, batch_size=n, seq_len=4, generator=torch.Generator().manual_seed(0))
    seqs = all_sequences(3, 4)
    expected = source.log_prob(seqs).exp() * n
    observed = torch.bincount((out.tokens * torch.tensor([27, 9, 3, 1])).sum(1), minlength=81).double()
    chi2 = ((observed - expected) ** 2 / expected).sum().item()
    assert chi2 < 130  # 80 degrees of freedom: the 0.999 quantile is 124.8


def test_sampled_confidence_order_is_biased_at_one_token_per_step():
    """Ranking positions by the probability of their drawn token sharpens the samples (documented bias)."""
    source = HiddenMarkovSource.random(SourceConfig(seed=0, hidden_states=8, vocab_size=8, seq_len=12))
    oracle = OracleDenoiser(source)
    gen = torch.Generator().manual_seed(0)
    nll = {}
    for name, sampler in [("random", AncestralSampler()), ("sampled", ConfidenceSampler(score="sampled"))]:
        tokens = sampler.sample(oracle, 12, batch_size=4000, seq_len=12, generator=gen).tokens
        nll[name] = (-source.log_prob(tokens) / 12).mean().item()
    truth, _ = source.entropy_per_token()
    assert abs(nll["random"] - truth) < 0.03
    assert nll["sampled"] < truth - 0.05


def test_dilated_rank_is_bit_reversal():
    assert dilated_rank(8).argsort().tolist() == [0, 4, 2, 6, 1, 5, 3, 7]
    for n in (1, 5, 18, 32):
        assert sorted(dilated_rank(n).tolist()) == list(range(n))


@pytest.mark.parametrize("length, steps", [(32, 4), (32, 8), (18, 5), (16, 16)])
def test_dilated_reveals_every_position_exactly_once(oracle, length, steps):
    source = HiddenMarkovSource.random(SourceConfig(seed=0, hidden_states=8, vocab_size=8, seq_len=length))
    out = DilatedSampler().sample(OracleDenoiser(source), steps, batch_size=2, seq_len=length,
                                  generator=torch.Generator().manual_seed(0), return_trace=True)
    revealed_at = torch.full((2, length), -1)
    previous = torch.full((2, length), True)
    for i, state in enumerate(out.trace):
        now = state != 8
        newly = now & previous
        assert (revealed_at[newly] == -1).all()
        revealed_at[newly] = i
        previous = ~now
    assert (revealed_at >= 0).all() and len(out.trace) == steps
    assert torch.equal(revealed_at[0], revealed_at[1])  # a fixed order


def test_dilated_beats_random_order_fourfold_on_a_first_order_chain():
    source = HiddenMarkovSource.random(SourceConfig(seed=0, hidden_states=24, vocab_size=24, seq_len=32))
    oracle = OracleDenoiser(source)
    kl = {}
    for sampler in (AncestralSampler(), DilatedSampler()):
        tokens = sampler.sample(oracle, 8, batch_size=2000, seq_len=32, generator=torch.Generator().manual_seed(0)).tokens
        metric = PairKLMetric(source, 1)
        metric.update(tokens)
        kl[sampler.name] = metric.compute().item()
    assert kl["dilated"] <= kl["ancestral"] / 4


def test_prompt_positions_are_kept_and_blocks_go_left_to_right(oracle):
    prompt = torch.full((2, 16), oracle.mask_id)
    prompt[:, :4] = torch.tensor([1, 2, 3, 4])
    out = BlockwiseSampler(block_size=4).sample(oracle, 12, prompt=prompt, generator=torch.Generator().manual_seed(0),
                                                return_trace=True)
    assert torch.equal(out.tokens[:, :4], prompt[:, :4])
    first_revealed = [int((s[0] != oracle.mask_id).sum()) for s in out.trace]
    assert first_revealed == list(range(5, 17))
    assert all((s[0, : 4 + i + 1] != oracle.mask_id).all() for i, s in enumerate(out.trace))


@pytest.mark.parametrize("steps", [0, 17])
def test_step_count_out_of_range_is_a_clear_error(oracle, steps):
    with pytest.raises(ValueError, match="steps must be between 1 and the number of masked positions"):
        AncestralSampler().sample(oracle, steps, batch_size=1, seq_len=16)


def test_bad_sampler_options_name_the_valid_ones():
    with pytest.raises(ValueError, match="score must be one of"):
        ConfidenceSampler(score="entropy")
    with pytest.raises(ValueError, match="counts must be"):
        AncestralSampler(counts="poisson")
    with pytest.raises(ValueError, match="temperature must be"):
        DilatedSampler(temperature=-1)


def test_dilated_order_is_not_exact_on_the_default_hidden_source():
    """The hidden source is the hard benchmark: its long-range error survives the dilated order."""
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from distill.apps.cli import CONF_DIR

    source = instantiate(OmegaConf.load(Path(CONF_DIR) / "data" / "hmm.yaml")).source  # the shipped default
    oracle = OracleDenoiser(source)
    truth, stderr = source.entropy_per_token()
    nll = {}
    for steps in (8, 32):
        tokens = DilatedSampler().sample(oracle, steps, batch_size=2000, seq_len=32,
                                         generator=torch.Generator().manual_seed(0)).tokens
        nll[steps] = (-source.log_prob(tokens) / 32).mean().item()
    assert nll[8] > truth * 1.03  # several percent above the entropy at L/4 steps
    assert abs(nll[32] - truth) < 0.02  # exact at one token per step
