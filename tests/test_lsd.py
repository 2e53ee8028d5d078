"""The learned sampler (LSD / LSD+ / lsd_joint): identity init, valid grids, the race, the joint
KL estimator against an exact enumeration, short fits, and what checkpoints hold."""

from __future__ import annotations

import itertools
import math
from functools import partial

import lightning as L
import pytest
import torch

from distill.data.sources import SourceDataModule
from distill.apps.export import export_checkpoint
from distill.objectives.lsd import LSDObjective
from distill.objectives.lsd_joint import LSDJointObjective, joint_rollout
from students import LearnedSampler, RuleSampler, load
from students.reveal_rule import nearest_distance, race_select
from teachers import AncestralSampler, HiddenMarkovSource, OracleDenoiser, SourceConfig, TransformerDenoiser

from tests.conftest import all_sequences


def chain(vocab: int = 8, seq_len: int = 16, seed: int = 0) -> HiddenMarkovSource:
    return HiddenMarkovSource.random(SourceConfig(seed=seed, hidden_states=vocab, vocab_size=vocab, seq_len=seq_len))


def iid_source(vocab: int = 5, seq_len: int = 6) -> HiddenMarkovSource:
    """Independent tokens: every transition row equals the initial distribution."""
    initial = torch.softmax(torch.randn(vocab, generator=torch.Generator().manual_seed(0), dtype=torch.float64), 0)
    return HiddenMarkovSource(initial, initial.expand(vocab, vocab).clone(), torch.eye(vocab, dtype=torch.float64), seq_len)


@pytest.mark.parametrize("steps", [1, 3, 4, 8, 16])
def test_identity_init_is_the_ancestral_sampler_token_for_token(steps):
    oracle = OracleDenoiser(chain())
    kwargs = dict(batch_size=40, seq_len=16)
    expected = AncestralSampler().sample(oracle, steps, generator=torch.Generator().manual_seed(7), **kwargs)
    got = LearnedSampler(steps).sample(oracle, steps, generator=torch.Generator().manual_seed(7), **kwargs)
    assert torch.equal(got.tokens, expected.tokens) and got.nfe == expected.nfe == steps


def test_identity_init_matches_on_a_network_with_prompts():
    net = TransformerDenoiser(6, 10, n_layer=1, n_head=2, d_model=16).eval()
    prompt = torch.randint(0, 6, (12, 10), generator=torch.Generator().manual_seed(0))
    prompt[:, 3:] = net.mask_id
    a = AncestralSampler().sample(net, 7, prompt=prompt, generator=torch.Generator().manual_seed(1)).tokens
    b = LearnedSampler(7).sample(net, 7, prompt=prompt, generator=torch.Generator().manual_seed(1)).tokens
    assert torch.equal(a, b) and torch.equal(b[:, :3], prompt[:, :3])


@pytest.mark.parametrize("seed", range(5))
def test_grid_is_valid_for_any_parameters(seed):
    gen = torch.Generator().manual_seed(seed)
    steps = int(torch.randint(1, 12, (), generator=gen))
    sampler = LearnedSampler(steps)
    with torch.no_grad():
        sampler.grid_logits.copy_(torch.randn(steps, generator=gen) * 20)  # extreme fractions too
    n = torch.randint(steps, 60, (50,), generator=gen)
    for shift in (None, torch.rand(50, generator=gen)):
        counts, log_prob = sampler.counts(n, shift)
        assert (counts >= 1).all() and torch.equal(counts.sum(-1), n)
        assert (log_prob <= 1e-9).all()


