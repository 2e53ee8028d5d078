"""Two CPU processes (gloo DDP) run every experiment family with its own defaults, end-of-training
table and export included, and export what one process exports: the same files and sampler.json
fields, and the same tensors when the estimator is deterministic and the global batch is the same
(distill/data/streams.py: batch i does not depend on how the global batch is split).
The frozen teacher never enters a checkpoint."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

TINY_CHAIN = ["data.vocab_size=6", "data.seq_len=8"]
TINY_NET = ["objective.network.n_layer=1", "objective.network.d_model=32", "objective.network.n_head=2"]
TINY_PATHS = ["data.nodes=6", "data.successors=2", "data.answer_len=4", "data.graph_seed=1"]
SHORT = ["trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "eval.num_samples=16"]
DDP = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]


def train(tmp: Path, name: str, *overrides: str) -> Path:
    """Run fewstep-train; returns its run directory (the export is tmp/name)."""
    run_dir = tmp / ("run_" + name)
    proc = subprocess.run(["fewstep-train", *overrides, f"export_dir={tmp / name}", f"hydra.run.dir={run_dir}"],
                          cwd=tmp, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp / name).is_dir(), proc.stdout[-2000:]
    return run_dir


def export_meta(export: Path) -> dict:
    """sampler.json of a student export, config.json of a teacher export."""
    name = "sampler.json" if (export / "sampler.json").exists() else "config.json"
    return json.loads((export / name).read_text())


def test_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    """The transition divergence with the greedy teacher rollout is a function of the batch alone:
    one process with batch 16 and two with batch 8 export the same coefficients."""
    common = ["experiment=lsd_oracle", *TINY_CHAIN, "objective.rollout=greedy", "trainer.max_steps=5",
              "eval.num_samples=16"]
    train(tmp_path, "one", *common, "data.batch_size=16")
    run_two = train(tmp_path, "two", *common, "data.batch_size=8", *DDP)
    assert (run_two / "train_ddp_process_1.log").exists()  # a second process did run
    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert one.keys() == two.keys()
    moved = one["log_coefficient"].abs().max()
    assert moved > 1e-3  # the parameters moved, so equality says something
    for key in one:
        torch.testing.assert_close(one[key], two[key], rtol=0, atol=1e-5)
    assert export_meta(tmp_path / "one")["sha256"] == export_meta(tmp_path / "two")["sha256"]


@pytest.fixture(scope="module")
def paths_teacher(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("paths_teacher")
    train(root, "teacher", "experiment=teacher_paths", *TINY_PATHS, *TINY_NET, "data.batch_size=64", "data.val_size=64",
          "trainer.max_steps=150", "trainer.val_check_interval=150", "objective.val_samples=16",
          "eval.after_training=false")  # only builds the teacher the certainty family distills
    return root / "teacher"


EXPERIMENTS = {
    "teacher": ["experiment=teacher_markov", *TINY_CHAIN, *TINY_NET, "objective.val_samples=16"],
    "lsd": ["experiment=lsd_oracle", *TINY_CHAIN],
    "lsd_plus": ["experiment=lsd_plus_oracle", *TINY_CHAIN],
    "lsd_joint": ["experiment=lsd_joint_oracle", *TINY_CHAIN],
    "joint_head": ["experiment=joint_head_oracle", *TINY_CHAIN, "student.n_head=2"],
    "certainty": ["experiment=certainty_paths_lora", *TINY_PATHS, "student.lora.r=2", "objective.thresholds=[0.01,1.0]"],
}
# sampler.json / config.json fields that depend on the trained values (rollouts differ per rank)
TRAINED_FIELDS = {"sha256", "threshold_selection"}


@pytest.mark.parametrize("family", list(EXPERIMENTS))
def test_every_family_exports_under_two_process_ddp_as_under_one(family, tmp_path, request):
    extra = []
    if family == "certainty":
        extra = [f"teacher.path={request.getfixturevalue('paths_teacher')}", f"data.cache_dir={tmp_path / 'cache'}"]
    overrides = [*EXPERIMENTS[family], *extra, *SHORT]
    run_one = train(tmp_path, "one", *overrides, "data.batch_size=16")
    run_two = train(tmp_path, "two", *overrides, "data.batch_size=8", *DDP)
    assert (run_two / "train_ddp_process_1.log").exists()  # a second process did run

    # the end-of-training table ran once, on the whole evaluation set, as in one process
    rows_one = json.loads((run_one / "metrics.json").read_text())["rows"]
    rows_two = json.loads((run_two / "metrics.json").read_text())["rows"]
    assert [(r["sampler"], r["steps"]) for r in rows_two] == [(r["sampler"], r["steps"]) for r in rows_one]
    assert rows_two[-1] == rows_one[-1]  # the true-data row does not depend on training
    assert (run_two / "compare" / "compare.md").exists()

    # the export: same files, same fields, tensors of the same names and shapes
    one, two = tmp_path / "one", tmp_path / "two"
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    meta_one, meta_two = export_meta(one), export_meta(two)
    assert meta_two.keys() == meta_one.keys()
    for key in meta_one.keys() - TRAINED_FIELDS:
        if key == "config" and family == "certainty":  # holds the chosen threshold
            assert meta_two[key].keys() == meta_one[key].keys()
        elif key != "checkpoint":
            assert meta_two[key] == meta_one[key], key
    assert meta_two["trained_steps"] == 2
    tensors_one, tensors_two = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert {k: v.shape for k, v in tensors_two.items()} == {k: v.shape for k, v in tensors_one.items()}

    # the checkpoint holds the trainee alone, never the frozen teacher
    checkpoint = torch.load(run_two / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2
    prefix = "network." if family == "teacher" else "student."
    assert checkpoint["state_dict"] and all(k.startswith(prefix) for k in checkpoint["state_dict"])
    if family != "certainty":  # (its export merges the LoRA adapters, so it holds fewer tensors)
        numel = sum(v.numel() for v in checkpoint["state_dict"].values())
        assert numel == sum(v.numel() for v in tensors_two.values())  # the student's (trainee's) tensors, no more
