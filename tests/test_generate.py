"""fewstep-generate and the lm-evaluation-harness model, offline on a tiny LLaDA-like model that ships
its own code (auto_map), with a word-level tokenizer the tests write."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import students
from distill.apps import generate as app
from distill.apps.cli import CONF_DIR
from students import EntropyThresholdSampler
from teachers.hf import HFDiffusionLM
from tests.hf_fixtures import tiny_diffusion_lm

PROMPTS = ["the cat sat on", "a dog", "bird flew under the log", "then the", "mat"]  # different lengths, on purpose
TEACHER = ["teacher=llada", "teacher.dtype=float32", "teacher.mask_id=4"]
BLOCKWISE = ["sampler=blockwise", "sampler.order=confidence", "sampler.temperature=0", "sampler.block_size=4"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_diffusion_lm(tmp_path_factory.mktemp("gen") / "diff")


def config(model: Path, tmp_path: Path, *extra: str):
    teacher = ["teacher=oracle"] if "teacher=oracle" in extra else [*TEACHER, f"teacher.path={model}"]
    extra = [e for e in extra if e != "teacher=oracle"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("generate", overrides=[*teacher, f"prompts={tmp_path / 'in.jsonl'}", f"out={tmp_path / 'out.jsonl'}",
                                              *extra])


def write_prompts(path: Path, prompts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def alone(model: Path, sampler, prompt: str, gen_length: int, steps: int) -> tuple[list[int], float]:
    """The answer the sampler gives `prompt` on its own (no batch, no padding)."""
    teacher = HFDiffusionLM(str(model), dtype="float32", mask_id=4, trust_remote_code=True)
    ids = teacher.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    canvas = torch.tensor([ids + [teacher.mask_id] * gen_length])
    out = sampler.sample(teacher, steps, prompt=canvas, generator=torch.Generator().manual_seed(0))
    nfe = out.nfe_per_row[0].item() if out.nfe_per_row is not None else out.nfe
    return out.tokens[0, len(ids):].tolist(), nfe


def test_one_line_per_prompt_in_order(model, tmp_path):
    write_prompts(tmp_path / "in.jsonl", PROMPTS)
    cfg = config(model, tmp_path, *BLOCKWISE, "steps=4", "gen_length=8", "batch_size=2")
    app.generate(cfg)
    lines = read_lines(tmp_path / "out.jsonl")
    assert [line["index"] for line in lines] == list(range(len(PROMPTS)))
    from teachers import BlockwiseSampler

    sampler = BlockwiseSampler(temperature=0, block_size=4, order="confidence")
    tokenizer = HFDiffusionLM(str(model), dtype="float32", mask_id=4, trust_remote_code=True).tokenizer
    for prompt, line in zip(PROMPTS, lines):
        assert len(line["tokens"]) == 8 and line["nfe"] == 4
        if len(prompt.split()) == 5:  # the longest prompts sit in a batch without padding: exactly their answer alone
            assert line["tokens"] == alone(model, sampler, prompt, 8, 4)[0]
        assert line["completion"] == tokenizer.decode(line["tokens"], skip_special_tokens=True)
        expected = {"_target_": "teachers.BlockwiseSampler", "temperature": 0, "block_size": 4, "order": "confidence",
                    "steps": 4, "gen_length": 8, "seed": 0}
        assert {k: line["settings"].get(k) for k in expected} == expected


def test_chats_go_through_the_chat_template(model):
    tokenizer = HFDiffusionLM(str(model), dtype="float32", mask_id=4, trust_remote_code=True).tokenizer
    with pytest.raises(ValueError, match="has no chat template"):
        app.prompt_ids(tokenizer, {"messages": [{"role": "user", "content": "the cat"}]}, False, False)
    tokenizer.chat_template = "[CLS] {% for m in messages %}{{ m['content'] }} [SEP] {% endfor %}"
    chat = [{"role": "user", "content": "the cat"}]
    assert app.prompt_ids(tokenizer, {"messages": chat}, False, False) == [2, 5, 7, 3]  # [CLS] the cat [SEP]
    assert app.prompt_ids(tokenizer, {"prompt": "the cat"}, True, False) == [2, 5, 7, 3]  # chat_template=true
    assert app.prompt_ids(tokenizer, {"prompt": "the cat"}, False, False) == [5, 7]


def save_adapter_student(model: Path, path: Path) -> Path:
    """A LoRA adapter-only certainty student (adapters randomised, so it differs from the teacher)."""
    teacher = HFDiffusionLM(str(model), dtype="float32", mask_id=4, trust_remote_code=True)
    student = EntropyThresholdSampler(threshold=0.5, block_size=4, temperature=0.0,
                                      lora={"r": 2, "target_modules": ["q_proj", "v_proj"]})
    student.init_denoiser(teacher)
    torch.manual_seed(0)
    for name, p in student.denoiser.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    ref = {"kind": "hf_diffusion_lm", "path": str(model), "sha256": teacher.sha256}
    return students.save_student(student.adapter(), path, teacher=ref)


def test_a_saved_lora_student_generates(model, tmp_path):
    export = save_adapter_student(model, tmp_path / "export")
    write_prompts(tmp_path / "in.jsonl", PROMPTS[:2])
    app.generate(config(model, tmp_path, "sampler=saved", f"sampler.path={export}", "gen_length=6", "batch_size=1"))
    lines = read_lines(tmp_path / "out.jsonl")
    assert len(lines) == 2 and lines[0]["settings"]["adapter_only"] is True and lines[0]["settings"]["steps"] == 6
    for prompt, line in zip(PROMPTS, lines):
        tokens, nfe = alone(model, students.load(export), prompt, 6, 6)
        assert line["tokens"] == tokens and line["nfe"] == nfe and 1 <= nfe <= 6


@pytest.mark.parametrize("lines, overrides, message", [
    (None, [], "prompts=.* does not exist"),
    (['{"prompt": "the cat"}', '{"text": "a dog"}'], [], "line 2 needs exactly one of \"prompt\""),
    (['{"prompt": "the cat"', ], [], "line 1 is not JSON"),
    (['{"messages": [{"role": "user"}]}'], [], "messages must be a non-empty list"),
    (['{"prompt": "the cat"}'], ["gen_length=0"], "gen_length must be >= 1"),
    (['{"prompt": "the cat"}'], ["exists"], "already exists"),
    (['{"prompt": "the cat"}'], ["teacher=oracle"], "needs a transformers teacher"),
])
def test_bad_input_is_named_before_the_model_loads(tmp_path, lines, overrides, message, monkeypatch):
    monkeypatch.setattr(app, "build", lambda cfg: pytest.fail("the model was loaded"))
    if lines is not None:
        (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    if "exists" in overrides:
        (tmp_path / "out.jsonl").write_text("")
    overrides = [o for o in overrides if o != "exists"]
    cfg = config(tmp_path / "no-model", tmp_path, *BLOCKWISE, *overrides)
    with pytest.raises((ValueError, FileNotFoundError, FileExistsError), match=message):
        app.generate(cfg)


def test_cli_exits_2_with_the_message(model, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["fewstep-generate", *TEACHER, f"teacher.path={model}", *BLOCKWISE,
                                      f"prompts={tmp_path / 'missing.jsonl'}", f"out={tmp_path / 'out.jsonl'}",
                                      f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as exit_info:
        app.main()
    assert exit_info.value.code == 2 and "missing.jsonl does not exist" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "out.jsonl").exists()


# --- lm-evaluation-harness ------------------------------------------------------------------------
TASK = """task: fewstep_words
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{q}}}}"
doc_to_target: "{{{{a}}}}"
generation_kwargs:
  until: ["{stop}"]
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def test_lm_eval_runs_a_local_task_through_a_lora_student(model, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    from distill.apps import lm_eval_model

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    export = save_adapter_student(model, tmp_path / "export")
    prompts = ["the cat sat", "a dog ran", "bird flew under", "then the mat"]
    stop = " the"
    answers = [alone(model, students.load(export), p, 6, 6) for p in prompts]
    tokenizer = HFDiffusionLM(str(model), dtype="float32", mask_id=4, trust_remote_code=True).tokenizer
    texts = [tokenizer.decode(tokens, skip_special_tokens=True).split(stop)[0] for tokens, _ in answers]
    targets = [t if i % 2 == 0 else "no such answer" for i, t in enumerate(texts)]  # half right by construction
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    data = tasks / "words.jsonl"
    data.write_text("".join(json.dumps({"q": q, "a": a}) + "\n" for q, a in zip(prompts, targets)))
    (tasks / "fewstep_words.yaml").write_text(TASK.format(data=data, stop=stop))
    args = ",".join([f"teacher=llada,teacher_path={model},teacher_dtype=float32,teacher_mask_id=4",
                     f"sampler=saved,sampler_path={export},gen_length=6"])
    lm_eval_model.main(["--model", "fewstep", "--model_args", args, "--tasks", "fewstep_words", "--include_path",
                        str(tasks), "--batch_size", "2", "--output_path", str(tmp_path / "results"), "--log_samples"])
    results = json.loads(next((tmp_path / "results").rglob("results_*.json")).read_text())
    samples = [json.loads(line) for line in next((tmp_path / "results").rglob("samples_fewstep_words_*.jsonl"))
               .read_text().splitlines()]
    samples.sort(key=lambda s: s["doc_id"])
    assert [s["filtered_resps"][0] for s in samples] == texts
    recomputed = sum(s["filtered_resps"][0] == s["target"] for s in samples) / len(samples)
    assert results["results"]["fewstep_words"]["exact_match,none"] == recomputed == 0.5
    info = results["config"]["fewstep"]
    assert info["answers"] == 4 and info["nfe_per_answer"] == pytest.approx(sum(n for _, n in answers) / 4)


def test_lm_eval_loglikelihood_is_refused_with_the_reason(model):
    pytest.importorskip("lm_eval")
    from distill.apps.lm_eval_model import FewstepLM

    lm = FewstepLM(teacher="llada", teacher_path=str(model), teacher_dtype="float32", teacher_mask_id=4,
                   sampler="blockwise", steps=2, gen_length=2)
    with pytest.raises(NotImplementedError, match="no exact log-likelihood.*generate_until"):
        lm.loglikelihood([])
    with pytest.raises(NotImplementedError, match="generate_until"):
        lm.loglikelihood_rolling([])
    with pytest.raises(ValueError, match="do not fit conf/generate.yaml"):
        FewstepLM(teacher="llada", teacher_path=str(model), sampler="blockwise", sampler_nope=1)


def test_completion_stops_at_the_first_end_token(model):
    tokenizer = HFDiffusionLM(str(model), dtype="float32", mask_id=4, trust_remote_code=True).tokenizer
    assert app.decode(tokenizer, [5, 7, 3, 6, 3], end_id=3) == "the cat"  # [SEP] ends BERT-style text
    assert app.decode(tokenizer, [5, 7, 3, 6], end_id=None) == "the cat a"  # no end id: specials dropped only
