"""fewstep-generate: completions for a JSONL file of prompts, from a transformers teacher with a
reference sampler or from a distilled student.

    fewstep-generate teacher=llada teacher.path=DIR sampler=blockwise sampler.order=confidence \
        sampler.temperature=0 steps=64 gen_length=64 sampler.block_size=32 prompts=IN.jsonl out=OUT.jsonl
    fewstep-generate teacher=hf_masked_lm teacher.path=DIR sampler=saved sampler.path=EXPORT \
        prompts=IN.jsonl out=OUT.jsonl

IN.jsonl: one object per line, {"prompt": "text"} or {"messages": [{"role": ..., "content": ...}, ...]}
(a chat, laid out with the tokenizer's chat template). OUT.jsonl: one line per prompt, in input
order: {"index", "completion" (text, cut at the first end token), "tokens" (the gen_length answer
ids, end tokens kept), "nfe" (denoiser forward passes of that row), "settings" (the resolved
sampler settings)}. The same `build` / `complete` serve the lm-evaluation-harness model
(distill/apps/lm_eval_model.py), so one place turns a config into teacher + sampler.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm

import students
from distill.apps.cli import CONF_DIR, check_override_keys, user_errors

TEXT_TEACHERS = ("hf_masked_lm", "hf_diffusion_lm")  # teacher_setup functions whose denoiser has a tokenizer


# --- input -------------------------------------------------------------------------------------
def _check_messages(messages, where: str) -> None:
    ok = isinstance(messages, list) and messages and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages)
    if not ok:
        raise ValueError(f"{where}: messages must be a non-empty list of {{\"role\": ..., \"content\": ...}} objects")


def read_prompts(path: str | os.PathLike) -> list[dict]:
    """The rows of a prompts JSONL file, each {"prompt": str} or {"messages": [...]}, checked line by line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts={path} does not exist; give a JSONL file with one {{\"prompt\": ...}} or "
                                "{\"messages\": [...]} object per line")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where} is not JSON ({err.msg}); write one JSON object per line") from None
        if not isinstance(row, dict) or ("prompt" in row) == ("messages" in row):
            raise ValueError(f"{where} needs exactly one of \"prompt\" (text) or \"messages\" (a chat), e.g. "
                             "{\"prompt\": \"Question: ...\"}")
        if "prompt" in row and not isinstance(row["prompt"], str):
            raise ValueError(f"{where}: prompt must be a string, got {type(row['prompt']).__name__}")
        if "messages" in row:
            _check_messages(row["messages"], where)
        rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no prompts; write one JSON object per line")
    return rows


def check_request(cfg: DictConfig) -> None:
    """Everything about the request that can be wrong, checked before any model is loaded."""
    if cfg.gen_length < 1:
        raise ValueError(f"gen_length must be >= 1 (answer tokens per prompt), got {cfg.gen_length}")
    if cfg.steps is not None and cfg.steps < 1:
        raise ValueError(f"steps must be >= 1 or null (one token per step, or a student's own count), got {cfg.steps}")
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {cfg.batch_size}")
    target = str(cfg.teacher.get("_target_", ""))
    if target.rsplit(".", 1)[-1] not in TEXT_TEACHERS:
        raise ValueError(f"fewstep-generate needs a transformers teacher with a tokenizer (teacher=llada, dream or "
                         f"hf_masked_lm with teacher.path=DIR), got {target}")
    if str(cfg.device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={cfg.device} but this torch sees no CUDA GPU; use device=cpu")


# --- teacher + sampler --------------------------------------------------------------------------
@dataclass
class Generation:
    """A teacher and a sampler ready to complete prompts, with the settings every output line records."""

    denoiser: nn.Module
    sampler: object
    tokenizer: object
    steps: int
    settings: dict

    @property
    def end_id(self) -> int | None:
        """The end-of-text id: the denoiser's, else the tokenizer's eos, else its sep (BERT ends text with [SEP])."""
        for end in (getattr(self.denoiser, "eos_id", None), self.tokenizer.eos_token_id, self.tokenizer.sep_token_id):
            if end is not None:
                return end
        return None


def build(cfg: DictConfig) -> Generation:
    """Teacher and sampler from a composed generate config (teacher=..., sampler=..., steps, gen_length)."""
    sampler = instantiate(cfg.sampler)  # a student export fails here (missing, damaged) before the teacher loads
    denoiser = instantiate(cfg.teacher, datamodule=None)
    if hasattr(sampler, "teacher_ref"):  # a loaded student: is this the teacher it was distilled from?
        students.check_teacher(sampler.teacher_ref, denoiser)
    if isinstance(sampler, nn.Module):
        sampler = sampler.to(cfg.device)
    denoiser = denoiser.to(cfg.device)
    steps = cfg.steps
    if steps is None:  # a student's own step count, else one token per step (the reference decoders' default)
        steps = sampler.default_steps(cfg.gen_length)[0] if hasattr(sampler, "default_steps") else cfg.gen_length
    if hasattr(sampler, "check_steps"):
        sampler.check_steps(steps)
    elif not hasattr(sampler, "default_steps") and steps > cfg.gen_length:
        raise ValueError(f"steps={steps} exceeds gen_length={cfg.gen_length}: a step reveals at least one token")
    if hasattr(sampler, "teacher_ref"):
        settings = {"student": getattr(sampler, "export_path", None), "method": getattr(sampler, "method", None),
                    **sampler.config}
    else:
        settings = OmegaConf.to_container(cfg.sampler, resolve=True)
    settings = {**settings, "steps": steps, "gen_length": cfg.gen_length, "seed": cfg.seed}
    return Generation(denoiser, sampler, denoiser.tokenizer, steps, settings)


# --- prompts to tokens to text ------------------------------------------------------------------
def prompt_ids(tokenizer, row: dict, chat_template: bool, add_special_tokens: bool) -> list[int]:
    """Token ids of one prompt row; chats (and plain prompts with chat_template) go through the tokenizer's template."""
    messages = row.get("messages") or ([{"role": "user", "content": row["prompt"]}] if chat_template else None)
    if messages is None:
        return tokenizer(row["prompt"], add_special_tokens=add_special_tokens)["input_ids"]
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the teacher's tokenizer has no chat template, needed for \"messages\" rows and "
                         "chat_template=true; give plain {\"prompt\": ...} rows with chat_template=false")
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # the template writes its own special tokens; add_special_tokens=true adds the tokenizer's BOS on top,
    # as LLaDA's generate.py does (tokenizer(text))
    return tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]


