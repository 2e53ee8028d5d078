"""The joint-sampling head (students.JointHeadSampler) and its objective (distill.objectives.joint_head)."""

from __future__ import annotations

import json
import subprocess
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from safetensors.torch import load_file

import students
from distill.apps.cli import CONF_DIR
from distill.data.sources import SourceDataModule
from distill.objectives.joint_head import JointHeadObjective
from distill.objectives.losses import forward_kl
from students import JointHeadSampler
from students.joint_head import JointHead
from teachers import ConfidenceSampler, DilatedSampler, HiddenMarkovSource, OracleDenoiser, SourceConfig, TransformerDenoiser, save_teacher

TINY_DATA = ["data.vocab_size=6", "data.seq_len=8", "data.batch_size=32", "data.val_size=64"]


def tiny_data() -> SourceDataModule:
    return SourceDataModule(vocab_size=6, hidden_states=6, seq_len=8, batch_size=32, val_size=64)


def tiny_transformer() -> TransformerDenoiser:
    torch.manual_seed(0)
    return TransformerDenoiser(6, 8, n_layer=1, n_head=2, d_model=16).eval()


def objective_for(teacher, tokens_per_forward: int = 4, **student) -> JointHeadObjective:
    return JointHeadObjective(student=JointHeadSampler(tokens_per_forward, n_head=2, **student), teacher=teacher,
                              optimizer=partial(torch.optim.AdamW, lr=3e-3), vocab_size=6, seq_len=8, val_samples=0)


def partly_masked(mask_id: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, mask_id, (5, 8), generator=g)
    return torch.where(torch.rand(5, 8, generator=g) < 0.6, mask_id, tokens)


def randomised(sampler: JointHeadSampler) -> JointHeadSampler:
    """A head that is not the identity (as after training)."""
    torch.manual_seed(1)
    for p in sampler.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return sampler


@pytest.mark.parametrize("make_teacher", [lambda: OracleDenoiser(tiny_data().source), tiny_transformer],
                         ids=["oracle", "transformer"])
def test_zero_initialised_head_reproduces_the_teacher_on_its_first_pass(make_teacher):
    teacher = make_teacher()
    tokens = partly_masked(teacher.mask_id)
    sampler = JointHeadSampler(4, n_head=2).resolve(teacher, 8)
    with torch.no_grad():
        _, logits = sampler.head_pass(teacher, tokens, teacher.hidden_states(tokens))
        assert torch.equal(logits, teacher(tokens))
        _, moved = randomised(JointHeadSampler(4, n_head=2).resolve(teacher, 8)).head_pass(
            teacher, tokens, teacher.hidden_states(tokens))
    assert not torch.allclose(moved, teacher(tokens), atol=1e-3)  # the comparison can fail
    # one pass per forward with the untrained head is the exact sampler, token for token
    exact = ConfidenceSampler(score="neg_entropy").sample(teacher, 8, batch_size=64, seq_len=8,
                                                          generator=torch.Generator().manual_seed(3))
    one = JointHeadSampler(1, n_head=2).resolve(teacher, 8).sample(teacher, batch_size=64, seq_len=8,
                                                                    generator=torch.Generator().manual_seed(3))
    assert torch.equal(one.tokens, exact.tokens) and one.nfe == 8 and one.head_passes == 8


