"""A training run SIGKILLed midway and resumed with ckpt_path=last ends where an uninterrupted run
ends: data and rollouts are functions of (seed, rank, step), restored with the step."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

TINY_CHAIN = ["data.vocab_size=6", "data.seq_len=8", "data.batch_size=16"]
RUNS = {  # each draws fresh randomness every step: REINFORCE rollouts / masks of the teacher's loss
    "lsd_joint": ["experiment=lsd_joint_oracle", *TINY_CHAIN, "trainer.max_steps=30"],
    "teacher": ["experiment=teacher_markov", *TINY_CHAIN, "objective.network.n_layer=1", "objective.network.d_model=32",
                "objective.network.n_head=2", "trainer.max_steps=40"],
}


def command(overrides: list[str], tmp: Path, name: str, *extra: str) -> list[str]:
    return ["fewstep-train", *overrides, "callbacks.checkpoint.every_n_train_steps=5", "callbacks.checkpoint.every_n_epochs=null",
            "trainer.val_check_interval=1000",
            "eval.after_training=false", f"export_dir={tmp / name}", f"hydra.run.dir={tmp / ('run_' + name)}", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("objective", list(RUNS))
def test_sigkill_then_resume_ends_where_an_uninterrupted_run_ends(objective, tmp_path):
    overrides = RUNS[objective]
    full = subprocess.run(command(overrides, tmp_path, "full"), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-3000:]

    proc = subprocess.Popen(command(overrides, tmp_path, "killed"), cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    last = tmp_path / "run_killed" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no handler runs, nothing is flushed
    proc.wait()
    assert not (tmp_path / "killed").exists(), "the run finished before it could be killed"
    step = torch.load(last, weights_only=True)["global_step"]
    assert 0 < step < int(overrides[-1].split("=")[1])

    resumed = subprocess.run(command(overrides, tmp_path, "killed", "ckpt_path=last"), cwd=tmp_path,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restored all states from the checkpoint" in resumed.stdout + resumed.stderr
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "killed" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
