"""Adaptive training-free samplers (EB-sampler, confidence / entropy thresholds): selection rules
against hand-computed cases, per-row forward passes, determinism, exactness at one token per step."""

from __future__ import annotations

import json
import math
import subprocess

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from students.entropy_threshold import EntropyThresholdSampler
from teachers import EBSampler, HiddenMarkovSource, OracleDenoiser, SourceConfig, ThresholdSampler
from teachers.samplers.selection import certainty, entropy, entropy_bounded_set, threshold_set
from tests.conftest import all_sequences

SAMPLERS = [EBSampler(gamma=2.5), ThresholdSampler(tau=0.3), ThresholdSampler(tau=1.2, rule="entropy"),
            ThresholdSampler(tau=0.3, block_size=4, float64_confidence=True)]


class FixedDenoiser(nn.Module):
    """Returns the same logits (L, V) for every row whatever the canvas; records what it is given."""

    def __init__(self, logits: Tensor, eos_id: int | None = None) -> None:
        super().__init__()
        self.logits, self.eos_id = logits, eos_id
        self.vocab_size = logits.shape[-1]
        self.mask_id = self.vocab_size
        self.attention_masks: list[Tensor | None] = []

    def forward(self, tokens: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        self.attention_masks.append(attention_mask)
        return self.logits.expand(tokens.shape[0], -1, -1)


@pytest.fixture(scope="module")
def oracle() -> OracleDenoiser:
    return OracleDenoiser(HiddenMarkovSource.random(SourceConfig(seed=0, hidden_states=8, vocab_size=8, seq_len=16)))


def test_eb_set_against_a_hand_computed_case():
    entropies = torch.tensor([[0.75, 0.25, 1.0, 0.5, 0.0],
                              [0.75, 0.25, 1.0, 0.5, 0.0]])  # binary fractions: sums are exact
    candidates = torch.tensor([[True, True, True, True, False],  # position 4 is revealed already
                               [False, False, False, False, False]])  # a finished row
    # Sorted candidates: 0.25 (1), 0.5 (3), 0.75 (0), 1.0 (2); sum minus max: 0, 0.25, 0.75, 1.5.
    expected = {0.0: [1], 0.25: [1, 3], 0.7: [1, 3], 0.75: [1, 3, 0], 1.4: [1, 3, 0], 1.5: [1, 3, 0, 2]}
    for gamma, positions in expected.items():
        chosen = entropy_bounded_set(entropies, candidates, gamma)
        assert chosen[0].nonzero().squeeze(1).sort().values.tolist() == sorted(positions), gamma
        assert not chosen[1].any()


def test_eb_selects_on_the_entropy_of_the_logits():
    """Uniform over 1, 2, 4 of 4 classes: entropies 0, ln 2, ln 4; sum minus max 0, 0, ln 2."""
    neg = -1e4
    logits = torch.tensor([[[0.0, 0, 0, 0], [0, 0, neg, neg], [0, neg, neg, neg]]])
    masked = torch.ones(1, 3, dtype=torch.bool)
    assert torch.allclose(entropy(logits)[0], torch.tensor([math.log(4), math.log(2), 0.0]), atol=1e-6)
    assert EBSampler(gamma=0.5).select(logits, masked)[0].tolist() == [False, True, True]
    assert EBSampler(gamma=0.7).select(logits, masked)[0].tolist() == [True, True, True]


def test_threshold_commits_at_least_the_most_certain_position():
    logits = torch.zeros(2, 5, 4)
    logits[0, 3, 1] = 1.0  # row 0: position 3 is the most certain; row 1: all tie, the first wins
    masked = torch.ones(2, 5, dtype=torch.bool)
    for sampler in (ThresholdSampler(tau=0.99), ThresholdSampler(tau=0.0, rule="entropy")):
        chosen = sampler.select(logits, masked)
        assert chosen.sum(-1).tolist() == [1, 1]
        assert chosen[0, 3] and chosen[1, 0]
    out = ThresholdSampler(tau=0.99).sample(FixedDenoiser(torch.zeros(6, 4)), batch_size=3, seq_len=6,
                                            generator=torch.Generator().manual_seed(0), return_trace=True)
    assert out.nfe == 6 and out.nfe_per_row.tolist() == [6, 6, 6]
    assert [int((t == 4).sum()) for t in out.trace] == [3 * (5 - i) for i in range(6)]


def test_threshold_rules_commit_at_equality():
    sure = torch.tensor([[0.5, 0.7, 0.2]])
    candidates = torch.ones(1, 3, dtype=torch.bool)
    assert threshold_set(sure, candidates, 0.5, "confidence").tolist() == [[True, True, False]]
    assert threshold_set(-sure, candidates, 0.5, "entropy").tolist() == [[True, False, True]]
    # Through the logits: two positions with probabilities (1/2, 1/2), exact in float64.
    logits = torch.zeros(1, 2, 2, dtype=torch.float64)
    masked = torch.ones(1, 2, dtype=torch.bool)
    assert ThresholdSampler(tau=0.5, float64_confidence=True).select(logits, masked).all()
    assert ThresholdSampler(tau=0.5 + 1e-12, float64_confidence=True).select(logits, masked).sum() == 1
    h = float(-certainty(logits, "entropy", float64=True)[0, 0])  # ln 2, as computed
    assert abs(h - math.log(2)) < 1e-12
    assert ThresholdSampler(tau=h, rule="entropy", float64_confidence=True).select(logits, masked).all()
    below = math.nextafter(h, 0.0)
    assert ThresholdSampler(tau=below, rule="entropy", float64_confidence=True).select(logits, masked).sum() == 1


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: s.name)
def test_same_generator_state_gives_same_tokens_and_nothing_stays_masked(oracle, sampler):
    outs = [sampler.sample(oracle, batch_size=6, seq_len=16, generator=torch.Generator().manual_seed(seed))
            for seed in (1, 1, 2)]
    assert torch.equal(outs[0].tokens, outs[1].tokens) and torch.equal(outs[0].nfe_per_row, outs[1].nfe_per_row)
    assert not torch.equal(outs[0].tokens, outs[2].tokens)
    for out in outs:
        assert (out.tokens != oracle.mask_id).all()
        assert ((1 <= out.nfe_per_row) & (out.nfe_per_row <= 16)).all()
        assert out.nfe == pytest.approx(out.nfe_per_row.double().mean().item())


