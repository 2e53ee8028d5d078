"""Bad input exits non-zero before any work, with a one-paragraph message naming the problem and
the fix, no traceback, and no files left behind (not even Hydra's run directory).

Also covered elsewhere: tokenizer without a mask token and corpora / prompt files without usable
rows (tests/test_hf.py), corrupt or truncated exports (tests/test_student_export.py), a truncated
checkpoint given to fewstep-export (tests/test_apps.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from distill.data.sources import PathsDataModule, SourceDataModule
from students import LearnedSampler, save_student
from teachers import TransformerDenoiser, save_teacher

TINY_CHAIN = ["data.vocab_size=6", "data.seq_len=8"]


def fails(tmp: Path, *args: str, code: int = 2) -> str:
    """Run a console script that must fail; return its stderr after checking nothing was left behind."""
    run_dir = tmp / "run"
    proc = subprocess.run([*args, f"hydra.run.dir={run_dir}", f"export_dir={tmp / 'export'}"]
                          if args[0] == "fewstep-train" else [*args, f"hydra.run.dir={run_dir}"],
                          cwd=tmp, capture_output=True, text=True, timeout=300)
    assert proc.returncode == code, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not run_dir.exists() and not (tmp / "export").exists() and not (tmp / "outputs").exists()
    return proc.stderr


@pytest.mark.parametrize("steps", ["[0]", "[9]"])
def test_eval_step_count_out_of_range(tmp_path, steps):
    err = fails(tmp_path, "fewstep-eval", *TINY_CHAIN, f"eval.steps={steps}")
    assert "out of range: steps must be between 1 and the 8 generated positions" in err


@pytest.mark.parametrize("steps", [0, 9])
def test_student_step_count_out_of_range(tmp_path, steps):
    err = fails(tmp_path, "fewstep-train", "experiment=lsd_joint_oracle", *TINY_CHAIN, f"student.steps={steps}")
    assert ("student.steps must be >= 1" if steps == 0 else "must be between 1 and 8 (set student.steps") in err


def test_unknown_option_lists_the_valid_ones(tmp_path):
    err = fails(tmp_path, "fewstep-train", "experiment=lsd_oracle", "objective.learning_rate=0.1")
    assert "objective.learning_rate is not an option of objective" in err
    assert "teacher_steps, relaxed, rollout, optimizer" in err and "+objective.learning_rate=" in err


def test_unknown_value_of_an_option_lists_the_valid_ones(tmp_path):
    err = fails(tmp_path, "fewstep-train", "experiment=lsd_oracle", "objective.rollout=beam")
    assert "objective.rollout must be one of ('ancestral', 'greedy'), got 'beam'" in err


def test_unknown_config_group_option_lists_the_valid_ones(tmp_path):
    err = fails(tmp_path, "fewstep-train", "student=lsd_pluss", code=1)  # Hydra's own message
    assert "Could not find 'student/lsd_pluss'" in err and "lsd_plus" in err and "lsd_joint" in err


@pytest.fixture
def chain_teacher(tmp_path) -> Path:
    data = {"kind": "hidden_markov", "seed": 0, "hidden_states": 6, "vocab_size": 6, "seq_len": 8, "successors": 3,
            "emissions_per_state": None, "smoothing": 0.01, "weight_exponent": 1.0}
    return save_teacher(TransformerDenoiser(6, 8, n_layer=1, d_model=16, n_head=2), tmp_path / "teacher", data=data)


def test_teacher_vocab_mismatch_is_named(tmp_path, chain_teacher):
    err = fails(tmp_path, "fewstep-train", "experiment=lsd_joint_teacher", f"teacher.path={chain_teacher}",
                "data.vocab_size=8", "data.seq_len=8")
    assert "was trained on other data" in err and "vocab_size: teacher 6 vs data 8" in err and "data.vocab_size=6" in err


@pytest.mark.parametrize("problem", ["missing", "truncated", "corrupt"])
def test_bad_resume_checkpoint_is_named_before_work(tmp_path, problem):
    ckpt = tmp_path / "last.ckpt"
    if problem != "missing":
        torch.save({"state_dict": {"w": torch.zeros(100)}}, ckpt)
        data = ckpt.read_bytes()
        ckpt.write_bytes(data[: len(data) // 2] if problem == "truncated" else b"not a checkpoint" + data[16:])
    err = fails(tmp_path, "fewstep-train", "experiment=lsd_joint_oracle", *TINY_CHAIN, f"ckpt_path={ckpt}")
    assert ("does not exist" if problem == "missing" else "cannot be read") in err and str(ckpt) in err


def test_missing_export_is_named(tmp_path):
    err = fails(tmp_path, "fewstep-eval", "teacher=oracle", *TINY_CHAIN, "sampler=saved",
                f"sampler.path={tmp_path / 'nowhere'}")
    assert str(tmp_path / "nowhere") in err


def test_student_of_another_vocabulary_is_named(tmp_path):
    spec = SourceDataModule(vocab_size=6, hidden_states=6, seq_len=8).spec()
    save_student(LearnedSampler(4), tmp_path / "student", teacher={"kind": "oracle", "data": spec})
    err = fails(tmp_path, "fewstep-eval", "teacher=oracle", "data.vocab_size=8", "data.seq_len=8", "eval.steps=[4]",
                "sampler=saved", f"sampler.path={tmp_path / 'student'}")
    assert "distilled on other data" in err and "data.vocab_size=6" in err


@pytest.mark.parametrize("threshold", [-0.5])
def test_threshold_out_of_range_is_named(tmp_path, threshold):
    dm = PathsDataModule(nodes=6, successors=2, answer_len=4, graph_seed=1)
    teacher = save_teacher(TransformerDenoiser(dm.vocab_size, dm.seq_len, n_layer=1, d_model=16, n_head=2),
                           tmp_path / "teacher", data=dm.spec())
    err = fails(tmp_path, "fewstep-eval", "data=paths", "data.nodes=6", "data.successors=2", "data.answer_len=4",
                "data.graph_seed=1", "teacher=saved", f"teacher.path={teacher}", "sampler=entropy_threshold",
                f"sampler.threshold={threshold}")
    assert f"threshold must be >= 0 (nats), got {threshold}" in err
