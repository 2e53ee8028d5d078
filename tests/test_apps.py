"""fewstep-train and fewstep-eval as console scripts in a subprocess, and every number in
metrics.json recomputed from the files the run saved."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill.evaluation.metrics import EntropyMetric, GenNLLMetric, PairKLMetric
from teachers import HiddenMarkovSource

TINY_DATA = ["data.vocab_size=6", "data.seq_len=8", "data.batch_size=32", "data.val_size=64"]
TINY_NET = ["objective.network.n_layer=1", "objective.network.d_model=32", "objective.network.n_head=2"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A teacher trained for a few steps by the console script."""
    root = tmp_path_factory.mktemp("train")
    proc = run("fewstep-train", "experiment=teacher_markov", *TINY_DATA, *TINY_NET, "trainer.max_steps=6",
               "trainer.val_check_interval=3", "eval.steps=[8,2]", "eval.num_samples=64", "objective.val_samples=16",
               f"export_dir={root / 'teacher'}", f"hydra.run.dir={root / 'run'}", cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def test_train_exports_a_teacher_and_prints_its_table(trained):
    assert sorted(p.name for p in (trained / "teacher").iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((trained / "teacher" / "config.json").read_text())
    assert meta["data"]["vocab_size"] == 6 and meta["trained_steps"] == 6
    rows = json.loads((trained / "run" / "metrics.json").read_text())["rows"]
    assert [r["steps"] for r in rows] == [8, 2, None]
    assert (trained / "run" / "checkpoints" / "last.ckpt").is_file()
    assert list((trained / "run" / "csv").glob("*/metrics.csv"))


def test_eval_metrics_recompute_from_saved_samples(trained, tmp_path):
    out = tmp_path / "eval"
    proc = run("fewstep-eval", "teacher=saved", f"teacher.path={trained / 'teacher'}", *TINY_DATA, "sampler=dilated",
               "eval.steps=[8,4]", "eval.num_samples=100", "eval.batch_size=40", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| dilated | 4 |" in proc.stdout
    payload = json.loads((out / "metrics.json").read_text())
    chain = load_file(out / "chain.safetensors")
    assert chain["emission"].dtype == torch.float64 and torch.equal(chain["emission"], torch.eye(6, dtype=torch.float64))
    source = HiddenMarkovSource(chain["initial"], chain["transition"], chain["emission"], seq_len=8,
                                transition_support=chain["transition_support"], emission_support=chain["emission_support"])
    samples = load_file(out / "samples.safetensors")
    for row in payload["rows"]:
        key = "data" if row["steps"] is None else f"dilated/steps={row['steps']}"
        tokens = samples[key]
        assert tokens.shape == (100, 8)
        nll = (-source.log_prob(tokens)).sum().item() / tokens.numel()
        assert row["gen_nll"] == pytest.approx(nll, abs=1e-9)
        assert row["low_prob_rate"] == pytest.approx((~source.in_support(tokens)).double().mean().item(), abs=1e-12)
        entropy = EntropyMetric(6)
        entropy.update(tokens)
        assert row["entropy"] == pytest.approx(entropy.compute().item(), abs=1e-9)
        pair = PairKLMetric(source, 2, payload["config"]["eval"]["kl_smoothing"])
        pair.update(tokens)
        assert row["pair_kl_d2"] == pytest.approx(pair.compute().item(), abs=1e-9)
        if row["steps"] is not None:
            assert row["nfe"] == row["steps"] and row["tokens_per_forward"] == pytest.approx(8 / row["steps"])
            assert torch.all(samples[key + "/nfe"] == row["steps"])  # a fixed-step sampler: steps on every row
    assert payload["config"]["sampler"]["_target_"] == "teachers.DilatedSampler"


def test_eval_on_mismatched_data_is_a_clean_error(trained, tmp_path):
    proc = run("fewstep-eval", "teacher=saved", f"teacher.path={trained / 'teacher'}", *TINY_DATA, "data.seed=9",
               "eval.steps=[8]", f"hydra.run.dir={tmp_path / 'e'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "trained on other data" in proc.stderr and "data.seed=0" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_eval_oracle_hmm_and_paths_rows(tmp_path):
    proc = run("fewstep-eval", "teacher=oracle", "data=hmm", "data.hidden_states=4", "data.vocab_size=8", "data.seq_len=8",
               "sampler=confidence", "eval.steps=[8,2]", "eval.num_samples=50", f"hydra.run.dir={tmp_path / 'h'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "h" / "metrics.json").read_text())["rows"]
    assert {"pair_kl_d1", "pair_kl_d2", "pair_kl_d4", "bigram_kl", "low_prob_rate", "wall_s"} <= set(rows[0])
    assert "pair_kl_d8" not in rows[0]  # distance 8 does not fit in 8 tokens
    proc = run("fewstep-eval", "teacher=oracle", "data=paths", f"hydra.run.dir={tmp_path / 'p'}", cwd=tmp_path)
    assert proc.returncode == 2 and "needs a source with exact conditionals" in proc.stderr


def test_existing_export_dir_is_refused_before_training(tmp_path):
    (tmp_path / "taken").mkdir()
    proc = run("fewstep-train", "experiment=teacher_markov", f"export_dir={tmp_path / 'taken'}",
               f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert proc.returncode == 2 and "already exists" in proc.stderr
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_export_from_checkpoint_samples_token_identically(trained, tmp_path):
    from distill.apps.export import network_from_checkpoint, read_checkpoint
    from teachers import AncestralSampler, load_teacher

    ckpt = trained / "run" / "checkpoints" / "last.ckpt"
    proc = run("fewstep-export", str(ckpt), str(tmp_path / "exp"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    from_ckpt = network_from_checkpoint(torch.load(ckpt, map_location="cpu", weights_only=True))
    exported = load_teacher(tmp_path / "exp")
    a = AncestralSampler().sample(from_ckpt, 4, batch_size=16, seq_len=8, generator=torch.Generator().manual_seed(0))
    b = AncestralSampler().sample(exported, 4, batch_size=16, seq_len=8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.tokens, b.tokens)
    assert json.loads((tmp_path / "exp" / "config.json").read_text())["sha256"] == \
        json.loads((trained / "teacher" / "config.json").read_text())["sha256"]
    assert read_checkpoint(ckpt)["hyper_parameters"]["data_spec"]["vocab_size"] == 6
    proc = run("fewstep-export", str(ckpt), str(tmp_path / "exp"), cwd=tmp_path)
    assert proc.returncode == 2 and "already exists" in proc.stderr


def test_export_of_a_truncated_checkpoint_is_named(trained, tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes((trained / "run" / "checkpoints" / "last.ckpt").read_bytes()[:1000])
    proc = run("fewstep-export", str(bad), str(tmp_path / "exp"), cwd=tmp_path)
    assert proc.returncode == 2 and "cannot be read" in proc.stderr and "truncated" in proc.stderr
    assert not (tmp_path / "exp").exists()


def test_export_killed_midway_leaves_no_directory(tmp_path):
    script = f"""
import json, time
from teachers import TransformerDenoiser, save_teacher
def slow_dumps(*a, **k):
    print("weights written", flush=True)
    time.sleep(60)
json.dumps = slow_dumps
save_teacher(TransformerDenoiser(6, 8, n_layer=1, d_model=16, n_head=2), {str(tmp_path / 'exp')!r}, data={{}})
"""
    proc = subprocess.Popen(["python", "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "weights written"
    proc.kill()
    proc.wait()
    assert not (tmp_path / "exp").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu_is_a_clean_error(tmp_path):
    proc = run("fewstep-eval", "device=cuda", f"hydra.run.dir={tmp_path / 'e'}", cwd=tmp_path)
    assert proc.returncode == 2 and "sees no CUDA GPU; use device=cpu" in proc.stderr
    assert not (tmp_path / "e" / "metrics.json").exists()