def test_randomised_rounding_has_the_continuous_grid_as_its_mean():
    sampler = LearnedSampler(3)
    with torch.no_grad():
        sampler.grid_logits.copy_(torch.tensor([0.3, -0.5, 0.1]))
    n = torch.full((20000,), 20)
    bounds, log_prob = sampler.boundaries(n, torch.rand(20000, generator=torch.Generator().manual_seed(0)))
    fractions = torch.softmax(sampler.grid_logits.detach().double(), 0).cumsum(0)
    expected = torch.arange(1, 4) + (20 - 3) * fractions
    assert torch.allclose(bounds.double().mean(0), expected, atol=0.02)
    # the log-probability of each draw is the frequency of its boundary vector
    values, inverse, freq = bounds.unique(dim=0, return_inverse=True, return_counts=True)
    for j in range(len(values)):
        assert log_prob[inverse == j][0].exp().item() == pytest.approx(freq[j].item() / 20000, abs=0.01)


def test_too_many_steps_is_a_clear_error():
    with pytest.raises(ValueError, match="more than the 4 masked positions"):
        LearnedSampler(6).sample(OracleDenoiser(chain(seq_len=4)), batch_size=2, seq_len=4)
    with pytest.raises(ValueError, match="distilled for 6 steps, got steps=4"):
        LearnedSampler(6).check_steps(4)
    with pytest.raises(ValueError, match="unknown features"):
        RuleSampler({"nearby": -1.0})


def test_nearest_distance():
    marked = torch.tensor([[False, True, False, False, False, True], [False] * 6])
    dist = nearest_distance(marked)
    assert dist[0].tolist() == [1, 0, 1, 2, 1, 0] and torch.isinf(dist[1]).all()


def test_race_draws_ordered_picks_from_the_sequential_softmax():
    """Empirical frequencies of ordered picks equal exp(log_prob) of the race, utilities changing per pick."""
    n = 40000
    static = torch.tensor([0.5, -0.3, 0.0, 1.0]).expand(n, 4)
    weights = torch.tensor([-1.5, -2.0])  # near_chosen, adjacent_chosen
    masked = torch.ones(n, 4, dtype=torch.bool)
    k = torch.full((n,), 2)
    _, order, log_prob = race_select(static, weights, masked, k, torch.rand(n, 4, generator=torch.Generator().manual_seed(0)))
    for a, b in itertools.permutations(range(4), 2):
        hit = (order[:, 0] == a) & (order[:, 1] == b)
        # exact: first from softmax(static), then softmax(static + penalties near a) over the rest
        p1 = torch.softmax(static[0], 0)[a]
        second = static[0] + weights[0] / (torch.arange(4) - a).abs().clamp_min(1) + weights[1] * ((torch.arange(4) - a).abs() == 1)
        second[a] = -math.inf
        p = (p1 * torch.softmax(second, 0)[b]).item()
        assert hit.float().mean().item() == pytest.approx(p, abs=0.006)
        if hit.any():
            assert log_prob[hit][0].exp().item() == pytest.approx(p, rel=1e-4)


def test_joint_kl_is_zero_for_an_independent_teacher():
    oracle = OracleDenoiser(iid_source())
    rollout = joint_rollout(LearnedSampler(2), oracle, torch.full((64, 6), oracle.mask_id), torch.Generator().manual_seed(0), True)
    assert rollout["kl"].abs().max() < 1e-5


def test_joint_kl_estimate_is_unbiased_for_the_exact_kl():
    """One step revealing every token of a dependent chain: E[log q - log p] = KL(prod of marginals || joint)."""
    source = HiddenMarkovSource.random(SourceConfig(seed=5, hidden_states=3, vocab_size=3, seq_len=4, successors=2))
    oracle = OracleDenoiser(source)
    seqs = all_sequences(3, 4)
    p = source.log_prob(seqs).exp()
    marginals = source.conditionals(torch.full((1, 4), 3), torch.zeros(1, 4, dtype=torch.bool))[0]  # (L, V)
    q = marginals[torch.arange(4), seqs].prod(-1)
    exact = (q * (q.log() - p.log())).sum().item()
    assert exact > 0.05  # dependent: the factorized proposal is not the joint
    rollout = joint_rollout(LearnedSampler(1), oracle, torch.full((40000, 4), oracle.mask_id),
                            torch.Generator().manual_seed(0), False)
    kl = rollout["kl"][:, 0]
    assert kl.mean().item() == pytest.approx(exact, abs=4 * kl.std().item() / 200)