def test_rows_stop_on_their_own_and_a_larger_bound_spends_fewer_passes(oracle):
    nfe = {}
    for gamma in (0.0, 2.0, 5.0):
        out = EBSampler(gamma=gamma).sample(oracle, batch_size=64, seq_len=16, generator=torch.Generator().manual_seed(0))
        nfe[gamma] = out.nfe
        if gamma == 2.0:
            assert len(set(out.nfe_per_row.tolist())) > 1  # adaptive: rows differ
    assert nfe[0.0] == 16  # no zero-entropy position on this source: one per step
    assert nfe[0.0] > nfe[2.0] > nfe[5.0]


def test_steps_is_a_per_row_budget(oracle):
    out = EBSampler(gamma=0.0).sample(oracle, 5, batch_size=4, seq_len=16, generator=torch.Generator().manual_seed(0),
                                      return_trace=True)
    assert out.nfe_per_row.tolist() == [5] * 4 and (out.tokens != oracle.mask_id).all()
    assert [int((t == oracle.mask_id).sum()) for t in out.trace] == [4 * 15, 4 * 14, 4 * 13, 4 * 12, 0]
    with pytest.raises(ValueError, match="per-row budget"):
        EBSampler().sample(oracle, 0, batch_size=1, seq_len=16)
    assert EBSampler().default_steps(32) == [32] and EBSampler(max_steps=8).default_steps(32) == [8]


def test_blocks_finish_left_to_right(oracle):
    prompt = torch.full((2, 16), oracle.mask_id)
    prompt[:, :4] = torch.tensor([1, 2, 3, 4])
    out = ThresholdSampler(tau=0.3, block_size=4).sample(oracle, prompt=prompt, generator=torch.Generator().manual_seed(0),
                                                         return_trace=True)
    assert torch.equal(out.tokens[:, :4], prompt[:, :4])
    for state in out.trace:
        revealed = (state[:, 4:] != oracle.mask_id).view(2, 3, 4)  # (rows, blocks, positions)
        started = revealed.any(-1)
        finished = revealed.all(-1)
        for b in range(1, 3):  # a block starts only once every block before it is finished
            assert (~started[:, b] | finished[:, :b].all(-1)).all()


