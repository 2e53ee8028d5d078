"""Student exports: exact round trip, atomic writes, and named failures (corrupt, truncated,
other teacher, other data) before any sampling starts."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

import students
from students import LearnedSampler, check_teacher, save_student
from teachers import OracleDenoiser, TransformerDenoiser, save_teacher
from teachers.saved import load_teacher

from tests.test_lsd import chain


@pytest.fixture
def student() -> LearnedSampler:
    sampler = LearnedSampler(4, rule_init={"adjacent_chosen": -3.0})
    with torch.no_grad():
        sampler.log_coefficient.copy_(torch.tensor([0.1, -0.2, 0.0, 0.3]))
        sampler.grid_logits.copy_(torch.tensor([0.5, 0.0, -0.5, 0.2]))
    return sampler


def test_round_trip_is_exact(student, tmp_path):
    save_student(student, tmp_path / "s", teacher={"kind": "oracle", "data": {"seed": 0}}, extra={"method": "lsd_joint"},
                 card="# card\n")
    loaded = students.load(tmp_path / "s")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["README.md", "model.safetensors", "sampler.json"]
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in student.state_dict().items())
    assert loaded.method == "lsd_joint" and loaded.config == student.config
    oracle = OracleDenoiser(chain())
    a = student.sample(oracle, batch_size=16, seq_len=16, generator=torch.Generator().manual_seed(0)).tokens
    b = loaded.sample(oracle, batch_size=16, seq_len=16, generator=torch.Generator().manual_seed(0)).tokens
    assert torch.equal(a, b)


def test_failed_export_leaves_nothing(student, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # killed midway through writing the weights

    monkeypatch.setattr("students.export.save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        save_student(student, tmp_path / "s", teacher={"kind": "oracle"})
    assert list(tmp_path.iterdir()) == []


def test_existing_export_is_refused(student, tmp_path):
    save_student(student, tmp_path / "s", teacher={"kind": "oracle"})
    with pytest.raises(FileExistsError, match="already exists"):
        save_student(student, tmp_path / "s", teacher={"kind": "oracle"})


def test_corrupt_truncated_and_missing_exports_are_named(student, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a student export"):
        students.load(tmp_path)
    path = save_student(student, tmp_path / "s", teacher={"kind": "oracle"})
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    with pytest.raises(ValueError, match="does not match the SHA-256.*truncated or modified"):
        students.load(path)
    (path / "sampler.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON.*corrupt"):
        students.load(path)
    (path / "sampler.json").write_text(json.dumps({"format": "fewstep-student/1", "class": "Nope"}))
    with pytest.raises(ValueError, match="class 'Nope'.*known:.*LearnedSampler"):
        students.load(path)


def test_teacher_mismatch_is_named(tmp_path):
    spec = {"kind": "hidden_markov", "seed": 0}
    a = load_teacher(save_teacher(TransformerDenoiser(6, 8, n_layer=1, n_head=2, d_model=16), tmp_path / "a", data=spec))
    torch.manual_seed(1)
    b = load_teacher(save_teacher(TransformerDenoiser(6, 8, n_layer=1, n_head=2, d_model=16), tmp_path / "b", data=spec))
    ref = {"kind": "saved", "path": a.path, "sha256": a.sha256, "data": spec}
    check_teacher(ref, a, spec)
    with pytest.raises(ValueError, match=f"distilled from the teacher at {a.path}.*teacher.path={a.path}"):
        check_teacher(ref, b, spec)
    with pytest.raises(ValueError, match="distilled on other data.*data.seed=0"):
        check_teacher(ref, a, {"kind": "hidden_markov", "seed": 4})
    with pytest.raises(ValueError, match="teacher=oracle"):
        check_teacher({"kind": "oracle", "data": spec}, a, spec)


def test_eval_refuses_a_student_of_another_teacher_before_sampling(student, tmp_path):
    path = save_student(student, tmp_path / "s", teacher={"kind": "saved", "path": "/elsewhere", "sha256": "0" * 64})
    proc = subprocess.run(["fewstep-eval", "sampler=saved", f"sampler.path={path}", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "teacher=oracle" not in proc.stderr
    assert "distilled from the teacher at /elsewhere" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()