def test_each_head_pass_reveals_exactly_one_token():
    teacher = OracleDenoiser(tiny_data().source)
    sampler = randomised(JointHeadSampler(3, n_head=2).resolve(teacher, 8))
    out = sampler.sample(teacher, batch_size=16, seq_len=8, generator=torch.Generator().manual_seed(0), return_trace=True)
    assert out.nfe == 3 and out.head_passes == 8 and len(out.trace) == 8  # ceil(8 / 3) forwards of 2, 3, 3 passes
    states = [torch.full((16, 8), teacher.mask_id)] + out.trace
    for before, after in zip(states, states[1:]):
        changed = before != after
        assert torch.equal(changed.sum(-1), torch.ones(16, dtype=torch.long))
        assert (before[changed] == teacher.mask_id).all()  # only masked positions are written
    assert not (out.tokens == teacher.mask_id).any()
    # a prompt with fewer masked positions in some rows: prompt kept, every mask filled, <= one per row per pass
    prompt = torch.full((2, 8), teacher.mask_id)
    prompt[1, :3] = torch.tensor([0, 1, 2])
    out = sampler.sample(teacher, prompt=prompt, generator=torch.Generator().manual_seed(0), return_trace=True)
    assert torch.equal(out.tokens[1, :3], prompt[1, :3]) and not (out.tokens == teacher.mask_id).any()
    for before, after in zip([prompt] + out.trace, out.trace):
        assert ((before != after).sum(-1) <= 1).all()



