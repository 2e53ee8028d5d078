"""SDTT rounds: the target's two half-steps against brute-force conditionals of a tiny source, the
frozen teacher, round boundaries (a frozen copy of the student becomes the target, steps halve),
the loss going down, and the exports (final and per round) round-tripping token for token."""

from __future__ import annotations

import hashlib
from functools import partial

import lightning as L
import pytest
import torch
import torch.nn.functional as F

import students
from distill.apps.export import export_checkpoint
from distill.data.sources import SourceDataModule
from distill.objectives.losses import masked_forward_kl, masked_reverse_kl
from distill.objectives.sdtt import SDTTForwardKLObjective, SDTTObjective, grid_states, sdtt_target
from teachers import OracleDenoiser, TransformerDenoiser, save_teacher
from teachers.samplers.base import reveal_counts
from teachers.saved import load_teacher
from tests.conftest import all_sequences, brute_force_prob

TINY = dict(seed=3, hidden_states=3, vocab_size=4, seq_len=8, successors=2, emissions_per_state=2, smoothing=0.05)


def conditional(source, xt: torch.Tensor, mask_id: int, j: int) -> torch.Tensor:
    """p(x_j | the revealed tokens of xt) by enumerating every sequence (V,)."""
    seqs = all_sequences(source.vocab_size, source.seq_len)
    probs = brute_force_prob(source, seqs)
    shown = xt != mask_id
    agree = (seqs[:, shown] == xt[shown]).all(-1)
    return torch.zeros(source.vocab_size, dtype=torch.float64).index_add_(0, seqs[agree, j], probs[agree]) / probs[agree].sum()


# --- the target ------------------------------------------------------------------------------------
def test_target_is_the_teachers_first_half_step_prediction_then_its_second(tiny_hmm):
    oracle = OracleDenoiser(tiny_hmm)  # exact conditionals: the target is checkable by enumeration
    mask_id = oracle.mask_id
    xt = torch.tensor([[mask_id, 2, mask_id, mask_id]] * 6)
    masked = xt == mask_id
    i = torch.ones(6, dtype=torch.long)  # the student's step 1 of 2 on 4 positions: 3 masked, then reveals 2
    target, first, x_mid = sdtt_target(oracle, xt, masked, torch.full((6,), 4), i, 2, torch.Generator().manual_seed(0))
    assert torch.equal(first.sum(-1), reveal_counts(torch.full((6,), 4), 2 * i, 4))  # the teacher's step 2 of 4: 1
    assert (first <= masked).all() and torch.equal(x_mid[~first], xt[~first]) and (x_mid[first] != mask_id).all()
    probs = target.double().softmax(-1)
    for b in range(6):
        for j in masked[b].nonzero().squeeze(1).tolist():
            state = xt[b] if first[b, j] else x_mid[b]  # S1: drawn from p(. | x_t); the rest: p(. | x_t, x_S1)
            assert torch.allclose(probs[b, j], conditional(tiny_hmm, state, mask_id, j), atol=1e-5)
    assert len({tuple(r) for r in first.int().tolist()}) > 1  # S1 is drawn, not fixed


class PairDenoiser(torch.nn.Module):
    """Exact conditionals of a two-token source: x0 ~ (0.8, 0.2), x1 copies x0 with probability 0.9."""

    vocab_size, mask_id = 2, 2

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        copy = lambda x: torch.where((x == 0)[..., None], torch.tensor([0.9, 0.1]), torch.tensor([0.1, 0.9]))  # noqa: E731
        p0 = torch.where((tokens[:, 1] == 2)[:, None], torch.tensor([0.8, 0.2]),  # p(x0) or p(x0 | x1) by Bayes
                         torch.where((tokens[:, 1] == 0)[:, None], torch.tensor([0.72, 0.02]) / 0.74,
                                     torch.tensor([0.08, 0.18]) / 0.26))
        p1 = torch.where((tokens[:, 0] == 2)[:, None], torch.tensor([0.74, 0.26]), copy(tokens[:, 0]))
        return torch.stack([p0, p1], 1).log()  # (B, 2, 2)


