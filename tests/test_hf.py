"""transformers teachers, text corpora and the judge, all offline: tiny models built from configs
and saved with save_pretrained, a word-level tokenizer and a corpus the tests write."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch

import students
from distill.evaluation.metrics import GenPPLMetric
from distill.apps.teacher_setup import hf_diffusion_lm, hf_masked_lm
from distill.data.text import TextDataModule, pack_blocks
from teachers import AncestralSampler
from teachers.hf import HFDiffusionLM, HFMaskedLM

from tests.hf_fixtures import corpus, qa_file, tiny_bert, tiny_diffusion_lm, tiny_gpt2, word_tokenizer


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {"bert": tiny_bert(root / "bert"), "gpt2": tiny_gpt2(root / "gpt2"), "diff": tiny_diffusion_lm(root / "diff"),
            "corpus": corpus(root / "a.txt"), "root": root}


def canvas(model, batch: int = 3, length: int = 10) -> torch.Tensor:
    x = torch.randint(5, model.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0))
    x[:, ::2] = model.mask_id
    return x


def test_masked_lm_adapter_contract(models):
    model = HFMaskedLM(str(models["bert"]))
    x = canvas(model)
    logits = model(x)
    assert model.mask_id == 4 and model.vocab_size == 20 and logits.shape == (3, 10, 20)
    never = [0, 4]  # pad (not an end token here: the tokenizer has none) and mask; unk, cls, sep stay as the model says
    assert (logits[..., never] == -1e4).all() and (torch.softmax(logits, -1)[..., never] == 0).all()
    assert (logits[..., [1, 2, 3]] > -1e4).all() and model.eos_id is None
    assert torch.allclose(model.lm_head(model.hidden_states(x)), logits, atol=1e-5)
    assert model.embed(x).shape == (3, 10, 16) and not any(p.requires_grad for p in model.parameters())
    assert model.sha256 is not None and len(model.sha256) == 64


def test_diffusion_lm_runs_its_code_only_when_trusted(models):
    with pytest.raises(ValueError, match="ships its own code.*teacher.trust_remote_code=true"):
        HFDiffusionLM(str(models["diff"]))
    model = HFDiffusionLM(str(models["diff"]), dtype="float32", trust_remote_code=True)
    shifted = HFDiffusionLM(str(models["diff"]), dtype="float32", trust_remote_code=True, shift_logits=True)
    x = canvas(model)
    assert torch.equal(shifted(x)[:, 1:], model(x)[:, :-1]) and torch.equal(shifted(x)[:, 0], model(x)[:, 0])
    assert torch.allclose(model.lm_head(model.hidden_states(x)), model(x), atol=1e-5)


def test_tokenizer_without_mask_token_is_named(tmp_path):
    path = tiny_diffusion_lm(tmp_path / "nomask", with_mask=False)
    with pytest.raises(ValueError, match="has no mask token.*teacher.mask_id=ID"):
        HFDiffusionLM(str(path), dtype="float32", trust_remote_code=True)
    model = HFDiffusionLM(str(path), dtype="float32", trust_remote_code=True, mask_id=3)  # LLaDA-style: id from config
    assert model.mask_id == 3


def test_text_blocks_are_the_packed_token_stream(models):
    data = TextDataModule(files=[str(models["corpus"])], tokenizer=str(models["bert"]), seq_len=16, batch_size=4)
    tokenizer = word_tokenizer(models["root"] / "tok")
    lines = [line for line in models["corpus"].read_text().splitlines() if line.strip()]
    expected = pack_blocks([tokenizer(line, add_special_tokens=False)["input_ids"] for line in lines], 16)
    assert torch.equal(data.blocks, expected)
    assert data.vocab_size == 20 and data.spec()["kind"] == "text"
    batch = next(iter(data.train_dataloader()))
    assert batch["tokens"].shape == (4, 16) and batch["answer_mask"].all()


def test_a_corpus_with_no_usable_rows_is_named(models, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n")
    with pytest.raises(ValueError, match="no usable rows"):
        TextDataModule(files=[str(empty)], tokenizer=str(models["bert"]), seq_len=16)
    with pytest.raises(FileNotFoundError, match="do not exist"):
        TextDataModule(files=[str(tmp_path / "nope.txt")], tokenizer=str(models["bert"]))


def test_gen_ppl_equals_a_hand_computation(models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    judge = AutoModelForCausalLM.from_pretrained(models["gpt2"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(models["gpt2"])
    texts = ["the cat sat on the mat", "a dog ran", "bird flew under tree and then the log"]
    metric = GenPPLMetric(judge, tokenizer, decode=lambda _: texts, batch_size=2)
    metric.update(torch.zeros(3, 1, dtype=torch.long))
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            logp = torch.log_softmax(judge(input_ids=ids).logits[0].double(), -1)
            total -= sum(logp[i, ids[0, i + 1]].item() for i in range(ids.shape[1] - 1))
            count += ids.shape[1] - 1
    assert metric.compute().item() == pytest.approx(math.exp(total / count), abs=1e-4)


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=300)


def test_eval_a_masked_lm_on_text_with_a_judge(models, tmp_path):
    out = tmp_path / "eval"
    proc = run("fewstep-eval", "teacher=hf_masked_lm", f"teacher.path={models['bert']}", "data=text_files",
               f"data.files=[{models['corpus']}]", "data.seq_len=16", "sampler=ancestral", "eval.steps=[4]",
               "eval.num_samples=12", f"eval.judge_path={models['gpt2']}", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "metrics.json").read_text())["rows"]
    assert [r["steps"] for r in rows] == [4, None]
    assert all(r["gen_ppl"] > 1 and r["entropy"] > 0 for r in rows)
    text = (out / "samples.txt").read_text()
    assert "## ancestral/steps=4" in text and "[MASK]" not in text and len(text.splitlines()) == 2 * (12 + 1) + 1


@pytest.mark.parametrize("teacher", ["hf_masked_lm", "diffusion"])
def test_lsd_joint_trains_exports_and_samples_on_a_transformers_teacher(models, tmp_path, teacher):
    if teacher == "diffusion":
        teacher_args = ["teacher=dream", f"teacher.path={models['diff']}", "teacher.dtype=float32"]
    else:
        teacher_args = ["teacher=hf_masked_lm", f"teacher.path={models['bert']}"]
    proc = run("fewstep-train", "experiment=lsd_joint_teacher", *teacher_args, "data=text_files",
               f"data.files=[{models['corpus']}]", "data.seq_len=16", "data.batch_size=8", "student.steps=4",
               "trainer.max_steps=2", "trainer.val_check_interval=2", "objective.val_samples=4", "eval.num_samples=8",
               f"export_dir={tmp_path / 'student'}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    student = students.load(tmp_path / "student")
    assert student.teacher_ref["path"] == str(models["bert" if teacher == "hf_masked_lm" else "diff"])
    builder = hf_masked_lm if teacher == "hf_masked_lm" else hf_diffusion_lm
    data = TextDataModule(files=[str(models["corpus"])], tokenizer=student.teacher_ref["path"], seq_len=16)
    kwargs = {"dtype": "float32", "trust_remote_code": True, "shift_logits": True} if teacher == "diffusion" else {}
    model = builder(str(student.teacher_ref["path"]), data, **kwargs)
    students.check_teacher(student.teacher_ref, model, data.spec())
    out = student.sample(model, batch_size=5, seq_len=16, generator=torch.Generator().manual_seed(0))
    assert out.nfe == 4 and not torch.isin(out.tokens, torch.tensor([0, model.mask_id])).any()  # pad, mask
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())["rows"]
    assert rows[0]["sampler"] == "lsd_joint" and rows[0]["nfe"] == 4


def test_reference_sampler_never_draws_special_tokens(models):
    model = HFMaskedLM(str(models["bert"]))
    out = AncestralSampler().sample(model, 4, batch_size=8, seq_len=12, generator=torch.Generator().manual_seed(0))
    assert not torch.isin(out.tokens, torch.tensor([0, 4])).any()  # pad, mask


def test_last_number_checker():
    from distill.data.prompts import last_number

    assert last_number("so 3 + 4 = 7\n#### 1,234") == "1234" and last_number("no digits") is None
    assert last_number("it costs 12.") == "12"


def test_prompt_rows_layout_split_and_accuracy(models, tmp_path):
    from distill.data.prompts import PromptsDataModule

    data = PromptsDataModule(str(qa_file(tmp_path / "qa.jsonl")), str(models["bert"]), question_field="q",
                             answer_field="a", prompt_len=8, answer_len=4, checker="exact", val_fraction=0.25)
    assert data.tokens.shape == (40, 12) and set(data.train_index.tolist()).isdisjoint(data.val_index.tolist())
    assert (data.tokens[:, 8:][data.tokens[:, 8:] == 0]).numel() == 0  # answers end with [SEP], not padding
    bench = data.benchmark()
    canvases = bench.canvases(10, 4, torch.Generator())
    truth = bench.true_samples(canvases, torch.Generator())
    metric = bench.metrics()["accuracy"]
    metric.update(truth)
    assert metric.compute().item() == 1.0
    wrong = truth.clone()
    wrong[:5, 8] = 5 + (wrong[:5, 8] - 4) % 15  # another word first
    metric.reset()
    metric.update(wrong)
    assert metric.compute().item() == 0.5


def test_prompts_without_usable_rows_are_named(models, tmp_path):
    from distill.data.prompts import PromptsDataModule

    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "x"}))
    with pytest.raises(ValueError, match="no usable rows.*data.question_field"):
        PromptsDataModule(str(tmp_path / "bad.jsonl"), str(models["bert"]))


def test_eval_a_masked_lm_on_prompts(models, tmp_path):
    out = tmp_path / "eval"
    proc = run("fewstep-eval", "teacher=hf_masked_lm", f"teacher.path={models['bert']}", "data=prompts_json",
               f"data.file={qa_file(tmp_path / 'qa.jsonl')}", "data.question_field=q", "data.answer_field=a",
               "data.prompt_len=8", "data.answer_len=4", "data.checker=exact", "sampler=blockwise", "sampler.block_size=4",
               "eval.steps=[4,2]", "eval.num_samples=10", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "metrics.json").read_text())["rows"]
    assert [r["steps"] for r in rows] == [4, 2, None] and rows[-1]["accuracy"] == 1.0
    assert all(0 <= r["accuracy"] <= 1 and r["nfe"] == r["steps"] for r in rows[:2])
