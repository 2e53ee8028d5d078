"""Trajectory distillation: states read back from the teacher's recorded reveal order are its real
decoding states, the jump curriculum, the stop-gradient consistency target, the frozen teacher, and
a tiny run end to end (train, export, load, sample)."""

from __future__ import annotations

import json
import subprocess
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import students
from distill.data.self_generated import (SelfGeneratedDataModule, decode_trajectories, generate, to_reveal_steps,
                                         to_tokens)
from distill.objectives.trajectory import TrajectoryObjective, consistency_kl, jump_size, trajectory_states
from teachers import BlockwiseSampler, TransformerDenoiser, save_teacher
from teachers.saved import load_teacher
from teachers.sources.paths import PROMPT_LEN

PATHS = dict(nodes=6, successors=2, answer_len=4, graph_seed=1, heldout_fraction=0.25, val_fraction=0.15)


@pytest.fixture
def tiny_teacher(tmp_path):
    torch.manual_seed(0)
    net = TransformerDenoiser(vocab_size=6, seq_len=6, n_layer=1, d_model=16, n_head=2, absolute_positions=True)
    save_teacher(net, tmp_path / "teacher", data={"kind": "paths", "nodes": 6})
    return load_teacher(tmp_path / "teacher")


def canvases_of(prompts: torch.Tensor, n: int, mask_id: int) -> torch.Tensor:
    return torch.cat([prompts, torch.full((len(prompts), n), mask_id)], dim=1)


# --- trajectories ---------------------------------------------------------------------------------
def test_recorded_reveal_steps_rebuild_every_state_of_the_teachers_decoding(tiny_teacher):
    sampler = BlockwiseSampler(temperature=0.0, order="confidence")
    prompts = torch.randint(6, (40, PROMPT_LEN), generator=torch.Generator().manual_seed(0))
    canvas = canvases_of(prompts, 4, tiny_teacher.mask_id)
    canvas[:10, PROMPT_LEN] = 3  # some rows start with a shown answer token (prefix prompts)
    canvas[:10, PROMPT_LEN + 2:] = tiny_teacher.mask_id
    tokens, reveal = decode_trajectories(tiny_teacher, canvas[10:], 4, sampler)
    prefixed_tokens, prefixed_reveal = decode_trajectories(tiny_teacher, canvas[:10], 3, sampler)
    trace = sampler.sample(tiny_teacher, 4, prompt=canvas[10:], return_trace=True).trace
    assert torch.equal(trace[-1], tokens)
    assert (reveal[:, :PROMPT_LEN] == -1).all() and (prefixed_reveal[:, :PROMPT_LEN + 1] == -1).all()
    assert all(sorted(r) == [0, 1, 2, 3] for r in reveal[:, PROMPT_LEN:].tolist())  # one token per step
    assert all(sorted(r) == [0, 1, 2] for r in prefixed_reveal[:, PROMPT_LEN + 1:].tolist())
    previous = torch.zeros_like(tokens, dtype=torch.bool)
    for t in range(5):  # the state after t steps: positions revealed before step t shown, the rest masked
        state = torch.where(reveal >= t, tiny_teacher.mask_id, tokens)
        expected = canvas[10:] if t == 0 else trace[t - 1]
        assert torch.equal(state, expected)
        shown = state != tiny_teacher.mask_id
        if t:  # each state's revealed set is a superset of the previous one, by one token
            assert (shown >= previous).all() and (shown.sum(-1) == previous.sum(-1) + 1).all()
        previous = shown


def test_training_states_are_real_prefixes_of_the_trajectory_and_targets_the_next_k_steps():
    reveal = torch.tensor([[-1, -1, 2, 0, 3, 1], [-1, -1, -1, 1, 0, -1]])  # second row: a prefix prompt, 2 steps
    seen = set()
    for seed in range(200):
        t, k, masked = trajectory_states(reveal, 3, torch.Generator().manual_seed(seed))
        assert torch.equal(masked, reveal >= t[:, None])
        assert 0 <= t[0] < 4 and 0 <= t[1] < 2 and (1 <= k).all() and (k <= 3).all()
        window = masked & (reveal < (t + k)[:, None])
        assert ((reveal[window] >= t.repeat_interleave(window.sum(-1))).all())
        assert int(window[0].sum()) == min(int(k[0]), 4 - int(t[0]))  # one position per teacher step
        seen.add((int(t[0]), int(k[0])))
    assert seen == {(t, k) for t in range(4) for k in range(1, 4)}  # every state and jump is drawn