def test_hand_computed_target_its_mean_is_the_truth_and_reverse_kl_does_not_keep_it():
    """One student step over both positions, the teacher's two: S1 is one position drawn from p(. | nothing);
    the other's target is p(. | that draw). Its mean over draws is the exact marginal (forward KL's optimum:
    nothing to learn from an exact teacher); reverse KL's optimum is the normalised geometric mean,
    here sharper: for x1, exp(0.8 log(0.9, 0.1) + 0.2 log(0.1, 0.9)) normalised = (0.789, 0.211) against (0.74, 0.26)."""
    net, n = PairDenoiser(), 40000
    xt = torch.full((n, 2), 2)
    target, first, x_mid = sdtt_target(net, xt, xt == 2, torch.full((n,), 2), torch.zeros(n, dtype=torch.long), 1,
                                       torch.Generator().manual_seed(1))
    assert (first.sum(-1) == 1).all() and 0.45 < first[:, 0].double().mean() < 0.55
    probs = target.softmax(-1)
    x1_first = first[:, 1]
    assert torch.allclose(probs[x1_first, 1], torch.tensor([0.74, 0.26]), atol=1e-6)  # S1: p(x1)
    assert torch.allclose(probs[~x1_first, 1], net(x_mid[~x1_first]).exp()[:, 1], atol=1e-6)  # p(x1 | drawn x0)
    later = target[~x1_first, 1].double()
    assert torch.allclose(later.softmax(-1).mean(0), torch.tensor([0.74, 0.26], dtype=torch.float64), atol=0.01)
    geometric = later.log_softmax(-1).mean(0).softmax(-1)
    assert torch.allclose(geometric, torch.tensor([0.789, 0.211], dtype=torch.float64), atol=0.01)


@pytest.mark.parametrize("divergence, optimum", [
    (masked_reverse_kl, [0.476, 0.476, 0.048]),  # geometric mean sqrt(0.98 * 0.01) = 0.099, 0.099, 0.01, normalised
    (masked_forward_kl, [0.495, 0.495, 0.010]),  # the mean of the two targets
])
def test_the_optimum_against_sampled_targets_by_hand(divergence, optimum):
    """Two equally likely targets that rule out each other's favourite: reverse KL's optimum hedges on the
    token neither favours (flatter than their mean, which forward KL reaches)."""
    targets = torch.tensor([[0.98, 0.01, 0.01], [0.01, 0.98, 0.01]]).log()[:, None]  # (2, 1, 3)
    logits = torch.zeros(1, 1, 3, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=0.05)
    mask = torch.ones(2, 1, dtype=torch.bool)
    for _ in range(1500):
        optimizer.zero_grad()
        divergence(logits.expand(2, 1, 3), targets, mask).backward()
        optimizer.step()
    assert torch.allclose(logits.softmax(-1).flatten(), torch.tensor(optimum), atol=2e-3)


def test_grid_states_mask_what_the_m_step_sampler_has_left():
    answer = torch.ones(4000, 32, dtype=torch.bool)
    i, masked = grid_states(answer, 8, torch.Generator().manual_seed(0))
    assert set(i.tolist()) == set(range(8))
    assert torch.equal(masked.sum(-1), 32 - 4 * i)
    frequency = masked[i == 4].double().mean(0)  # a uniformly random set: every position as often
    assert (frequency - 0.5).abs().max() < 0.1


def test_reverse_and_forward_kl_match_the_formula():
    gen = torch.Generator().manual_seed(0)
    logits, target = torch.randn(2, 3, 5, generator=gen), torch.randn(2, 3, 5, generator=gen)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    q, p = F.softmax(logits, -1), F.softmax(target, -1)
    expected = (q * (q.log() - p.log())).sum(-1)[mask].mean()
    assert masked_reverse_kl(logits, target, mask).item() == pytest.approx(expected.item(), rel=1e-5)
    assert masked_reverse_kl(logits, target, torch.zeros_like(mask)).item() == 0
    forward = (p * (p.log() - q.log())).sum(-1)[mask].mean()
    assert masked_forward_kl(logits, target, mask).item() == pytest.approx(forward.item(), rel=1e-5)
    assert masked_forward_kl(logits, target, torch.zeros_like(mask)).item() == 0


# --- the objective -----------------------------------------------------------------------------------
@pytest.fixture
def tiny_teacher(tmp_path):
    torch.manual_seed(0)
    net = TransformerDenoiser(vocab_size=4, seq_len=8, n_layer=1, d_model=16, n_head=2)
    save_teacher(net, tmp_path / "teacher", data={"kind": "hidden_markov", **TINY})
    return load_teacher(tmp_path / "teacher")


def make_objective(teacher, cls=SDTTObjective, **kwargs) -> SDTTObjective:
    settings = dict(rounds=3, round_steps=3, optimizer=partial(torch.optim.Adam, lr=3e-3), vocab_size=4, seq_len=8,
                    val_samples=0, data_spec={"kind": "hidden_markov", **TINY})
    return cls({"_target_": "students.AncestralStudentSampler"}, teacher, **{**settings, **kwargs})