def test_eos_fill_ends_the_answer_and_saves_passes():
    neg = -1e4
    logits = torch.zeros(8, 5)
    logits[:, 4] = neg  # end token 4 unlikely...
    logits[2] = torch.tensor([neg, neg, neg, neg, 0.0])  # ...except at position 2, where it is certain
    prompt = torch.full((1, 8), 5)
    prompt[0, 0] = 1
    on = EBSampler(gamma=0.0, eos_fill=True).sample(FixedDenoiser(logits, eos_id=4), prompt=prompt,
                                                    generator=torch.Generator().manual_seed(0))
    assert on.tokens[0, 2:].tolist() == [4] * 6 and on.tokens[0, 0] == 1
    # Step 1: position 2 (entropy 0) and with it position 1 (sum minus max: 0 <= gamma), then the fill.
    assert on.nfe == 1
    off = EBSampler(gamma=0.0).sample(FixedDenoiser(logits, eos_id=4), prompt=prompt, generator=torch.Generator().manual_seed(0))
    assert off.nfe == 6 and (off.tokens[0, 3:] != 4).all()  # then the 5 other positions one by one
    with pytest.raises(ValueError, match="eos_fill=true needs a denoiser with an end token"):
        ThresholdSampler(eos_fill=True).sample(FixedDenoiser(logits), prompt=prompt)


def test_attention_mask_reaches_the_denoiser_for_the_active_rows_only():
    logits = torch.zeros(4, 3)
    logits[:, 0] = 5.0
    denoiser = FixedDenoiser(logits)
    prompt = torch.full((2, 4), 3)
    prompt[1, :3] = 0  # row 1 has a single masked position: it finishes after one pass
    attention = torch.tensor([[True, True, True, True], [False, True, True, True]])
    out = ThresholdSampler(tau=0.99).sample(denoiser, prompt=prompt, attention_mask=attention)
    assert out.nfe_per_row.tolist() == [4, 1]
    assert torch.equal(denoiser.attention_masks[0], attention)
    assert all(torch.equal(m, attention[:1]) for m in denoiser.attention_masks[1:])
    denoiser.attention_masks.clear()
    ThresholdSampler(tau=0.99).sample(denoiser, prompt=prompt)
    assert denoiser.attention_masks and all(m is None for m in denoiser.attention_masks)


def test_bad_options_name_the_valid_ones():
    with pytest.raises(ValueError, match="rule must be one of"):
        ThresholdSampler(rule="margin")
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        EBSampler(gamma=-1)
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        ThresholdSampler(block_size=0)
    with pytest.raises(ValueError, match="rule must be one of"):
        EntropyThresholdSampler(rule="margin")


def test_certainty_student_takes_the_confidence_rule_and_keeps_its_default():
    logits = torch.log(torch.tensor([[[0.9, 0.1], [0.6, 0.4], [0.5, 0.5]]]))  # entropies 0.325, 0.673, 0.693
    masked = torch.ones(1, 3, dtype=torch.bool)
    default = EntropyThresholdSampler(threshold=0.68, temperature=0).select(logits, masked)
    assert default.tolist() == [[True, True, False]]  # entropy < threshold
    confident = EntropyThresholdSampler(threshold=0.6, temperature=0, rule="confidence")
    assert confident.select(logits, masked).tolist() == [[True, True, False]]
    assert confident.config["rule"] == "confidence"


def chi_square(tokens: Tensor, source: HiddenMarkovSource) -> float:
    seqs = all_sequences(source.vocab_size, source.seq_len)
    expected = source.log_prob(seqs).exp() * tokens.shape[0]
    weights = source.vocab_size ** torch.arange(source.seq_len - 1, -1, -1)
    observed = torch.bincount((tokens * weights).sum(1), minlength=len(seqs)).double()
    return ((observed - expected) ** 2 / expected).sum().item()


