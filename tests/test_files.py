"""teachers/files.py (the atomic directory writer every export and data cache uses) and the one
"data mismatch" message (teachers/saved.py)."""

from __future__ import annotations

import os

import pytest

from teachers.files import atomic_directory
from teachers.saved import data_mismatch


def test_atomic_directory_appears_whole_at_the_end(tmp_path):
    path = tmp_path / "deep" / "out"
    with atomic_directory(path) as tmp:
        (tmp / "a.txt").write_text("a")
        assert not path.exists() and tmp.parent == path.parent  # beside the target, so the rename is atomic
    assert (path / "a.txt").read_text() == "a" and os.listdir(path.parent) == ["out"]


def test_atomic_directory_leaves_nothing_when_the_block_fails(tmp_path):
    with pytest.raises(RuntimeError, match="half way"):
        with atomic_directory(tmp_path / "out") as tmp:
            (tmp / "a.txt").write_text("a")
            raise RuntimeError("half way")
    assert os.listdir(tmp_path) == []


def test_atomic_directory_keeps_a_concurrent_writers_finished_copy_only_with_its_marker(tmp_path):
    path = tmp_path / "cache"
    with atomic_directory(path, done_marker="done.json") as tmp:  # another rank finishes first
        (tmp / "done.json").write_text("mine")
        path.mkdir()
        (path / "done.json").write_text("theirs")
    assert (path / "done.json").read_text() == "theirs" and os.listdir(tmp_path) == ["cache"]
    with pytest.raises(OSError):  # without a marker the failed rename is an error
        with atomic_directory(path) as tmp:
            (tmp / "x").write_text("x")
    assert os.listdir(tmp_path) == ["cache"]


def test_data_mismatch_names_each_difference_and_the_overrides_that_fix_it():
    recorded = {"kind": "markov", "vocab_size": 6, "seed": 0}
    message = data_mismatch(recorded, {"kind": "hmm", "vocab_size": 8, "seed": 0}, "the teacher at T was trained",
                            "teacher", hint=" with data=markov")
    assert message == ("the teacher at T was trained on other data (kind: teacher 'markov' vs data 'hmm', "
                       "vocab_size: teacher 6 vs data 8); run on its data with data=markov by adding: data.vocab_size=6")
    assert data_mismatch(recorded, {"seed": 0, "vocab_size": 6}, "x", "y") is None  # only the given keys count
    split = data_mismatch({"val_fraction": 0.1}, {"val_fraction": 0.2}, "this student was trained", "student",
                          what="another prompt split")
    assert split.endswith("another prompt split (val_fraction: student 0.1 vs data 0.2); run on its data by adding: "
                          "data.val_fraction=0.1")
