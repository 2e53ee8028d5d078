"""The chunk head (students.ChunkHeadSampler) and its objective (distill.objectives.chunk_head)."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch

import students
from distill.data.sources import SourceDataModule
from distill.objectives.chunk_head import ChunkHeadObjective, revealed_positions
from distill.objectives.joint_head import teacher_trajectory
from distill.objectives.losses import forward_kl
from students import ChunkHeadSampler
from teachers import BlockwiseSampler, DilatedSampler, HiddenMarkovSource, OracleDenoiser, SourceConfig, TransformerDenoiser
from tests.test_adaptive_samplers import chi_square


def tiny_data() -> SourceDataModule:
    return SourceDataModule(vocab_size=6, hidden_states=6, seq_len=8, batch_size=32, val_size=64)


def tiny_transformer() -> TransformerDenoiser:
    torch.manual_seed(0)
    return TransformerDenoiser(6, 8, n_layer=1, n_head=2, d_model=16).eval()


def randomised(sampler: ChunkHeadSampler) -> ChunkHeadSampler:
    """A head that is not the identity (as after training)."""
    torch.manual_seed(1)
    for p in sampler.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return sampler


def objective_for(teacher, tokens_per_forward: int = 4, trajectory_temperature: float | None = None,
                  **student) -> ChunkHeadObjective:
    return ChunkHeadObjective(student=ChunkHeadSampler(tokens_per_forward, width=16, n_head=2, **student),
                              teacher=teacher, optimizer=partial(torch.optim.AdamW, lr=3e-3), vocab_size=6, seq_len=8,
                              val_samples=0, trajectory_temperature=trajectory_temperature)


@pytest.mark.parametrize("make_teacher", [lambda: OracleDenoiser(tiny_data().source), tiny_transformer],
                         ids=["oracle", "transformer"])
def test_untrained_head_is_the_dilated_sampler_at_the_same_forwards(make_teacher):
    teacher = make_teacher()
    for K, steps in [(1, 8), (3, 3), (4, 2)]:  # ceil(8 / K) full forwards
        head = ChunkHeadSampler(K, width=8, n_head=2, temperature=0).resolve(teacher, 8)
        out = head.sample(teacher, batch_size=40, seq_len=8, generator=torch.Generator().manual_seed(0))
        ref = DilatedSampler(temperature=0).sample(teacher, steps, batch_size=40, seq_len=8)
        assert torch.equal(out.tokens, ref.tokens) and (out.nfe, out.head_passes) == (steps, 8)
    hidden = torch.randn(2, 4, head.hidden_size)
    embedded, positions = torch.randn(2, 4, head.embed_size), torch.tensor([[0, 4, 2, 6]] * 2)
    assert torch.equal(head.head(hidden, embedded, positions), hidden)  # zero-initialised: the teacher's own states
    moved = randomised(ChunkHeadSampler(4, width=8, n_head=2).resolve(teacher, 8))
    assert not torch.allclose(moved.head(hidden, embedded, positions), hidden, atol=1e-3)  # the comparison can fail


def test_parallel_passes_equal_the_cached_passes_and_are_causal():
    head = randomised(ChunkHeadSampler(3, width=8, n_head=2).resolve(OracleDenoiser(tiny_data().source), 8)).head
    hidden, embedded = torch.randn(4, 3, 6), torch.randn(4, 3, 6)
    positions = torch.tensor([[0, 4, 2], [1, 5, 3], [0, 4, 2], [7, 3, 5]])
    parallel = head(hidden, embedded, positions)
    cache, cached = head.start(hidden, positions), []
    for m in range(3):
        cached.append(head.query(cache, m))
        head.add_token(cache, m, embedded[:, m])
    assert torch.allclose(parallel, torch.stack(cached, 1), atol=1e-5)
    changed = embedded.clone()
    changed[:, 1] = torch.randn(4, 6)  # the token drawn at pass 1 is seen by pass 2 only
    again = head(hidden, changed, positions)
    assert torch.allclose(again[:, :2], parallel[:, :2], atol=1e-6) and not torch.allclose(again[:, 2], parallel[:, 2])


def test_passes_reveal_one_token_each_in_the_dilated_order():
    teacher = OracleDenoiser(tiny_data().source)
    head = randomised(ChunkHeadSampler(4, width=8, n_head=2).resolve(teacher, 8))
    out = head.sample(teacher, batch_size=4, seq_len=8, generator=torch.Generator().manual_seed(0), return_trace=True)
    states = [torch.full((4, 8), teacher.mask_id)] + out.trace
    order = [int((b != a).nonzero()[0, 1]) for a, b in zip(states, states[1:])]
    assert order == [0, 4, 2, 6, 1, 5, 3, 7] and (out.nfe, out.head_passes) == (2, 8)
    for before, after in zip(states, states[1:]):
        assert torch.equal((before != after).sum(-1), torch.ones(4, dtype=torch.long))
    # a prompt: kept, every mask filled, at most one token per row per pass
    prompt = torch.full((2, 8), teacher.mask_id)
    prompt[1, :3] = torch.tensor([0, 1, 2])
    out = head.sample(teacher, prompt=prompt, generator=torch.Generator().manual_seed(0), return_trace=True)
    assert torch.equal(out.tokens[1, :3], prompt[1, :3]) and not (out.tokens == teacher.mask_id).any()
    for before, after in zip([prompt] + out.trace, out.trace):
        assert ((before != after).sum(-1) <= 1).all()


def test_left_to_right_head_writes_a_prompted_answer_in_order_and_untrained_is_the_blockwise_sampler():
    teacher = tiny_transformer()
    prompt = torch.full((3, 8), teacher.mask_id)
    prompt[:, :2] = torch.tensor([[0, 1], [2, 3], [4, 5]])
    for K, steps in [(1, 6), (3, 2), (6, 1)]:  # ceil(6 answer tokens / K) full forwards
        head = ChunkHeadSampler(K, width=8, n_head=2, reveal="left_to_right", temperature=0).resolve(teacher, 8)
        out = head.sample(teacher, prompt=prompt, generator=torch.Generator().manual_seed(0))
        ref = BlockwiseSampler(temperature=0, block_size=8).sample(teacher, steps, prompt=prompt)
        assert torch.equal(out.tokens, ref.tokens) and (out.nfe, out.head_passes) == (steps, 6)
    moved = randomised(ChunkHeadSampler(3, width=8, n_head=2, reveal="left_to_right").resolve(teacher, 8))
    out = moved.sample(teacher, prompt=prompt, generator=torch.Generator().manual_seed(0), return_trace=True)
    states = [prompt] + out.trace
    order = [int((b != a).nonzero()[0, 1]) for a, b in zip(states, states[1:])]
    assert order == [2, 3, 4, 5, 6, 7] and torch.equal(out.tokens[:, :2], prompt[:, :2])
    for before, after in zip(states, states[1:]):
        assert torch.equal((before != after).sum(-1), torch.ones(3, dtype=torch.long))


def test_sampling_passes_see_what_training_shows_the_head_with_absolute_positions():
    """Each pass's logits when sampling equal the training-time (parallel) head's on the same forward's hidden
    states and the drawn tokens' embeddings, which carry absolute positions here."""
    torch.manual_seed(0)
    teacher = TransformerDenoiser(6, 8, n_layer=1, n_head=2, d_model=16, absolute_positions=True).eval()
    torch.nn.init.normal_(teacher.pos_emb.weight, std=2.0)  # positions that matter, as after training
    head = randomised(ChunkHeadSampler(6, width=8, n_head=2, reveal="left_to_right").resolve(teacher, 8))
    prompt = torch.full((16, 8), teacher.mask_id)
    prompt[:, :2] = torch.randint(6, (16, 2), generator=torch.Generator().manual_seed(3))
    lm_head, passes = teacher.lm_head, []
    teacher.lm_head = lambda hidden: passes.append(lm_head(hidden)) or passes[-1]  # records every pass's logits
    out = head.sample(teacher, prompt=prompt, generator=torch.Generator().manual_seed(0))
    teacher.lm_head = lm_head
    positions = torch.arange(2, 8).expand(16, -1)
    with torch.no_grad():
        hidden = teacher.hidden_states(prompt)[:, 2:]
        parallel = teacher.lm_head(head.head(hidden, teacher.embed(out.tokens)[:, 2:], positions))
    assert out.nfe == 1 and len(passes) == 6
    assert torch.allclose(torch.cat(passes, 1), parallel, atol=1e-5)