def test_data_module_batches_carry_the_trajectory_and_prefixes_are_never_targets():
    from tests.test_certainty import WalkTeacher  # completes any prefix with a valid walk

    dm = SelfGeneratedDataModule(teacher_path="unused", batch_size=40, prefix_draws=3, prefix_fraction=0.25,
                                 trajectory=True, **PATHS)
    dm.data, counts = generate(WalkTeacher(dm), dm.task, dm.pairs, BlockwiseSampler(temperature=0.0, order="confidence"),
                               prefix_draws=3, trajectory=True)
    assert counts["train"]["kept"] > 0 and counts["train_prefixed"]["kept"] > 0
    prefix_len = torch.tensor(dm.data["train_prefixed"]["prefix_len"])
    shown = (to_reveal_steps(dm.data["train_prefixed"])[:, PROMPT_LEN:] == -1).sum(-1)
    assert torch.equal(shown, prefix_len)  # the prefix is given, the rest is the teacher's trajectory
    whole = {tuple(r) + tuple(s) for r, s in zip(to_tokens(dm.data["train"]).tolist(),
                                                  to_reveal_steps(dm.data["train"]).tolist())}
    prefixed = {tuple(r) + tuple(s) for r, s in zip(to_tokens(dm.data["train_prefixed"]).tolist(),
                                                     to_reveal_steps(dm.data["train_prefixed"]).tolist())}
    batch = next(iter(dm.train_dataloader()))
    assert batch["reveal_step"].shape == batch["tokens"].shape == (40, 6)
    assert torch.equal(batch["answer_mask"], batch["reveal_step"] >= 0)
    rows = [tuple(r) + tuple(s) for r, s in zip(batch["tokens"].tolist(), batch["reveal_step"].tolist())]
    plain = (batch["reveal_step"][:, PROMPT_LEN:] >= 0).all(-1)
    assert int((~plain).sum()) == 10 and all(r in whole for r, p in zip(rows, plain) if p)
    assert all(r in prefixed for r, p in zip(rows, plain) if not p)
    val = next(iter(dm.val_dataloader()))
    assert torch.equal(val["reveal_step"], to_reveal_steps(dm.data["validation"])[:40])


# --- curriculum and consistency -------------------------------------------------------------------
def test_curriculum_jump_grows_linearly_from_start_to_end():
    assert [jump_size(s, 1, 16, 300) for s in (0, 20, 100, 150, 300, 5000)] == [1, 2, 6, 8, 16, 16]
    assert jump_size(0, 1, 16, 0) == 16 and jump_size(7, 4, 4, 100) == 4
    draws = trajectory_states(torch.arange(-1, 15).expand(4000, -1), jump_size(100, 1, 16, 300),
                              torch.Generator().manual_seed(0))[1]
    assert draws.min() == 1 and draws.max() == 6  # k ~ U{1..K}: short jumps keep being seen


def test_consistency_kl_matches_the_formula_and_stops_the_gradient_at_the_target():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=gen, requires_grad=True)
    target = torch.randn(2, 3, 5, generator=gen, requires_grad=True)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    kl = consistency_kl(logits, target, mask)
    p, log_q = F.softmax(target, -1), F.log_softmax(logits, -1)
    expected = (p * (p.log() - log_q)).sum(-1)[mask].mean()
    assert kl.item() == pytest.approx(expected.item(), rel=1e-5)
    kl.backward()
    assert target.grad is None and logits.grad.abs().sum() > 0  # stop-gradient: only the earlier state learns
    assert logits.grad[~mask].abs().max() == 0
    assert consistency_kl(logits, target, torch.zeros_like(mask)).item() == 0


def make_objective(teacher, **kwargs) -> TrajectoryObjective:
    return TrajectoryObjective({"_target_": "students.EntropyThresholdSampler", "block_size": 32}, teacher,
                               optimizer=partial(torch.optim.SGD, lr=0.1), vocab_size=6, seq_len=6, **kwargs)


def trajectory_batch(teacher):
    prompts = torch.randint(6, (16, PROMPT_LEN), generator=torch.Generator().manual_seed(1))
    tokens, reveal = decode_trajectories(teacher, canvases_of(prompts, 4, teacher.mask_id), 4,
                                         BlockwiseSampler(temperature=0.0, order="confidence"))
    return {"tokens": tokens, "reveal_step": reveal, "answer_mask": reveal >= 0}


def test_consistency_term_is_added_with_its_weight_and_its_target_takes_no_gradient(tiny_teacher):
    objective = make_objective(tiny_teacher, consistency=0.5, ramp_steps=0, jump_end=2)
    batch = trajectory_batch(tiny_teacher)
    loss, values = objective.loss(batch, torch.Generator().manual_seed(0))
    assert values["consistency"] > 0
    plain = make_objective(tiny_teacher, consistency=0.0, ramp_steps=0, jump_end=2)
    plain.student.load_state_dict(objective.student.state_dict())
    base, plain_values = plain.loss(batch, torch.Generator().manual_seed(0))  # same states drawn
    assert "consistency" not in plain_values
    assert loss.item() == pytest.approx(base.item() + 0.5 * values["consistency"].item(), rel=1e-5)
    # the gradient equals that of the same loss against a constant target computed beforehand
    t, k, masked = trajectory_states(batch["reveal_step"], 2, torch.Generator().manual_seed(0))
    later = batch["reveal_step"] >= (t + k)[:, None]
    net = objective.student.denoiser
    target = net(torch.where(later, tiny_teacher.mask_id, batch["tokens"])).detach()
    objective.student.zero_grad()
    loss.backward()
    got = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    plain.student.denoiser.zero_grad()
    logits = net(torch.where(masked, tiny_teacher.mask_id, batch["tokens"]))
    from distill.objectives.certainty import certainty_loss

    window = masked & (batch["reveal_step"] < (t + k)[:, None])
    manual = certainty_loss(logits, batch["tokens"], window, objective.beta, objective.tau).loss
    (manual + 0.5 * consistency_kl(logits, target, later)).backward()
    for g, p in zip(got, net.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-6)