def decode(tokenizer, tokens: list[int], end_id: int | None) -> str:
    """The completion text: tokens up to the first end token, special tokens dropped."""
    if end_id is not None and end_id in tokens:
        tokens = tokens[: tokens.index(end_id)]
    return tokenizer.decode(tokens, skip_special_tokens=True)


def _accepts(fn, name: str) -> bool:
    return name in inspect.signature(fn).parameters


def complete(gen: Generation, prompts: list[list[int]], gen_length: int, batch_size: int, seed: int,
             progress: bool = True) -> list[tuple[list[int], float]]:
    """(answer tokens, nfe) for every prompt, in input order.

    Prompts are batched by length (so little padding is needed); shorter ones are left-padded and an
    attention mask (True at real tokens) goes to the sampler when it takes one, so a prompt's answer
    does not depend on its batch.
    """
    mask_id, pad_id = gen.denoiser.mask_id, gen.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = gen.tokenizer.eos_token_id
    device = next(gen.denoiser.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    takes_mask = _accepts(gen.sampler.sample, "attention_mask")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[tuple[list[int], float] | None] = [None] * len(prompts)
    with tqdm(total=len(prompts), unit="prompt", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(order), batch_size):
            rows = order[start: start + batch_size]
            width = max(len(prompts[i]) for i in rows)
            if any(len(prompts[i]) < width for i in rows) and pad_id is None:
                raise ValueError("the tokenizer has neither a pad nor an end token to left-pad prompts of different "
                                 "lengths with; use batch_size=1")
            canvas = torch.full((len(rows), width + gen_length), mask_id, dtype=torch.long)
            attention = torch.ones(canvas.shape, dtype=torch.bool)
            for r, i in enumerate(rows):
                pad = width - len(prompts[i])
                canvas[r, :pad], attention[r, :pad] = pad_id, False
                canvas[r, pad:width] = torch.tensor(prompts[i], dtype=torch.long)
            kwargs = {"attention_mask": attention.to(device)} if takes_mask and not attention.all() else {}
            out = gen.sampler.sample(gen.denoiser, gen.steps, prompt=canvas.to(device), generator=generator, **kwargs)
            answers = out.tokens[:, width:].tolist()
            nfe = out.nfe_per_row.tolist() if out.nfe_per_row is not None else [out.nfe] * len(rows)
            for r, i in enumerate(rows):
                results[i] = (answers[r], nfe[r])
            bar.update(len(rows))
    return results


# --- the app ------------------------------------------------------------------------------------
def write_lines(path: Path, lines: list[dict]) -> None:
    """All lines at once, under a temporary name renamed at the end (an interrupted run leaves no OUT)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    os.replace(tmp, path)


def generate(cfg: DictConfig) -> Path:
    """Read cfg.prompts, write cfg.out; bad input fails before the model loads."""
    out = Path(cfg.out)
    if out.exists():
        raise FileExistsError(f"out={out} already exists; choose another file or delete it first")
    check_request(cfg)
    rows = read_prompts(cfg.prompts)
    if cfg.get("threads"):
        torch.set_num_threads(cfg.threads)
    gen = build(cfg)
    ids = [prompt_ids(gen.tokenizer, row, cfg.chat_template, cfg.add_special_tokens) for row in rows]
    results = complete(gen, ids, cfg.gen_length, cfg.batch_size, cfg.seed)
    lines = [{"index": i, "completion": decode(gen.tokenizer, tokens, gen.end_id), "tokens": tokens, "nfe": nfe,
              "settings": gen.settings} for i, (tokens, nfe) in enumerate(results)]
    write_lines(out, lines)
    mean = sum(line["nfe"] for line in lines) / len(lines)
    print(f"wrote {len(lines)} completions to {out} (mean {mean:.2f} forward passes per answer)")
    return out


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="generate")
@user_errors
def run(cfg: DictConfig) -> None:
    generate(cfg)


def main() -> None:
    """Console entry point (fewstep-generate)."""
    check_override_keys("generate", sys.argv[1:])
    run()


if __name__ == "__main__":
    main()
