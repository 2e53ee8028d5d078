"""Every distillation objective on transformers teachers, offline: a tiny BertForMaskedLM and a tiny
LLaDA-style model with its own code, both trained a little on a prompt file the tests write so that
their own answers are right on part of the prompts. Each objective trains a few steps through
`fewstep-train`, exports, and the export is loaded (`students.load`, `fewstep-eval sampler=saved`)
and sampled."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import students
from distill.data.prompts import PromptsDataModule
from distill.data.self_generated_prompts import SelfGeneratedPromptsDataModule
from distill.apps.teacher_setup import hf_diffusion_lm, hf_masked_lm
from distill.data.text import TextDataModule
from students.entropy_threshold import EntropyThresholdSampler
from teachers.hf import HFDiffusionLM, HFMaskedLM

from tests.hf_fixtures import corpus, fit_on_prompts, qa_file, tiny_bert, tiny_diffusion_lm
from tests.test_export_path import assert_same_export, export

QA = ["data.question_field=q", "data.answer_field=a", "data.prompt_len=8", "data.answer_len=4", "data.checker=exact"]
LORA_TARGETS = {"bert": "[query,value]", "diff": "[q_proj,v_proj]"}


@pytest.fixture(scope="module")
def hf(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_objectives")
    qa = qa_file(root / "qa.jsonl", rows=60)
    return {"bert": fit_on_prompts(tiny_bert(root / "bert"), qa), "diff": fit_on_prompts(tiny_diffusion_lm(root / "diff"), qa),
            "qa": qa, "corpus": corpus(root / "a.txt"), "root": root}


def teacher_args(hf, name: str) -> list[str]:
    if name == "bert":
        return ["teacher=hf_masked_lm", f"teacher.path={hf['bert']}"]
    # LLaDA's config with the tiny model: its own code, the tokenizer's mask token, float32 on the CPU
    return ["teacher=llada", f"teacher.path={hf['diff']}", "teacher.mask_id=null", "teacher.dtype=float32"]


def build_teacher(hf, name: str, datamodule):
    if name == "bert":
        return hf_masked_lm(str(hf["bert"]), datamodule)
    return hf_diffusion_lm(str(hf["diff"]), datamodule, dtype="float32", trust_remote_code=True)


def load_teacher(hf, name: str) -> torch.nn.Module:
    return HFMaskedLM(str(hf["bert"])) if name == "bert" else HFDiffusionLM(str(hf["diff"]), dtype="float32",
                                                                              trust_remote_code=True)


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=300)


# --- lsd and joint_head on a text corpus -----------------------------------------------------------
@pytest.mark.parametrize("experiment, nfe, name", [  # each objective on one model in the fast suite (~15-20 s each)
    ("lsd_teacher", 4, "bert"), pytest.param("lsd_teacher", 4, "diff", marks=pytest.mark.slow),
    ("joint_head_teacher", 4, "diff"), pytest.param("joint_head_teacher", 4, "bert", marks=pytest.mark.slow)])
def test_text_objectives_train_export_load_and_sample(hf, tmp_path, name, experiment, nfe):
    student_args = ["student.steps=4"] if experiment == "lsd_teacher" else ["student.tokens_per_forward=4"]
    proc = run("fewstep-train", f"experiment={experiment}", *teacher_args(hf, name), "data=text_files",
               f"data.files=[{hf['corpus']}]", "data.seq_len=16", "data.batch_size=4", *student_args,
               "trainer.max_steps=2", "trainer.val_check_interval=2", "objective.val_samples=4", "eval.num_samples=8",
               f"export_dir={tmp_path / 'student'}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # fewstep-export of the run's checkpoint writes what the run wrote
    assert_same_export(tmp_path / "student", export(tmp_path / "run" / "checkpoints" / "final.ckpt", tmp_path / "again"))
    student = students.load(tmp_path / "student")
    assert student.teacher_ref["path"] == str(hf[name]) and student.teacher_ref["sha256"]
    data = TextDataModule(files=[str(hf["corpus"])], tokenizer=str(hf[name]), seq_len=16, trust_remote_code=name == "diff")
    teacher = build_teacher(hf, name, data)
    students.check_teacher(student.teacher_ref, teacher, data.spec())
    out = student.sample(teacher, batch_size=5, seq_len=16, generator=torch.Generator().manual_seed(0))
    assert out.nfe == nfe and not (out.tokens == teacher.mask_id).any()
    assert not torch.isin(out.tokens, teacher.special_ids).any()
    if experiment == "joint_head_teacher":
        assert out.head_passes == 16 and student.hidden_size == 16  # one token per head pass, sized off the teacher
    row = json.loads((tmp_path / "run" / "metrics.json").read_text())["rows"][0]
    assert row["nfe"] == nfe and row["entropy"] > 0


# --- certainty forcing on a prompt file ------------------------------------------------------------
# each variant on one model in the fast suite, on the other with the slow one (~25 s each)
CERTAINTY_RUNS = [(name, variant, False) if fast else pytest.param(name, variant, False, marks=pytest.mark.slow)
                  for variant, fast_name in (("lora_merged", "bert"), ("lora_adapter", "diff"), ("full", "bert"))
                  for name in ("bert", "diff") for fast in [name == fast_name]]
CERTAINTY_RUNS += [pytest.param("bert", "full", True, marks=pytest.mark.slow),  # + fewstep-eval: ~30 s each
                   pytest.param("diff", "lora_adapter", True, marks=pytest.mark.slow)]


@pytest.mark.parametrize("name, variant, evaluate", CERTAINTY_RUNS)
def test_certainty_trains_exports_loads_and_evaluates(hf, tmp_path, name, variant, evaluate):
    finetune = {"lora_merged": [f"student.lora.target_modules={LORA_TARGETS[name]}", "student.lora.r=2"],
                "lora_adapter": [f"student.lora.target_modules={LORA_TARGETS[name]}", "student.lora.r=2",
                                 "objective.export_adapter=true"],
                "full": ["student.lora=null"]}[variant]
    proc = run("fewstep-train", "experiment=certainty_prompts", *teacher_args(hf, name), f"data.file={hf['qa']}", *QA,
               f"data.cache_dir={tmp_path / 'cache'}", *finetune, "trainer.max_steps=3", "trainer.val_check_interval=3",
               "objective.thresholds=[0.01,1.0]", "eval.num_samples=12", f"export_dir={tmp_path / 'student'}",
               f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "threshold chosen on" in proc.stdout
    # fewstep-export of the run's checkpoint writes what the run wrote (merged, adapter-only or full weights)
    assert_same_export(tmp_path / "student", export(tmp_path / "run" / "checkpoints" / "final.ckpt", tmp_path / "again"))
    export_dir = tmp_path / "student"
    meta = json.loads((export_dir / "sampler.json").read_text())
    assert meta["config"]["denoiser"]["class"] == ("HFMaskedLM" if name == "bert" else "HFDiffusionLM")
    assert meta["config"]["eos_id"] == 3  # the data's end token ([SEP]): the decoder stops there
    assert meta["config"]["threshold"] == meta["threshold_selection"]["chosen"] in (0.01, 1.0)
    counts = meta["self_generated_data"]["counts"]["train"]
    assert 0 < counts["kept"] <= counts["prompts"] and counts["kept"] + counts["rejected"] == counts["prompts"]
    teacher = load_teacher(hf, name)
    trainable = meta["finetune"]["trainable_parameters"]
    if variant == "lora_adapter":  # the adapter alone; the base is the teacher, found by path + SHA-256
        saved = load_file(export_dir / "model.safetensors")
        assert saved and all("lora_" in k for k in saved) and sum(v.numel() for v in saved.values()) == trainable
        assert not (export_dir / "denoiser").exists() and meta["config"]["adapter_only"]
    else:  # merged LoRA or all weights: save_pretrained in denoiser/, loadable by transformers as it is
        assert load_file(export_dir / "model.safetensors") == {} and "files" in meta
        assert not any("lora" in k for k in load_file(export_dir / "denoiser" / "model.safetensors"))
        n_teacher = sum(p.numel() for p in teacher.parameters())
        assert (trainable == n_teacher) == (variant == "full")
    if name == "diff" and variant != "lora_adapter":  # its denoiser/ holds the model's own code
        with pytest.raises(ValueError, match="ships code.*trust_remote_code=True"):
            students.load(export_dir)
    student = students.load(export_dir, trust_remote_code=name == "diff")
    data = PromptsDataModule(str(hf["qa"]), str(hf[name]), question_field="q", answer_field="a", prompt_len=8,
                             answer_len=4, checker="exact", trust_remote_code=name == "diff")
    students.check_teacher(student.teacher_ref, teacher, data.spec())
    canvas = data.benchmark().canvases(6, teacher.mask_id, torch.Generator())
    out = student.sample(teacher, prompt=canvas)
    assert not (out.tokens == teacher.mask_id).any() and (out.nfe_per_row <= 4).all() and (out.nfe_per_row >= 1).all()
    assert torch.equal(out.tokens[:, :8], canvas[:, :8])
    if not evaluate:
        return
    # the interface: fewstep-eval with the teacher and the plain prompt data
    proc = run("fewstep-eval", *teacher_args(hf, name), "data=prompts_json", f"data.file={hf['qa']}", *QA,
               "sampler=saved", f"sampler.path={export_dir}", "eval.num_samples=12", f"hydra.run.dir={tmp_path / 'eval'}",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((tmp_path / "eval" / "metrics.json").read_text())["rows"][0]
    assert row["sampler"] == "certainty" and 1 <= row["nfe"] <= 4 and 0 <= row["accuracy"] <= 1


# --- LoRA export on transformers models ------------------------------------------------------------
@pytest.mark.parametrize("name, targets", [("bert", ["query", "value"]), ("diff", "all-linear")])
def test_lora_merged_export_gives_the_adapter_models_logits(hf, tmp_path, name, targets):
    teacher = load_teacher(hf, name)
    student = EntropyThresholdSampler(threshold=0.2, lora={"r": 4, "alpha": 8, "target_modules": targets})
    student.init_denoiser(teacher)
    with torch.no_grad():
        for param_name, p in student.denoiser.named_parameters():
            if "lora_B" in param_name:
                p.normal_(0, 0.3)  # B = 0 at init: make the adapter change the model
    student.eval()
    ref = {"kind": teacher.kind, "path": teacher.path, "sha256": teacher.sha256}
    students.save_student(student.merged(), tmp_path / "merged", teacher=ref)
    students.save_student(student.adapter(), tmp_path / "adapter", teacher=ref)
    x = torch.randint(5, 20, (5, 12), generator=torch.Generator().manual_seed(0))
    x[:, 1::2] = teacher.mask_id
    with torch.no_grad():
        expected = student.denoiser(x)
        if name == "diff":  # the merged denoiser ships LLaDA/Dream-style code; the adapter runs the teacher's
            with pytest.raises(ValueError, match=r"ships code its denoiser runs \(denoiser/.*\.py.*trust_remote_code=True"):
                students.load(tmp_path / "merged")
        merged = students.load(tmp_path / "merged", trust_remote_code=name == "diff")
        adapter = students.load(tmp_path / "adapter")
        assert (expected - teacher(x)).abs().max() > 1e-3  # the adapter matters
        assert torch.allclose(merged.denoiser(x), expected, atol=1e-5)
        assert torch.allclose(adapter.network(teacher)(x), expected, atol=1e-5)
    assert not any(p.requires_grad for p in teacher.parameters())  # binding the adapter left the teacher alone
    assert not any("lora" in k for k in teacher.model.state_dict())
    a, b = merged.sample(teacher, prompt=x), adapter.sample(teacher, prompt=x)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.nfe_per_row, b.nfe_per_row)
    (tmp_path / "merged" / "denoiser" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="does not match the SHA-256"):
        students.load(tmp_path / "merged", trust_remote_code=True)


def test_full_weight_copy_trains_apart_from_the_teacher(hf):
    teacher = load_teacher(hf, "diff")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = EntropyThresholdSampler(lora=None)
    student.init_denoiser(teacher)
    params = [p for p in student.parameters() if p.requires_grad]
    assert sum(p.numel() for p in params) == sum(p.numel() for p in teacher.parameters())
    loss = student.denoiser(torch.full((2, 6), teacher.mask_id)).logsumexp(-1).mean()
    loss.backward()
    torch.optim.SGD(params, lr=1.0).step()
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert not torch.allclose(student.denoiser.model.lm_head.weight, teacher.model.lm_head.weight)


# --- self-generated prompt data ---------------------------------------------------------------------
def test_self_generated_prompt_data_keep_only_checked_answers_and_never_held_out_rows(hf, tmp_path):
    kwargs = dict(file=str(hf["qa"]), tokenizer=str(hf["bert"]), question_field="q", answer_field="a", prompt_len=8,
                  answer_len=4, checker="exact", val_fraction=0.2, select_fraction=0.25, cache_dir=str(tmp_path))
    data = SelfGeneratedPromptsDataModule(**kwargs)
    teacher = load_teacher(hf, "bert")
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    data.use_teacher(teacher)
    dataset = data.load()
    held_out, select, fit = (set(i.tolist()) for i in (data.val_index, data.select_index, data.fit_index))
    assert not held_out & select and not held_out & fit and not select & fit
    assert held_out | select | fit == set(range(60)) and len(held_out) == 12 and len(select) == 12
    for split, rows in (("train", fit), ("validation", select)):
        kept = torch.tensor(dataset[split]["tokens"])
        assert set(dataset[split]["row"]) <= rows and data.check(kept).all()  # only checked answers ...
        canvases = data.canvases(torch.tensor(sorted(rows)), teacher.mask_id)
        from distill.data.self_generated_prompts import decode_rows

        decoded = decode_rows(teacher, canvases, data.sampler, 4, 64)
        ok = data.check(decoded)
        assert 0 < int(ok.sum()) < len(rows) or split == "validation"  # the teacher is right on part of them
        assert {tuple(t) for t in kept.tolist()} == {tuple(t) for t in decoded[ok].tolist()}  # ... all of them
        counts = data.provenance["counts"][split]
        assert counts == {"prompts": len(rows), "kept": int(ok.sum()), "rejected": int((~ok).sum())}
    assert data.provenance["teacher_sha256"] == teacher.sha256 and data.provenance["sampler"]["temperature"] == 0.0
    batch = next(iter(data.train_dataloader()))
    assert data.check(batch["tokens"]).all() and batch["answer_mask"][:, 8:].all()
    # reused from disk with the same teacher, file and split: no new decoding
    again = SelfGeneratedPromptsDataModule(**kwargs)
    again.use_teacher(teacher)
    n = len(calls)
    assert again.load()["train"]["tokens"] == dataset["train"]["tokens"] and len(calls) == n