def test_teacher_is_never_trained_nor_in_a_checkpoint(tiny_teacher):
    objective = make_objective(tiny_teacher, consistency=0.5)
    before = {k: v.clone() for k, v in tiny_teacher.state_dict().items()}
    assert not any(p.requires_grad for p in tiny_teacher.parameters()) and not tiny_teacher.training
    assert not any(k.startswith("teacher") for k in objective.state_dict())
    teacher_ids = {id(p) for p in tiny_teacher.parameters()}
    trainable = [p for p in objective.student.parameters() if p.requires_grad]
    assert trainable and not teacher_ids & {id(p) for p in trainable}
    optimizer = torch.optim.SGD(trainable, lr=1.0)
    loss, _ = objective.loss(trajectory_batch(tiny_teacher), torch.Generator().manual_seed(0))
    loss.backward()
    optimizer.step()
    assert all(torch.equal(v, tiny_teacher.state_dict()[k]) for k, v in before.items())
    student_state = objective.student.denoiser.state_dict()
    assert any(not torch.equal(student_state[k], v) for k, v in before.items())  # the student's copy did move
    assert "teacher" not in objective.hparams  # only its reference (path, SHA-256) is kept
    assert objective.hparams["teacher_ref"]["sha256"] == tiny_teacher.sha256


def test_bad_settings_are_named_before_any_work(tiny_teacher):
    with pytest.raises(ValueError, match="jump_start"):
        make_objective(tiny_teacher, jump_start=5, jump_end=2)
    with pytest.raises(ValueError, match="consistency"):
        make_objective(tiny_teacher, consistency=-1.0)
    with pytest.raises(ValueError, match="data.trajectory=true"):
        make_objective(tiny_teacher).loss({"tokens": torch.zeros(2, 6, dtype=torch.long),
                                           "answer_mask": torch.ones(2, 6, dtype=torch.bool)})


# --- console scripts end to end -----------------------------------------------------------------
TINY = ["data.nodes=6", "data.successors=2", "data.answer_len=4", "data.graph_seed=1"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_train_export_load_and_sample_a_trajectory_student_end_to_end(tmp_path):
    proc = run("fewstep-train", "experiment=teacher_paths", *TINY, "data.batch_size=64", "data.val_size=64",
               "objective.network.n_layer=1", "objective.network.d_model=32", "objective.network.n_head=2",
               "trainer.max_steps=150", "trainer.val_check_interval=150", "eval.after_training=false",
               "objective.val_samples=16", f"export_dir={tmp_path / 'teacher'}", f"hydra.run.dir={tmp_path / 'tr'}",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    teacher = tmp_path / "teacher"
    proc = run("fewstep-train", "experiment=trajectory_paths", f"teacher.path={teacher}", *TINY, "data.batch_size=16",
               f"data.cache_dir={tmp_path / 'cache'}", "data.prefix_draws=2", "data.val_prefix_draws=2",
               "trainer.max_steps=4", "trainer.val_check_interval=2", "objective.ramp_steps=4", "objective.jump_end=4",
               "objective.consistency=0.5", "objective.thresholds=[0.01,1.0]", "eval.num_samples=32",
               f"export_dir={tmp_path / 'student'}", f"hydra.run.dir={tmp_path / 'st'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((tmp_path / "student" / "sampler.json").read_text())
    assert meta["objective"] == "trajectory" and meta["method"] == "trajectory"
    assert meta["class"] == "EntropyThresholdSampler" and meta["self_generated_data"]["trajectory"] is True
    assert meta["config"]["threshold"] == meta["threshold_selection"]["chosen"] in (0.01, 1.0)
    student = students.load(tmp_path / "student")
    base = load_teacher(teacher)
    from distill.data.sources import PathsDataModule

    dm = PathsDataModule(nodes=6, successors=2, answer_len=4, graph_seed=1)
    canvas = canvases_of(dm.pairs["test"], 4, base.mask_id)
    out = student.sample(base, prompt=canvas)
    assert not (out.tokens == base.mask_id).any() and 1 <= out.nfe <= 4
    assert torch.equal(out.tokens[:, :PROMPT_LEN], dm.pairs["test"])
    again = students.load(tmp_path / "student").sample(base, prompt=canvas)
    assert torch.equal(again.tokens, out.tokens)  # deterministic, token for token after a reload
    out_dir = tmp_path / "eval"
    proc = run("fewstep-eval", "data=paths", *TINY, "teacher=saved", f"teacher.path={teacher}", "sampler=saved",
               f"sampler.path={tmp_path / 'student'}", "data.seed=3", "eval.num_samples=40", f"hydra.run.dir={out_dir}",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((out_dir / "metrics.json").read_text())["rows"][0]
    assert row["sampler"] == "trajectory" and 1 <= row["nfe"] <= 4 and 0 <= row["accuracy"] <= 1