@pytest.mark.parametrize("sampler", [EBSampler(gamma=0.0), ThresholdSampler(tau=1.5),
                                     ThresholdSampler(tau=0.0, rule="entropy")], ids=lambda s: f"{s.name}")
def test_exact_on_the_oracle_at_one_token_per_step(sampler):
    """Chi-square test of the full joint over 3^4 = 81 sequences (fixed seed), as for the fixed-step samplers."""
    source = HiddenMarkovSource.random(SourceConfig(seed=4, hidden_states=3, vocab_size=3, seq_len=4, successors=2, smoothing=0.1))
    out = sampler.sample(OracleDenoiser(source), batch_size=40_000, seq_len=4, generator=torch.Generator().manual_seed(0))
    assert out.nfe == 4  # one token per step
    assert chi_square(out.tokens, source) < 130  # 80 degrees of freedom: the 0.999 quantile is 124.8


def test_fewstep_eval_records_nfe_per_row(tmp_path):
    proc = subprocess.run(["fewstep-eval", "teacher=oracle", "data=hmm", "data.hidden_states=4", "data.vocab_size=8",
                           "data.seq_len=8", "sampler=eb", "sampler.gamma=1.5", "eval.num_samples=60",
                           f"hydra.run.dir={tmp_path}"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((tmp_path / "metrics.json").read_text())["rows"][0]
    per_row = load_file(tmp_path / "samples.safetensors")["eb/steps=8/nfe"]
    assert row["sampler"] == "eb" and row["steps"] == 8 and per_row.shape == (60,)
    assert row["nfe"] == pytest.approx(per_row.mean().item()) and row["nfe"] < 8
    assert ((1 <= per_row) & (per_row <= 8)).all() and len(set(per_row.tolist())) > 1


def test_entropy_rule_of_the_certainty_student_is_strict():
    sure = -torch.tensor([[0.5, 0.25, 0.75]])  # minus the entropies
    candidates = torch.ones(1, 3, dtype=torch.bool)
    assert threshold_set(sure, candidates, 0.5, "entropy").tolist() == [[True, True, False]]
    assert threshold_set(sure, candidates, 0.5, "entropy", strict=True).tolist() == [[False, True, False]]
    assert threshold_set(sure, candidates, 0.2, "entropy", strict=True).tolist() == [[False, True, False]]  # the best


def test_certainty_student_eos_fill_uses_the_denoisers_end_token_and_is_saved(tmp_path):
    import students

    neg = -1e4
    logits = torch.zeros(8, 5)
    logits[:, 4] = neg  # end token 4 unlikely (entropy ln 4 elsewhere)...
    logits[2] = torch.tensor([neg, neg, neg, neg, 0.0])  # ...except at position 2, where it is certain
    prompt = torch.full((1, 8), 5)
    prompt[0, 0] = 1
    on = EntropyThresholdSampler(threshold=0.1, eos_fill=True).sample(FixedDenoiser(logits, eos_id=4), prompt=prompt)
    assert on.tokens[0, 2:].tolist() == [4] * 6 and on.nfe == 2  # step 1: position 2, filled to the end; step 2: 1
    off = EntropyThresholdSampler(threshold=0.1).sample(FixedDenoiser(logits, eos_id=4), prompt=prompt)
    assert off.nfe == 7 and off.tokens[0, 3:].tolist() == [0] * 5  # the model decides: argmax 0, one per step
    own = EntropyThresholdSampler(threshold=0.1, eos_id=4).sample(FixedDenoiser(logits), prompt=prompt)
    assert torch.equal(own.tokens, on.tokens) and own.nfe == 2  # its own end token always fills
    with pytest.raises(ValueError, match="eos_fill=true needs a denoiser with an end token"):
        EntropyThresholdSampler(eos_fill=True).sample(FixedDenoiser(logits), prompt=prompt)
    student = EntropyThresholdSampler(threshold=0.1, eos_fill=True,
                                      denoiser={"vocab_size": 5, "seq_len": 8, "n_layer": 1, "d_model": 8, "n_head": 2})
    assert student.config["eos_fill"] is True and EntropyThresholdSampler(**student.config).eos_fill
    students.save_student(student, tmp_path / "student", teacher={"kind": "oracle"})
    assert students.load(tmp_path / "student").eos_fill is True
