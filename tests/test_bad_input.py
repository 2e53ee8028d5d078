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


# --- the sweep: every app's inputs, subprocess for the end-to-end message, in-process for the rest


@pytest.mark.parametrize("app", ["fewstep-eval", "fewstep-train"])
def test_zero_samples_is_named_before_work(tmp_path, app):
    exp = ["experiment=lsd_joint_oracle"] if app == "fewstep-train" else []
    err = fails(tmp_path, app, *exp, *TINY_CHAIN, "eval.num_samples=0")
    assert "eval.num_samples must be a whole number >= 1, got 0" in err


def test_missing_local_teacher_directory_is_named(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text\n")
    err = fails(tmp_path, "fewstep-eval", "teacher=hf_masked_lm", "teacher.path=./no_such_model", "data=text_files",
                f"data.files=[{corpus}]")
    assert "./no_such_model: no such directory" in err and "Repo id" not in err


@pytest.mark.parametrize("path", ["/no/such/model", "./nope", "../nope", "tests/nope"])
def test_local_looking_paths_that_do_not_exist_fail_before_transformers(path):
    from teachers.hf import HFDiffusionLM, HFMaskedLM, check_local_path

    for build in (HFMaskedLM, HFDiffusionLM):
        with pytest.raises(FileNotFoundError, match="no such directory"):
            build(path)
    check_local_path("org/model")  # a hub id is left to transformers
    check_local_path("tests")  # an existing directory passes


@pytest.mark.parametrize("key, value, message", [
    ("num_samples", -5, "eval.num_samples must be a whole number >= 1"),
    ("batch_size", 0, "eval.batch_size must be a whole number >= 1"),
    ("repeats", 0, "eval.repeats must be a whole number >= 1"),
    ("kl_smoothing", -0.1, "eval.kl_smoothing must be >= 0"),
    ("pair_distances", [0, 1], "eval.pair_distances must be whole numbers >= 1"),
    ("pair_distances", [8, 16], "all reach beyond the 8 tokens"),
    ("steps", [0], "out of range"),
])
def test_bad_eval_settings_are_named(key, value, message):
    from omegaconf import OmegaConf

    from distill.apps.eval import check_eval

    good = {"steps": None, "num_samples": 10, "batch_size": 10, "repeats": 2, "kl_smoothing": 0.5,
            "pair_distances": [1, 2, 4, 8]}
    check_eval(OmegaConf.create(good), 8, 8)  # the defaults pass (distances >= seq_len are skipped)
    with pytest.raises(ValueError, match=message):
        check_eval(OmegaConf.create({**good, key: value}), 8, 8)


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "data.batch_size must be a whole number >= 1, got 0"),
    ({"val_size": -1}, "data.val_size must be a whole number >= 1"),
    ({"vocab_size": 0, "hidden_states": 0}, "vocab_size must be >= 2 and hidden_states >= 1"),
    ({"seq_len": 0}, "seq_len must be at least 2"),
])
def test_bad_source_sizes_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SourceDataModule(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": -2}, "data.batch_size must be a whole number >= 1"),
    ({"nodes": 1, "successors": 1}, "nodes must be >= 2"),
    ({"answer_len": 0}, "answer_len must be at least 1"),
])
def test_bad_paths_sizes_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PathsDataModule(**kwargs)


@pytest.mark.parametrize("threads", [0, -1])
def test_threads_below_one_are_named(threads):
    from distill.apps.cli import set_threads

    with pytest.raises(ValueError, match="threads must be a whole number >= 1"):
        set_threads(threads)


def test_unknown_eval_device_is_named(tmp_path):
    err = fails(tmp_path, "fewstep-eval", *TINY_CHAIN, "device=tpu9")
    assert "device=tpu9 is not a torch device; use device=cpu" in err


def test_export_dir_inside_a_file_is_named(tmp_path):
    from distill.apps.cli import check_new_dir

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(FileExistsError, match="lies inside .*file, which is a file"):
        check_new_dir(blocker / "export", "export_dir")
    with pytest.raises(FileExistsError, match="already exists"):
        check_new_dir(blocker, "export_dir")


def test_export_app_checks_its_directory_before_reading(tmp_path, capsys):
    from distill.apps.export import main

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "missing.ckpt"), str(blocker / "out")])
    assert exit_.value.code == 2
    assert "which is a file" in capsys.readouterr().err


def test_compare_names_missing_broken_and_blocked_inputs(tmp_path, capsys):
    from distill.apps.compare import main

    def error(*argv: str) -> str:
        with pytest.raises(SystemExit) as exit_:
            main(list(argv))
        assert exit_.value.code == 2
        return capsys.readouterr().err

    (tmp_path / "empty").mkdir()
    assert "no metrics.json under" in error(str(tmp_path / "empty"))
    broken = tmp_path / "broken" / "metrics.json"
    broken.parent.mkdir()
    broken.write_text("{not json")
    assert f"{broken} is not valid JSON" in error(str(broken), "--out", str(tmp_path / "c"))
    broken.write_text('{"config": {}}')
    assert f"{broken} has no list of rows" in error(str(broken), "--out", str(tmp_path / "c"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "is a file; give a directory" in error(str(broken), "--out", str(blocker / "c"))
    assert not (tmp_path / "c").exists()
