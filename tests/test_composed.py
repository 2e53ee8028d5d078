"""Composed students (students/composed.py, distill/objectives/composed.py): a distilled denoiser, a joint
head trained on it and the decoding rule in one export. The export round-trips token for token; a student's
denoiser loads as a teacher; training composes through config; the root teacher is never trained and never
in a checkpoint."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import students
from distill.apps.compare import compare
from distill.apps.teacher_setup import saved_teacher
from distill.data.sources import PathsDataModule
from distill.objectives.frozen import teacher_reference
from teachers import TransformerDenoiser
from teachers.saved import load_teacher, save_teacher
from tests.test_export_path import assert_same_export, paths_teacher  # noqa: F401 (a fixture)

TINY_PATHS = dict(nodes=6, successors=2, answer_len=4, graph_seed=1)
HEAD = {"tokens_per_forward": 4, "width": 16, "n_layer": 1, "n_head": 2, "temperature": 0.0}


def certainty_export(tmp: Path, teacher_dir: Path, datamodule: PathsDataModule) -> Path:
    """A certainty student exported from the teacher at `teacher_dir` (its denoiser: a perturbed copy)."""
    teacher = load_teacher(teacher_dir)
    student = students.EntropyThresholdSampler(threshold=0.3)
    student.init_denoiser(teacher)
    with torch.no_grad():
        for p in student.denoiser.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return students.save_student(student.merged(), tmp / "certainty", teacher=teacher_reference(teacher, datamodule.spec()),
                                 extra={"method": "certainty", "data": datamodule.spec(),
                                        "prompt_split": datamodule.split_spec()})


def tiny_pair(tmp: Path, datamodule: PathsDataModule) -> tuple[Path, Path]:
    """An untrained saved teacher and a certainty student exported from it."""
    torch.manual_seed(0)
    teacher_dir = save_teacher(TransformerDenoiser(datamodule.vocab_size, datamodule.seq_len, n_layer=1, n_head=2,
                                                   d_model=16), tmp / "teacher", data=datamodule.spec())
    return teacher_dir, certainty_export(tmp, teacher_dir, datamodule)


@pytest.fixture
def pair(tmp_path):
    datamodule = PathsDataModule(**TINY_PATHS)
    return datamodule, *tiny_pair(tmp_path, datamodule)


@pytest.mark.parametrize("temperature, forced", [(0.0, False), (1.0, False), (0.0, True)])
def test_composed_export_round_trips_token_for_token(pair, tmp_path, temperature, forced):
    datamodule, teacher_dir, certainty = pair
    teacher = load_teacher(teacher_dir)
    composed = students.compose(certainty, head={**HEAD, "zero_init": False}, head_passes=3, threshold=0.5,
                                forced_passes=forced)
    composed.decoder.temperature = temperature
    composed.resolve(teacher, datamodule.seq_len).eval()
    path = students.save_student(composed, tmp_path / "composed", teacher=composed.teacher_ref,
                                 extra={"method": "composed", "data": datamodule.spec()})
    loaded = students.load(path)
    assert loaded.config == composed.config and loaded.threshold == 0.5 and loaded.head_passes == 3
    assert loaded.forced_passes == forced
    students.check_teacher(loaded.teacher_ref, teacher, datamodule.spec())  # it names the root teacher
    canvases = datamodule.benchmark().canvases(64, teacher.mask_id, torch.Generator().manual_seed(0))
    a = composed.sample(teacher, None, prompt=canvases, generator=torch.Generator().manual_seed(1))
    b = loaded.sample(teacher, None, prompt=canvases, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.tokens, b.tokens) and a.nfe == b.nfe and a.head_passes == b.head_passes
    assert not (a.tokens == teacher.mask_id).any()
    # every forward reveals at least one token per head pass, at most head_passes passes per forward
    assert a.nfe <= a.head_passes <= 3 * a.nfe and a.head_passes >= 1
    state = load_file(path / "model.safetensors")
    assert any(k.startswith("head.") for k in state) and any(k.startswith("decoder.denoiser.") for k in state)


def test_compose_without_head_is_the_certainty_rule(pair):
    datamodule, teacher_dir, certainty = pair
    teacher = load_teacher(teacher_dir)
    plain, composed = students.load(certainty), students.compose(certainty, threshold=0.7)
    plain.threshold = 0.7
    canvases = datamodule.benchmark().canvases(32, teacher.mask_id, torch.Generator().manual_seed(0))
    a, b = plain.sample(teacher, None, prompt=canvases), composed.sample(teacher, None, prompt=canvases)
    assert torch.equal(a.tokens, b.tokens) and a.nfe == b.nfe and b.head_passes is None


def test_student_export_loads_as_a_teacher(pair):
    datamodule, teacher_dir, certainty = pair
    network = saved_teacher(str(certainty), datamodule)  # teacher=saved teacher.path=<a student export>
    student = students.load(certainty)
    canvases = datamodule.benchmark().canvases(8, network.mask_id, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(network(canvases), student.denoiser(canvases))
    assert not any(p.requires_grad for p in network.parameters()) and not network.training
    assert network.root_ref["path"] == str(Path(teacher_dir).resolve())  # the teacher it was distilled from
    ref = teacher_reference(network, datamodule.spec())
    assert ref["path"] == str(certainty.resolve()) and ref["root"]["sha256"] == load_teacher(teacher_dir).sha256
    with pytest.raises(ValueError, match="data.graph_seed=1"):
        saved_teacher(str(certainty), PathsDataModule(**{**TINY_PATHS, "graph_seed": 2}))
    with pytest.raises(ValueError, match="no denoiser of its own"):
        students.load_denoiser(students.save_student(students.EntropyThresholdSampler(), certainty.parent / "plain",
                                                     teacher={"kind": "oracle"}))


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_composed_training_exports_evaluates_and_reexports(paths_teacher, tmp_path):
    """experiment=composed_paths end to end on a tiny graph: the export evaluates with the root teacher, shows
    head passes in fewstep-compare, and fewstep-export of the final checkpoint writes the same export; the
    root teacher is never trained and none of its tensors is in the checkpoint."""
    datamodule, teacher_dir = PathsDataModule(**TINY_PATHS), paths_teacher[1]  # trained: its answers check
    torch.manual_seed(0)
    certainty = certainty_export(tmp_path, teacher_dir, datamodule)
    tiny = [f"data.{k}={v}" for k, v in TINY_PATHS.items()]
    before = load_file(teacher_dir / "model.safetensors")
    proc = run("fewstep-train", "experiment=composed_paths", *tiny, f"teacher.path={teacher_dir}",
               f"student.denoiser_path={certainty}", f"data.cache_dir={tmp_path / 'sg'}", "data.prefix_draws=2",
               "data.val_prefix_draws=2", "data.batch_size=8", "trainer.max_steps=6", "trainer.val_check_interval=3",
               "student.head.width=16", "student.head.n_head=2", "student.head_passes=2", "objective.val_samples=8",
               "objective.thresholds=[0.1,0.5]",
               "objective.rules=[{head_passes:1},{head_passes:2,forced_passes:true}]", "eval.num_samples=32", "eval.batch_size=32",
               f"export_dir={tmp_path / 'composed'}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    export = tmp_path / "composed"
    meta = json.loads((export / "sampler.json").read_text())
    assert meta["class"] == "ComposedSampler" and meta["method"] == "composed"
    assert meta["teacher"]["path"] == str(Path(teacher_dir).resolve()) and meta["denoiser_from"]["method"] == "certainty"
    chosen = meta["threshold_selection"]["chosen_rule"]  # the rule chosen on validation is the one exported
    assert meta["config"]["decoder"]["threshold"] == chosen["threshold"] in (0.1, 0.5)
    assert (meta["config"]["head_passes"], meta["config"]["forced_passes"]) == (chosen["head_passes"], chosen["forced_passes"])
    assert len(meta["threshold_selection"]["rules"]) == 2
    # the root teacher: unchanged, and none of its tensors in the checkpoint (the student's denoiser is the student's)
    assert all(torch.equal(before[k], v) for k, v in load_file(teacher_dir / "model.safetensors").items())
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "final.ckpt", map_location="cpu", weights_only=True)
    assert all(k.startswith("student.") for k in checkpoint["state_dict"])
    trained = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("student.decoder.")}
    assert all(torch.equal(v, load_file(certainty / "model.safetensors")[k[len("student.decoder."):]]) for k, v in trained.items())
    again = run("fewstep-export", str(tmp_path / "run" / "checkpoints" / "final.ckpt"), str(tmp_path / "again"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same_export(export, tmp_path / "again")
    proc = run("fewstep-eval", "data=paths", *tiny, "teacher=saved", f"teacher.path={teacher_dir}", "sampler=saved",
               f"sampler.path={export}", "eval.num_samples=32", "eval.batch_size=32", f"hydra.run.dir={tmp_path / 'eval'}",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "eval" / "metrics.json").read_text())["rows"]
    assert rows[0]["sampler"] == "composed" and {"accuracy", "nfe", "head_passes", "wall_s"} <= set(rows[0])
    assert "head_passes" in compare([str(tmp_path / "eval")], tmp_path / "compare")["files"][0].read_text()


@pytest.mark.slow
def test_a_head_trains_on_a_student_export_through_config(paths_teacher, tmp_path):
    """teacher=saved teacher.path=<a certainty student's export>: the joint head trains on its denoiser; the
    export names that student as its teacher (its own teacher as root), evaluates with it, re-exports the same."""
    datamodule, teacher_dir = PathsDataModule(**TINY_PATHS), paths_teacher[1]
    torch.manual_seed(0)
    certainty = certainty_export(tmp_path, teacher_dir, datamodule)
    tiny = [f"data.{k}={v}" for k, v in TINY_PATHS.items()]
    proc = run("fewstep-train", "experiment=joint_head_teacher", "data=paths", *tiny, f"teacher.path={certainty}",
               "student.tokens_per_forward=2", "student.width=16", "student.n_head=2", "data.batch_size=8",
               "trainer.max_steps=2", "trainer.val_check_interval=2", "objective.val_samples=8", "eval.num_samples=16",
               "eval.batch_size=16", f"export_dir={tmp_path / 'head'}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    teacher_ref = json.loads((tmp_path / "head" / "sampler.json").read_text())["teacher"]
    assert teacher_ref["path"] == str(certainty.resolve()) and teacher_ref["root"]["path"] == str(Path(teacher_dir).resolve())
    again = run("fewstep-export", str(tmp_path / "run" / "checkpoints" / "final.ckpt"), str(tmp_path / "again"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same_export(tmp_path / "head", tmp_path / "again")
    proc = run("fewstep-eval", "data=paths", *tiny, "teacher=saved", f"teacher.path={certainty}", "sampler=saved",
               f"sampler.path={tmp_path / 'head'}", "eval.num_samples=16", "eval.batch_size=16",
               f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
