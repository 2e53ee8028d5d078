"""fewstep-leaderboard: the verdicts against hand-made rows, and one small end-to-end run whose
numbers recompute from the samples it saves."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from distill.evaluation.leaderboard_report import verdicts, write_table
from teachers.sources.hmm import HiddenMarkovSource


def _row(name, kind, nfe, gen_nll, s_per_1k, **extra):
    return {"sampler": name, "kind": kind, "steps": int(nfe), "nfe": nfe, "gen_nll": gen_nll, "s_per_1k": s_per_1k, **extra}


def test_verdict_compares_at_matched_budget_and_matched_quality():
    rows = [_row("dilated", "reference", 4, 1.50, 1.0), _row("dilated", "reference", 8, 1.30, 2.0),
            _row("ancestral", "reference", 16, 1.25, 4.0), _row("teacher", "teacher", 32, 1.20, 8.0),
            _row("student", "student", 4, 1.28, 1.6, head_passes=16)]
    [line] = verdicts(rows, {"gen_nll": 1.0}, tolerance=0.1)
    assert "+ 16 head passes" in line
    assert "beats the best training-free row at <= 4.00 NFE (dilated 4 steps, 1.5000)" in line
    # rows at least as good: ancestral 16 (4.0 s) and the teacher (8.0 s); the cheapest in seconds is ancestral
    assert "ancestral 16 steps: 4x the forwards, 2.5x the seconds" in line
    assert "8x fewer forwards, 5x less time, gen_nll within 10% of its 1.2000" in line


def test_verdict_says_when_a_student_loses():
    rows = [_row("dilated", "reference", 4, 1.20, 1.0), _row("teacher", "teacher", 32, 1.10, 8.0),
            _row("student", "student", 4, 1.30, 1.0)]
    [line] = verdicts(rows, {"gen_nll": 1.0}, tolerance=0.05)
    assert "does not beat the best training-free row" in line
    assert "8x fewer forwards, 8x less time, gen_nll not within 5%" in line
    rows[-1]["s_per_1k"] = 16.0  # slower than the teacher's 8.0 s
    assert "8x fewer forwards, 2x more time" in verdicts(rows, {"gen_nll": 1.0}, tolerance=0.05)[0]


def test_table_names_each_students_cheapest_match_and_its_time_ratio(tmp_path):
    rows = [_row("dilated", "reference", 8, 1.30, 2.0), _row("dilated", "reference", 16, 1.25, 4.0),
            _row("eb", "reference", 9.5, 1.26, 3.0), _row("teacher", "teacher", 32, 1.20, 8.0),
            _row("head", "student", 4, 1.27, 1.5), _row("sharp", "student", 4, 1.10, 1.0)]
    write_table(rows, {"gen_nll": 1.0}, [], tmp_path)
    lines = {line.split(" | ")[0].strip("| "): line for line in (tmp_path / "leaderboard.md").read_text().splitlines()}
    # as good as head (1.27): dilated 16 (4.0 s), eb (3.0 s), the teacher (8.0 s); the cheapest in seconds is eb
    assert "eb @ 9.5 NFE (3 s) | 0.5000 |" in lines["head"]
    assert "none in the table" in lines["sharp"] and "matched_by" in (tmp_path / "leaderboard.csv").read_text()


@pytest.mark.slow
def test_end_to_end_on_the_oracle_recomputes_from_samples(tmp_path):
    """Two tiny students on the oracle of a small HMM; every gen NLL recomputes from samples.safetensors."""
    data = ["data=hmm", "data.hidden_states=3", "data.vocab_size=6", "data.seq_len=8", "data.batch_size=16",
            "data.val_size=32"]
    args = [sys.executable, "-m", "distill.apps.leaderboard", *data, "teacher=oracle", "lineup=markov", f"workdir={tmp_path / 'w'}",
            "students.lsd_joint.overrides=['student.steps=4','trainer.max_steps=2','eval.after_training=false']",
            "students.joint_head_k4.overrides=['student.tokens_per_forward=2','trainer.max_steps=2','eval.after_training=false']",
            "references.ancestral.steps=[2,4]", "references.confidence.steps=[4]", "references.dilated.steps=[4]",
            "eval.num_samples=64", "eval.batch_size=32", f"hydra.run.dir={tmp_path / 'out'}"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.png", "metrics.json", "samples.safetensors"):
        assert (out / name).is_file(), name
    rows = json.loads((out / "metrics.json").read_text())["rows"]
    kinds = {r["sampler"]: r["kind"] for r in rows if r["sampler"] != "data"}
    assert kinds == {"ancestral": "reference", "confidence": "reference", "dilated": "reference", "teacher": "teacher",
                     "lsd_joint": "student", "joint_head_k4": "student"}
    chain = load_file(out / "chain.safetensors")
    source = HiddenMarkovSource(chain["initial"], chain["transition"], chain["emission"], seq_len=8,
                                transition_support=chain["transition_support"], emission_support=chain["emission_support"])
    samples = load_file(out / "samples.safetensors")
    for r in rows:
        key = "data" if r["sampler"] == "data" else f"{r['sampler']}/steps={r['steps']}"
        tokens = samples[key]
        assert tokens.shape == (64, 8)
        nll = -source.log_prob(tokens).double().mean().item() / 8
        assert nll == pytest.approx(r["gen_nll"], rel=1e-6), key
        if r["sampler"] != "data":
            assert samples[key + "/nfe"].double().mean().item() == pytest.approx(r["nfe"])
    assert "lsd_joint at 4.00 NFE" in proc.stdout and "joint_head_k4 at 4.00 NFE" in proc.stdout
    # a second run reuses both students (no training)
    again = subprocess.run(args[:-1] + [f"hydra.run.dir={tmp_path / 'out2'}"], capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and again.stdout.count("reusing") == 2, again.stdout[-2000:]


def test_each_source_has_its_lineup_and_a_source_without_one_fails_before_work(tmp_path):
    from hydra import compose, initialize_config_dir
    from distill.apps.cli import CONF_DIR
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        hmm = compose("leaderboard", overrides=["data=hmm"])
        markov = compose("leaderboard")
    assert {"chunk_head_k2", "chunk_head_k4", "chunk_head_k8", "head_dilated_k4", "lsd_joint"} <= set(hmm.students)
    assert "student.reveal=dilated" in hmm.students.head_dilated_k4.overrides and "eb" in hmm.references
    assert hmm.students.chunk_head_k8.experiment == "chunk_head" and "student.tokens_per_forward=8" in hmm.students.chunk_head_k8.overrides
    assert set(markov.students) == {"lsd_joint", "joint_head_k4"}
    proc = subprocess.run([sys.executable, "-m", "distill.apps.leaderboard", "data=paths", "teacher=oracle",
                           f"workdir={tmp_path / 'w'}", f"hydra.run.dir={tmp_path / 'out'}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "conf/lineup/paths.yaml does not exist" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "w").exists()


def test_bad_reference_sampler_fails_before_training(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "distill.apps.leaderboard", "teacher=oracle",
                           "references.ancestral.sampler=nope", f"workdir={tmp_path / 'w'}",
                           f"hydra.run.dir={tmp_path / 'out'}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "references.ancestral.sampler='nope' is not a sampler config" in proc.stderr
    assert not (tmp_path / "w").exists()