def make_objective(teacher, objective: type, learn: list[str], steps: int = 4):
    return objective(student=LearnedSampler(steps, learn=learn), teacher=teacher,
                     optimizer=partial(torch.optim.Adam, lr=0.1), vocab_size=teacher.vocab_size,
                     seq_len=16, val_samples=0)


def objective_value(objective, canvas) -> float:
    with torch.no_grad():
        return objective.loss({"tokens": canvas, "answer_mask": torch.ones_like(canvas, dtype=torch.bool)},
                              torch.Generator().manual_seed(123))[1]["objective"].item()


@pytest.mark.parametrize("objective_class, learn", [(LSDJointObjective, ["coefficient", "grid", "rule"]),
                                                     (LSDObjective, ["coefficient", "grid"])])
def test_a_short_fit_lowers_the_objective(objective_class, learn):
    """From a sharpened, skewed start (the identity is already the transition optimum on the oracle)."""
    oracle = OracleDenoiser(chain())
    objective = make_objective(oracle, objective_class, learn)
    with torch.no_grad():
        objective.student.log_coefficient.fill_(math.log(3.0))
        objective.student.grid_logits.copy_(torch.tensor([2.0, 0.0, 0.0, -1.0]))
    canvas = torch.zeros(512, 16, dtype=torch.long)
    before = objective_value(objective, canvas)
    optimizer = torch.optim.Adam([p for p in objective.student.parameters() if p.requires_grad], lr=0.1)
    torch.manual_seed(0)
    for _ in range(40):
        loss, _ = objective.loss({"tokens": canvas[:64], "answer_mask": torch.ones(64, 16, dtype=torch.bool)})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert objective_value(objective, canvas) < 0.9 * before


def test_transition_divergence_cannot_train_the_rule():
    with pytest.raises(ValueError, match="cannot train the reveal rule"):
        make_objective(OracleDenoiser(chain()), LSDObjective, ["coefficient", "rule"])


def test_teacher_frozen_and_absent_from_checkpoint_and_export_samples_identically(tmp_path):
    data = SourceDataModule(vocab_size=6, hidden_states=6, seq_len=8, batch_size=16, val_size=32)
    teacher = TransformerDenoiser(6, 8, n_layer=1, n_head=2, d_model=16)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    objective = LSDJointObjective(student=LearnedSampler(4), teacher=teacher, optimizer=partial(torch.optim.Adam, lr=0.1),
                                  vocab_size=6, seq_len=8, val_samples=0, data_spec=data.spec())
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_progress_bar=False, limit_val_batches=0,
                        default_root_dir=tmp_path, enable_model_summary=False)
    trainer.fit(objective, datamodule=data)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert all(not p.requires_grad for p in teacher.parameters())
    assert not (objective.student.rule_weights == 0).all()  # the student did train
    ckpt_path = tmp_path / "student.ckpt"
    trainer.save_checkpoint(ckpt_path)
    checkpoint = torch.load(ckpt_path, weights_only=True)
    assert sorted(checkpoint["state_dict"]) == ["student.grid_logits", "student.log_coefficient", "student.rule_weights"]
    with pytest.raises(ValueError, match="teacher of kind 'TransformerDenoiser' that fewstep-export cannot rebuild"):
        export_checkpoint(ckpt_path, tmp_path / "from_ckpt")  # a teacher that lives only in memory has no reference
    assert not (tmp_path / "from_ckpt").exists()
    objective.export(str(tmp_path / "export"))
    loaded = load(tmp_path / "export")
    assert loaded.teacher_ref["kind"] == "TransformerDenoiser" and loaded.method == "student"
    kwargs = dict(batch_size=20, seq_len=8)
    a = objective.student.sample(teacher, generator=torch.Generator().manual_seed(3), **kwargs).tokens
    b = loaded.sample(teacher, generator=torch.Generator().manual_seed(3), **kwargs).tokens
    assert torch.equal(a, b)