def test_deterministic_under_a_generator_and_exact_at_one_token_per_forward():
    source = HiddenMarkovSource.random(SourceConfig(seed=4, hidden_states=3, vocab_size=3, seq_len=4, successors=2,
                                                    smoothing=0.1))
    teacher = OracleDenoiser(source)
    head = ChunkHeadSampler(1, width=8, n_head=2).resolve(teacher, 4)  # untrained: the exact sampler
    out = head.sample(teacher, batch_size=40_000, seq_len=4, generator=torch.Generator().manual_seed(0))
    assert out.nfe == 4 and chi_square(out.tokens, source) < 130  # 80 degrees of freedom: 0.999 quantile 124.8
    moved = randomised(ChunkHeadSampler(2, width=8, n_head=2).resolve(teacher, 4))
    a, b = (moved.sample(teacher, batch_size=64, seq_len=4, generator=torch.Generator().manual_seed(5)) for _ in "ab")
    assert torch.equal(a.tokens, b.tokens)


def test_only_a_fixed_order_and_an_unshifted_model():
    with pytest.raises(ValueError, match=r"student.reveal must be one of \('dilated', 'left_to_right'\).*student=joint_head"):
        ChunkHeadSampler(4, reveal="neg_entropy")
    shifted = tiny_transformer()
    shifted.shift_logits = True
    with pytest.raises(ValueError, match="shifts its logits.*student=joint_head"):
        ChunkHeadSampler(4, width=8, n_head=2).resolve(shifted, 8)


