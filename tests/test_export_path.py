"""One export path: `fewstep-export CKPT DIR` rebuilds the objective from a training checkpoint and writes
the files the training run wrote (same tensors, same sampler.json, same config.yaml; the model card
differs only by the evaluation rows the run appends). A select_checkpoint run killed and resumed exports
the student an uninterrupted run exports, and `val/` numbers never read a test prompt."""

from __future__ import annotations

import json
import subprocess
import time
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from distill.data.sources import PathsDataModule
from distill.evaluation import benchmarks
from distill.objectives.lsd import LSDObjective
from distill.objectives.masked_diffusion import MaskedDiffusionObjective
from teachers import BlockwiseSampler, TransformerDenoiser

TINY_CHAIN = ["data.vocab_size=6", "data.seq_len=8", "data.batch_size=8"]
TINY_PATHS = ["data.nodes=6", "data.successors=2", "data.answer_len=4", "data.graph_seed=1"]
CARD_ROWS = "\n## Quality at the end of training\n"  # what only the training run's card has


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=600)


def train(tmp: Path, name: str, *overrides: str) -> Path:
    """Run fewstep-train; returns its run directory (export in tmp/name)."""
    proc = run("fewstep-train", *overrides, f"export_dir={tmp / name}", f"hydra.run.dir={tmp / ('run_' + name)}", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / ("run_" + name)


def export(checkpoint: Path, out: Path) -> Path:
    proc = run("fewstep-export", str(checkpoint), str(out), cwd=out.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def assert_same_export(trained: Path, exported: Path) -> None:
    """Same files; the same tensors and bytes; the same metadata; the model card up to the run's rows."""
    files = sorted(p.relative_to(trained).as_posix() for p in trained.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file())
    for name in files:
        a, b = trained / name, exported / name
        if name.endswith(".safetensors"):
            x, y = load_file(a), load_file(b)
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name
        if name == "README.md":  # only the training run evaluated: its card adds the rows
            assert a.read_text().split(CARD_ROWS)[0] == b.read_text()
        elif name.endswith(".json"):
            assert json.loads(a.read_text()) == json.loads(b.read_text()), name
            assert a.read_bytes() == b.read_bytes(), name
        else:
            assert a.read_bytes() == b.read_bytes(), name


# --- every objective on built-in teachers -----------------------------------------------------------
@pytest.fixture(scope="module")
def paths_teacher(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny paths teacher (its run directory, its export)."""
    tmp = tmp_path_factory.mktemp("export_path")
    run_dir = train(tmp, "teacher", "experiment=teacher_paths", *TINY_PATHS, "data.batch_size=64", "data.val_size=64",
                    "objective.network.n_layer=1", "objective.network.d_model=32", "objective.network.n_head=2",
                    "trainer.max_steps=150", "trainer.val_check_interval=150", "eval.steps=[4]", "eval.num_samples=32",
                    "objective.val_samples=8")
    return run_dir, tmp / "teacher"


def test_teacher_checkpoint_exports_the_teacher_the_run_exported(paths_teacher, tmp_path):
    run_dir, teacher = paths_teacher
    assert_same_export(teacher, export(run_dir / "checkpoints" / "final.ckpt", tmp_path / "again"))
    assert json.loads((teacher / "config.json").read_text())["trained_steps"] == 150


@pytest.mark.slow
@pytest.mark.parametrize("experiment, student", [
    ("lsd_oracle", ["student.steps=4"]),
    ("lsd_plus_oracle", ["student.steps=4"]),
    ("lsd_joint_oracle", ["student.steps=4"]),
    ("joint_head_oracle", ["student.tokens_per_forward=4"]),
])
def test_oracle_students_export_the_same_from_their_checkpoint(experiment, student, tmp_path):
    run_dir = train(tmp_path, "student", f"experiment={experiment}", *TINY_CHAIN, *student, "trainer.max_steps=3",
                    "trainer.val_check_interval=3", "objective.val_samples=8", "eval.num_samples=16")
    again = export(run_dir / "checkpoints" / "final.ckpt", tmp_path / "again")
    assert_same_export(tmp_path / "student", again)
    meta = json.loads((again / "sampler.json").read_text())
    assert meta["trained_steps"] == 3 and meta["teacher"]["kind"] == "oracle"


def certainty_args(teacher: Path, tmp: Path, *extra: str) -> list[str]:
    return ["experiment=certainty_paths_lora", f"teacher.path={teacher}", *TINY_PATHS, "data.batch_size=16",
            f"data.cache_dir={tmp / 'cache'}", "student.lora.r=2", "objective.thresholds=[0.01,1.0]",
            "data.prefix_draws=2", "data.val_prefix_draws=2", "eval.num_samples=32", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["lora_merged", "lora_adapter", "full"])
def test_certainty_students_export_the_same_from_their_checkpoint(paths_teacher, tmp_path, variant):
    finetune = {"lora_merged": [], "lora_adapter": ["objective.export_adapter=true"], "full": ["student.lora=null"]}[variant]
    run_dir = train(tmp_path, "student", *certainty_args(paths_teacher[1], tmp_path, *finetune), "trainer.max_steps=2",
                    "trainer.val_check_interval=2")
    again = export(run_dir / "checkpoints" / "final.ckpt", tmp_path / "again")
    assert_same_export(tmp_path / "student", again)
    meta = json.loads((again / "sampler.json").read_text())  # what lived on the module is in the checkpoint
    assert meta["config"]["threshold"] == meta["threshold_selection"]["chosen"] in (0.01, 1.0)
    assert meta["prompt_split"] == {"heldout_fraction": 0.2, "val_fraction": 0.1, "split_seed": 0}
    assert meta["finetune"]["export"] == ("adapter" if variant == "lora_adapter" else "merged")
    assert meta["config"]["adapter_only"] == (variant == "lora_adapter")
    assert meta["self_generated_data"]["counts"]["train"]["prompts"] > 0


@pytest.mark.slow
def test_killed_and_resumed_select_checkpoint_run_exports_the_same_student(paths_teacher, tmp_path):
    args = certainty_args(paths_teacher[1], tmp_path, "objective.select_checkpoint=true", "trainer.max_steps=8",
                          "trainer.val_check_interval=2",
                          "eval.after_training=false")
    train(tmp_path, "full", *args)
    command = ["fewstep-train", *args, f"export_dir={tmp_path / 'killed'}", f"hydra.run.dir={tmp_path / 'run_killed'}"]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    selected = tmp_path / "run_killed" / "checkpoints" / "selected.ckpt"
    last = tmp_path / "run_killed" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not (selected.exists() and last.exists()) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.kill()  # SIGKILL right after the first validation kept a checkpoint and wrote last.ckpt
    proc.wait()
    assert not (tmp_path / "killed").exists(), "the run finished before it could be killed"
    assert 0 < torch.load(last, weights_only=True)["global_step"] < 8
    train(tmp_path, "killed", *args, "ckpt_path=last")
    full, resumed = (json.loads((tmp_path / n / "sampler.json").read_text()) for n in ("full", "killed"))
    assert [c["step"] for c in full["threshold_selection"]["checkpoints"]] == [2, 4, 6, 8]
    assert resumed["threshold_selection"] == full["threshold_selection"]
    assert resumed["config"] == full["config"]
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "killed" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


# --- validation on validation data ------------------------------------------------------------------
def test_val_metrics_never_read_test_prompts(monkeypatch, tmp_path):
    """Every benchmark built while fitting (the val/ metrics of a student and of a teacher) draws its
    prompts from the val pairs only."""
    seen = []
    original = benchmarks.PathsBenchmark.__init__

    def recording(self, task, repeats, prompt_seed, pairs):
        seen.append(pairs.clone())
        original(self, task, repeats, prompt_seed, pairs)

    monkeypatch.setattr(benchmarks.PathsBenchmark, "__init__", recording)
    dm = PathsDataModule(nodes=6, successors=2, answer_len=4, graph_seed=1, batch_size=16, val_size=16)
    torch.manual_seed(0)
    teacher = TransformerDenoiser(dm.vocab_size, dm.seq_len, n_layer=1, n_head=2, d_model=16)
    lsd = LSDObjective({"_target_": "students.LearnedSampler", "steps": 2, "learn": ["coefficient", "grid"]}, teacher,
                       optimizer=partial(torch.optim.Adam, lr=0.01), vocab_size=dm.vocab_size, seq_len=dm.seq_len,
                       val_samples=8, divergence="transition")
    md = MaskedDiffusionObjective(partial(TransformerDenoiser, n_layer=1, n_head=2, d_model=16),
                                  partial(torch.optim.AdamW, lr=1e-3), dm.vocab_size, dm.seq_len, val_samples=8)
    md.val_sampler = BlockwiseSampler(block_size=4)
    for objective in (lsd, md):
        trainer = L.Trainer(accelerator="cpu", max_steps=1, val_check_interval=1, limit_val_batches=1, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path,
                            num_sanity_val_steps=0)
        trainer.fit(objective, datamodule=dm)
        assert "val/accuracy" in trainer.callback_metrics  # the benchmark did score samples
    assert len(seen) == 2
    val, test = {tuple(p) for p in dm.pairs["val"].tolist()}, {tuple(p) for p in dm.pairs["test"].tolist()}
    for pairs in seen:
        used = {tuple(p) for p in pairs.tolist()}
        assert used == val and not used & test