def test_round_boundary_freezes_a_copy_of_the_student_and_halves_the_steps(tiny_teacher):
    objective = make_objective(tiny_teacher)
    assert objective.target is tiny_teacher and (objective.student.steps, objective.target_steps) == (4, 8)
    with torch.no_grad():
        for p in objective.student.denoiser.parameters():
            p.add_(0.1)  # round 1's training moved the student
    objective.next_round()
    assert (objective.round, objective.student.steps, objective.target_steps) == (2, 2, 4)
    target, student = objective.target, objective.student.denoiser
    assert target is not tiny_teacher and not target.training
    assert not any(p.requires_grad for p in target.parameters())
    assert not {id(p) for p in target.parameters()} & {id(p) for p in student.parameters()}
    assert all(torch.equal(target.state_dict()[k], v) for k, v in student.state_dict().items())
    with torch.no_grad():
        next(student.parameters()).add_(1.0)  # training round 2 leaves round 2's target alone
    assert torch.equal(next(target.parameters()), objective.finished_states[0][next(iter(student.state_dict()))])
    assert objective.finished == [{"round": 1, "steps": 4, "target_steps": 8, "target": "teacher", "start_step": 0,
                                   "end_step": 0}]
    assert [objective.round_of(s) for s in (0, 2, 3, 5, 6, 8, 9, 100)] == [1, 1, 2, 2, 3, 3, 3, 3]
    with pytest.raises(ValueError, match="halved"):
        make_objective(tiny_teacher, rounds=4)  # 8 steps halve only three times
    with pytest.raises(ValueError, match="leave it null"):
        SDTTObjective({"_target_": "students.AncestralStudentSampler", "steps": 2}, tiny_teacher, rounds=1,
                      optimizer=None, vocab_size=4, seq_len=8)


@pytest.mark.parametrize("cls, divergence", [(SDTTObjective, masked_reverse_kl), (SDTTForwardKLObjective, masked_forward_kl)])
def test_loss_decreases_on_a_tiny_run(tiny_teacher, cls, divergence):
    objective = make_objective(tiny_teacher, cls, rounds=1)
    assert objective.divergence is divergence
    tokens = SourceDataModule(**TINY).source.sample(64, torch.Generator().manual_seed(0))
    batch = {"tokens": tokens, "answer_mask": torch.ones_like(tokens, dtype=torch.bool)}
    with torch.no_grad():  # a student moved away from its target (the random tiny teacher is nearly uniform)
        for p in objective.student.denoiser.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    optimizer = torch.optim.Adam(objective.student.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):  # the same states and targets every step: the student fits them
        loss, _ = objective.loss(batch, torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 0 and losses[-1] < 0.5 * losses[0]


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_rounds_in_one_fit_teacher_untouched_and_exports_round_trip(tiny_teacher, tmp_path):
    objective = make_objective(tiny_teacher)
    before = {k: v.clone() for k, v in tiny_teacher.state_dict().items()}
    trainer = L.Trainer(max_steps=9, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, accelerator="cpu", devices=1)
    trainer.fit(objective, datamodule=SourceDataModule(**TINY, batch_size=16, val_size=16))
    assert (objective.round, objective.student.steps, objective.target_steps) == (3, 1, 2)
    assert [r["end_step"] for r in objective.finished] == [3, 6]
    # the teacher: frozen, untouched, in no checkpoint and no optimizer
    assert all(torch.equal(v, tiny_teacher.state_dict()[k]) for k, v in before.items())
    assert not any(p.requires_grad for p in tiny_teacher.parameters())
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in objective.student.parameters()}
    trainer.save_checkpoint(tmp_path / "final.ckpt")
    checkpoint = torch.load(tmp_path / "final.ckpt", weights_only=True)
    assert all(k.startswith("student.") for k in checkpoint["state_dict"])
    saved = [checkpoint["state_dict"]] + checkpoint["sdtt"]["finished_states"]
    for state in checkpoint["sdtt"]["finished_states"]:  # each round trained: no stored network is the teacher's
        assert any(not torch.equal(state[k], v) for k, v in before.items())
    assert len(saved) == 3
    # export: the last round at DIR, every round under DIR/rounds; fewstep-export writes the same files
    objective.export(str(tmp_path / "export"))
    export_checkpoint(tmp_path / "final.ckpt", tmp_path / "again")
    names = ["model.safetensors"] + [f"rounds/round{r}/model.safetensors" for r in (1, 2, 3)]
    assert [digest(tmp_path / "export" / n) for n in names] == [digest(tmp_path / "again" / n) for n in names]
    canvas = torch.full((5, 8), tiny_teacher.mask_id)
    for r, steps in ((1, 4), (2, 2), (3, 1)):
        loaded = students.load(tmp_path / "export" / "rounds" / f"round{r}")
        assert loaded.steps == steps and loaded.method == f"student_round{r}"
        own = objective.round_student(r - 1) if r < 3 else objective.student.eval()
        for s in (steps, 4):
            a = loaded.sample(tiny_teacher, s, prompt=canvas, generator=torch.Generator().manual_seed(7))
            b = own.sample(tiny_teacher, s, prompt=canvas, generator=torch.Generator().manual_seed(7))
            assert torch.equal(a.tokens, b.tokens) and a.nfe == s and not (a.tokens == tiny_teacher.mask_id).any()
    final = students.load(tmp_path / "export")
    assert final.steps == 1 and digest(tmp_path / "export" / "model.safetensors") == digest(
        tmp_path / "export" / "rounds" / "round3" / "model.safetensors")