def test_loss_is_forward_kl_at_each_revealed_position_recomputed_by_hand():
    teacher = tiny_transformer()
    objective = objective_for(teacher, tokens_per_forward=3)
    randomised(objective.student)
    batch = next(iter(tiny_data().train_dataloader()))
    loss, _ = objective.loss(batch, torch.Generator().manual_seed(0))
    canvas = torch.full_like(batch["tokens"], teacher.mask_id)
    path = teacher_trajectory(teacher, canvas, objective.student.rule, torch.Generator().manual_seed(0))
    positions, valid = revealed_positions(path["states"], path["final"], teacher.mask_id)
    assert valid.all() and positions[0].tolist() == [0, 4, 2, 6, 1, 5, 3, 7]
    kl, n = 0.0, 0
    for s in range(0, 8, 3):  # chunks of K = 3 over T = 8 steps: 3, 3, 2
        pos = positions[:, s:s + 3]
        rows = torch.arange(canvas.shape[0])[:, None]
        out = objective.student.head(path["hidden"][s][rows, pos], teacher.embed(path["final"])[rows, pos], pos)
        for m in range(pos.shape[1]):
            target = teacher.lm_head(path["hidden"][s + m])[rows[:, 0], pos[:, m]]
            kl = kl + forward_kl(target, teacher.lm_head(out[:, m:m + 1])[:, 0]).sum()
            n += canvas.shape[0]
    assert torch.allclose(loss, kl / n, atol=1e-6) and loss > 0


def fit(objective, datamodule, steps: int) -> None:
    L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0, accelerator="cpu").fit(objective, datamodule=datamodule)


def test_training_lowers_the_loss_and_never_touches_the_teacher(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        datamodule = tiny_data()
        teacher = tiny_transformer()
        before = {k: v.clone() for k, v in teacher.state_dict().items()}
        objective = objective_for(teacher)
        batch = next(iter(datamodule.val_dataloader()))
        start = objective.loss(batch, torch.Generator().manual_seed(0))[0]
        fit(objective, datamodule, 60)
        end = objective.loss(batch, torch.Generator().manual_seed(0))[0]
    finally:
        torch.set_num_threads(threads)
    assert end < 0.7 * start
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not any(p.requires_grad for p in teacher.parameters())
    objective.export(str(tmp_path / "export"))
    loaded = students.load(tmp_path / "export")
    assert isinstance(loaded, ChunkHeadSampler) and loaded.config == objective.student.config
    a = objective.student.eval().sample(teacher, batch_size=32, seq_len=8, generator=torch.Generator().manual_seed(7))
    b = loaded.sample(teacher, batch_size=32, seq_len=8, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.tokens, b.tokens) and (b.nfe, b.head_passes) == (2, 8)
    argmax = students.load(tmp_path / "export", temperature=0)  # sampler=saved sampler.temperature=0
    assert argmax.temperature == 0 and argmax.rule.temperature == 0 and loaded.temperature == 1
    c, d = (argmax.sample(teacher, batch_size=32, seq_len=8, generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    assert torch.equal(c.tokens, d.tokens)  # argmax: the generator does not matter
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        students.load(tmp_path / "export", temperature=-1)


def test_trajectory_temperature_draws_the_training_states_not_the_student():
    teacher = tiny_transformer()
    objective = objective_for(teacher, temperature=0.0, trajectory_temperature=1.0)
    assert objective.trajectory_rule.temperature == 1.0 and objective.student.rule.temperature == 0.0
    canvas = torch.full((64, 8), teacher.mask_id)
    sampled = [teacher_trajectory(teacher, canvas, objective.trajectory_rule, torch.Generator().manual_seed(s))["final"]
               for s in (0, 1)]
    argmax = teacher_trajectory(teacher, canvas, objective.student.rule, torch.Generator().manual_seed(0))["final"]
    assert not torch.equal(sampled[0], sampled[1]) and (argmax == argmax[0]).all()  # argmax: one trajectory
    plain = objective_for(teacher, temperature=0.0)
    assert plain.trajectory_rule is plain.student.rule  # null: the student's own draws
    with pytest.raises(ValueError, match="trajectory_temperature must be >= 0"):
        objective_for(teacher, trajectory_temperature=-0.5)
