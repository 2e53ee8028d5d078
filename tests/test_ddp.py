"""Two CPU processes (gloo DDP) train every objective; with a deterministic estimator the result
equals one process with the same global batch. The frozen teacher never enters a checkpoint."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

TINY_CHAIN = ["data.vocab_size=6", "data.seq_len=8"]
TINY_NET = ["objective.network.n_layer=1", "objective.network.d_model=32", "objective.network.n_head=2"]
TINY_PATHS = ["data.nodes=6", "data.successors=2", "data.answer_len=4", "data.graph_seed=1"]
DDP = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]


def train(tmp: Path, name: str, *overrides: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(["fewstep-train", *overrides, "eval.after_training=false", f"export_dir={tmp / name}",
                           f"hydra.run.dir={tmp / ('run_' + name)}"], cwd=tmp, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    common = ["experiment=lsd_oracle", *TINY_CHAIN, "objective.rollout=greedy", "trainer.max_steps=5"]
    train(tmp_path, "one", *common, "data.batch_size=16")
    train(tmp_path, "two", *common, "data.batch_size=8", *DDP)
    assert (tmp_path / "run_two" / "train_ddp_process_1.log").exists()  # a second process did run
    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert one.keys() == two.keys()
    moved = one["log_coefficient"].abs().max()
    assert moved > 1e-3  # the parameters moved, so equality says something
    for key in one:
        torch.testing.assert_close(one[key], two[key], rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def paths_teacher(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("paths_teacher")
    train(root, "teacher", "experiment=teacher_paths", *TINY_PATHS, *TINY_NET, "data.batch_size=64", "data.val_size=64",
          "trainer.max_steps=150", "trainer.val_check_interval=150", "objective.val_samples=16")
    return root / "teacher"


EXPERIMENTS = {
    "teacher": ["experiment=teacher_markov", *TINY_CHAIN, *TINY_NET, "objective.val_samples=16"],
    "lsd": ["experiment=lsd_oracle", *TINY_CHAIN],
    "lsd_joint": ["experiment=lsd_joint_oracle", *TINY_CHAIN],
    "joint_head": ["experiment=joint_head_oracle", *TINY_CHAIN, "student.n_head=2"],
    "certainty": ["experiment=certainty_paths_lora", *TINY_PATHS, "student.lora.r=2", "objective.thresholds=[0.01,1.0]"],
}


@pytest.mark.parametrize("objective", list(EXPERIMENTS))
def test_every_objective_trains_under_two_process_ddp(objective, tmp_path, request):
    extra = []
    if objective == "certainty":
        extra = [f"teacher.path={request.getfixturevalue('paths_teacher')}", f"data.cache_dir={tmp_path / 'cache'}"]
    train(tmp_path, "export", *EXPERIMENTS[objective], *extra, "data.batch_size=8", "trainer.max_steps=4",
          "trainer.val_check_interval=2", "trainer.limit_val_batches=1", *DDP)
    assert (tmp_path / "run_export" / "train_ddp_process_1.log").exists()
    checkpoint = torch.load(tmp_path / "run_export" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 4
    prefix = "network." if objective == "teacher" else "student."
    assert checkpoint["state_dict"] and all(k.startswith(prefix) for k in checkpoint["state_dict"])
    assert not any("teacher" in k for k in checkpoint["state_dict"])
    if objective != "certainty":  # (its export merges the LoRA adapters, so it holds fewer tensors)
        exported = load_file(tmp_path / "export" / "model.safetensors")
        numel = sum(v.numel() for v in checkpoint["state_dict"].values())
        assert numel == sum(v.numel() for v in exported.values())  # the student's (trainee's) tensors, no more