def test_dilated_reveal_follows_the_dilated_order():
    teacher = OracleDenoiser(tiny_data().source)
    # one pass per forward with the untrained head: the dilated sampler at one token per step, token for token
    exact = DilatedSampler().sample(teacher, 8, batch_size=32, seq_len=8, generator=torch.Generator().manual_seed(2))
    one = JointHeadSampler(1, n_head=2, reveal="dilated").resolve(teacher, 8).sample(
        teacher, batch_size=32, seq_len=8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(one.tokens, exact.tokens)
    # K = 4: the 4 passes of each forward reveal, one by one, the positions dilated@2 reveals together
    head = randomised(JointHeadSampler(4, n_head=2, reveal="dilated").resolve(teacher, 8))
    out = head.sample(teacher, batch_size=4, seq_len=8, generator=torch.Generator().manual_seed(0), return_trace=True)
    ref = DilatedSampler().sample(teacher, 2, batch_size=4, seq_len=8, generator=torch.Generator().manual_seed(0),
                                  return_trace=True)
    first_forward = out.trace[3] != teacher.mask_id
    assert torch.equal(first_forward, ref.trace[0] != teacher.mask_id)
    assert first_forward[0].nonzero().flatten().tolist() == [0, 2, 4, 6]  # bit-reversed ranks 0..3 of 8 positions
    order = [int((b != a).nonzero()[0, 1]) for a, b in zip([torch.full((4, 8), teacher.mask_id)] + out.trace, out.trace)]
    assert order == [0, 4, 2, 6, 1, 5, 3, 7]  # row 0, pass by pass: the dilated rank order


def test_kl_loss_is_zero_when_the_head_equals_the_target():
    # i.i.d. tokens: the oracle's conditionals never change as tokens are revealed, so the untrained
    # head (the teacher's first-forward distribution, carried over every pass) is exactly the target
    u = torch.tensor([0.1, 0.2, 0.3, 0.15, 0.15, 0.1], dtype=torch.float64)
    iid = OracleDenoiser(HiddenMarkovSource(u, u.repeat(6, 1), torch.eye(6, dtype=torch.float64), seq_len=8))
    batch = next(iter(tiny_data().train_dataloader()))
    loss, values = objective_for(iid).loss(batch, torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(0.0, abs=1e-6) and set(values) >= {"objective", "kl_pass1", "kl_pass4"}
    # on a chain the same untrained head misses the updates after pass 1
    loss, values = objective_for(OracleDenoiser(tiny_data().source)).loss(batch, torch.Generator().manual_seed(0))
    assert values["kl_pass1"].item() == pytest.approx(0.0, abs=1e-6) and values["kl_pass4"].item() > 0.01
    assert loss.item() > 0.01


def test_dilated_training_states_follow_the_dilated_order():
    from distill.objectives.joint_head import teacher_trajectory
    teacher = OracleDenoiser(tiny_data().source)
    objective = objective_for(teacher, reveal="dilated")
    canvas = torch.full((3, 8), teacher.mask_id)
    path = teacher_trajectory(teacher, canvas, objective.student.rule, torch.Generator().manual_seed(0))
    revealed = [int((b != a)[0].nonzero()) for a, b in zip(path["states"][:-1], path["states"][1:])]
    assert len(path["states"]) == 8 and revealed == [0, 4, 2, 6, 1, 5, 3]  # the exact trajectory, dilated rank order


def fit(objective, datamodule, steps: int) -> L.Trainer:
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, accelerator="cpu")
    trainer.fit(objective, datamodule=datamodule)
    return trainer


def test_teacher_unchanged_and_absent_from_checkpoint_and_export(tmp_path):
    teacher = tiny_transformer()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    objective = objective_for(teacher)
    head_before = {k: v.clone() for k, v in objective.student.state_dict().items()}
    trainer = fit(objective, tiny_data(), 5)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert any(not torch.equal(head_before[k], v) for k, v in objective.student.state_dict().items())  # it trained
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert checkpoint["state_dict"] and all(k.startswith("student.head.") for k in checkpoint["state_dict"])
    assert checkpoint["hyper_parameters"]["student"]["hidden_size"] == 16  # resolved from the teacher
    objective.export(str(tmp_path / "export"))
    weights = load_file(tmp_path / "export" / "model.safetensors")
    assert set(weights) == set(objective.student.state_dict())
    assert sum(v.numel() for v in weights.values()) == sum(p.numel() for p in objective.student.parameters())


def test_export_loads_and_samples_token_identically(tmp_path):
    teacher = OracleDenoiser(tiny_data().source)
    objective = objective_for(teacher, tokens_per_forward=2)
    randomised(objective.student)
    objective.export(str(tmp_path / "export"))
    loaded = students.load(tmp_path / "export")
    assert isinstance(loaded, JointHeadSampler) and loaded.config == objective.student.config
    assert loaded.teacher_ref["kind"] == "oracle"
    a = objective.student.eval().sample(teacher, batch_size=32, seq_len=8, generator=torch.Generator().manual_seed(7))
    b = loaded.sample(teacher, batch_size=32, seq_len=8, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.tokens, b.tokens) and (a.nfe, a.head_passes) == (b.nfe, b.head_passes) == (4, 8)


@pytest.fixture
def one_thread():
    """Small matmuls: a training step on a busy 2-core machine took 5.4 s with two threads, 0.06 s with one (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_training_lowers_the_kl_to_the_target(one_thread):
    # the experiments' head shape (two layers, wider than H = V = 6); 80 steps on the tiny chain
    torch.manual_seed(0)
    datamodule = tiny_data()
    objective = objective_for(OracleDenoiser(datamodule.source), width=32, n_layer=2)
    batch = next(iter(datamodule.val_dataloader()))
    before = objective.loss(batch, torch.Generator().manual_seed(0))[1]
    fit(objective, datamodule, 80)
    after = objective.loss(batch, torch.Generator().manual_seed(0))[1]
    assert after["objective"] < 0.5 * before["objective"]
    assert after["kl_pass4"] < 0.5 * before["kl_pass4"]  # the late passes, which need the revealed tokens, learned
    assert after["kl_pass1"] < 0.02  # and the first pass stayed close to the teacher


def test_attention_starts_local():
    bias = JointHead(6, 6, width=8, n_head=4, max_distance=3).attention_bias(8)[0]  # (nh, L, L)
    i = 4
    assert bias[0, i].argmax().item() == i - 1 and bias[1, i].argmax().item() == i + 1  # left / right neighbour
    assert bias[2, i].argmax().item() == i and bias[2, i, i - 1] > bias[2, i, i - 3]  # decays with distance
    assert torch.equal(bias[3, 0, 7], bias[3, 0, 3])  # clipped beyond max_distance


@pytest.mark.parametrize("experiment", ["joint_head_oracle", "joint_head_teacher"])
def test_experiments_compose_and_build_like_train_app(experiment, tmp_path):
    save_teacher(tiny_transformer(), tmp_path / "teacher", data=tiny_data().spec())
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
            path = [f"teacher.path={tmp_path / 'teacher'}"] if experiment.endswith("teacher") else []
            cfg = compose(config_name="train", overrides=[f"experiment={experiment}", *TINY_DATA, "student.n_head=2",
                                                          *path])
    finally:
        GlobalHydra.instance().clear()
    assert cfg.trainer.max_time and cfg.eval.after_training
    datamodule = instantiate(cfg.data)
    student = instantiate(cfg.student, _convert_="all")
    teacher = instantiate(cfg.teacher, datamodule=datamodule)
    objective = instantiate(cfg.objective, student=student, teacher=teacher, vocab_size=6, seq_len=8,
                            data_spec=datamodule.spec(), _convert_="all")
    assert objective.student.hidden_size == (6 if experiment.endswith("oracle") else 16)


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=300)


def test_train_and_eval_apps_end_to_end(tmp_path):
    proc = run("fewstep-train", "experiment=joint_head_oracle", *TINY_DATA, "student.n_head=2", "trainer.max_steps=3",
               "trainer.val_check_interval=3", "eval.num_samples=64", "objective.val_samples=16",
               f"export_dir={tmp_path / 'export'}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| 4 | 2 | 8 |" in proc.stdout  # describe(): K, full forwards, head passes
    meta = json.loads((tmp_path / "export" / "sampler.json").read_text())
    assert meta["class"] == "JointHeadSampler" and meta["config"]["hidden_size"] == 6 and meta["trained_steps"] == 3
    proc = run("fewstep-eval", "teacher=oracle", *TINY_DATA, "sampler=saved", f"sampler.path={tmp_path / 'export'}",
               "eval.num_samples=64", f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((tmp_path / "eval" / "metrics.json").read_text())["rows"][0]
    assert (row["steps"], row["nfe"], row["head_passes"], row["tokens_per_forward"]) == (2, 2, 8, 4)


class ShiftedTransformer(TransformerDenoiser):
    """The tiny transformer with Dream's logit shift (column i scores from hidden i - 1)."""

    shift_logits = True

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = super().lm_head(hidden)
        return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


@pytest.mark.parametrize("shift", [False, True], ids=["plain", "shifted"])
def test_prompted_loss_reads_only_the_answer_columns_with_the_same_value(shift):
    """The trajectory keeps hidden states and the LM head runs on the answer columns (one more on the left for a
    shifting model); the loss equals forward KL on full-width teacher logits, recomputed here by hand."""
    from distill.objectives.joint_head import generated_columns, teacher_trajectory

    torch.manual_seed(0)
    teacher = (ShiftedTransformer if shift else TransformerDenoiser)(6, 8, n_layer=1, n_head=2, d_model=16).eval()
    objective = objective_for(teacher, tokens_per_forward=2)
    randomised(objective.student)
    tokens = torch.randint(0, 6, (4, 8), generator=torch.Generator().manual_seed(3))
    answer = (torch.arange(8) >= 3)[None].expand(4, 8)
    loss, _ = objective.loss({"tokens": tokens, "answer_mask": answer}, torch.Generator().manual_seed(0))
    canvas = torch.where(answer, teacher.mask_id, tokens)
    assert generated_columns(teacher, canvas) == slice(2 if shift else 3, None)
    path = teacher_trajectory(teacher, canvas, objective.student.rule, torch.Generator().manual_seed(0))
    assert set(path) == {"states", "hidden", "final"}  # no full-vocabulary logits kept
    kl, n = 0.0, 0
    for start in range(0, 5, 2):  # chunks of K = 2 over T = 5 states, head unrolled by hand on full width
        hidden = path["hidden"][start]
        for s in range(start, min(start + 2, 5)):
            hidden = objective.student.head(teacher.embed(path["states"][s]), hidden)
            masked = path["states"][s] == teacher.mask_id
            kl = kl + (forward_kl(teacher.lm_head(path["hidden"][s]), teacher.lm_head(hidden)) * masked).sum()
            n += int(masked.sum())
    assert torch.allclose(loss, kl / n, atol=1e-6) and loss > 0
