"""Prompt/answer tasks for transformers teachers (GSM8K-style json): the prompt is given, the
answer span is generated, and a checker scores the decoded answer against the reference.

    data=prompts_json data.file=train.jsonl data.question_field=question data.answer_field=answer

Rows are laid out as [prompt (left-padded with the pad token to prompt_len) | answer (filled up
to answer_len with the end token: eos, else sep)]; answer_mask marks the answer span. The left
padding is not attended to: `attention_mask(tokens)` is False there (decoding and evaluation
pass it to the denoiser). With `chat_template=True` a question is the user turn of the tokenizer's chat template,
followed by the assistant's opening (add_generation_prompt), as Instruct models are run.
"""

from __future__ import annotations

import os
import re

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from distill.evaluation.benchmarks import PromptBenchmark
from distill.data.sources import check_sizes
from distill.data.streams import shuffled_batches, train_loader
from distill.data.text import load_tokenizer
from teachers.hf import left_padding_mask

NUMBER = re.compile(r"-?\d[\d,]*\.?\d*")


def last_number(text: str) -> str | None:
    """The last number in `text`, commas dropped (GSM8K answers end '#### 42')."""
    found = NUMBER.findall(text)
    return found[-1].replace(",", "").rstrip(".") if found else None


def exact(text: str) -> str:
    return text.strip()


CHECKERS = {"last_number": last_number, "exact": exact}


def read_rows(path: str, question_field: str, answer_field: str) -> list[tuple[str, str]]:
    """(question, answer) rows of a json (a list of objects) or jsonl file, read by `datasets`' json builder."""
    import datasets

    if not os.path.isfile(path):
        raise FileNotFoundError(f"data.file {path} does not exist; give a json or jsonl file of {question_field}/"
                                f"{answer_field} rows")
    try:
        dataset = datasets.load_dataset("json", data_files=path, split="train")
    except Exception as err:  # noqa: BLE001 - any parse failure gets the same advice
        raise ValueError(f"{path} cannot be read as json or jsonl ({type(err).__name__}); give a list of objects or "
                         "one object per line") from None
    usable = []
    if {question_field, answer_field} <= set(dataset.column_names):
        usable = [(q, a) for q, a in zip(dataset[question_field], dataset[answer_field]) if q and a]
    if not usable:
        raise ValueError(f"{path} has no usable rows: none has both {question_field!r} and {answer_field!r}; set "
                         "data.question_field / data.answer_field to its column names")
    return usable


class PromptsDataModule(L.LightningDataModule):
    """Args:
        file: json (a list) or jsonl rows with a question and an answer field.
        tokenizer: the teacher's tokenizer (default in config: ${teacher.path}).
        prompt_len, answer_len: token budget of each part (longer prompts keep their end).
        checker: "last_number" (GSM8K) or "exact".
        val_fraction: rows held out for evaluation (never trained on).
        trust_remote_code: passed to the tokenizer (LLaDA/Dream ship code; default ${teacher.trust_remote_code}).
        chat_template: apply the tokenizer's chat template to each question (a user message, then the
            generation prompt); for Instruct models (default true in the llada_* / dream_* experiments).
    """

    def __init__(self, file: str, tokenizer: str, question_field: str = "question", answer_field: str = "answer",
                 prompt_len: int = 64, answer_len: int = 64, checker: str = "last_number", batch_size: int = 8,
                 val_fraction: float = 0.1, seed: int = 0, trust_remote_code: bool = False,
                 chat_template: bool = False) -> None:
        super().__init__()
        if checker not in CHECKERS:
            raise ValueError(f"data.checker must be one of {sorted(CHECKERS)}, got {checker!r}")
        check_sizes(batch_size=batch_size, prompt_len=prompt_len, answer_len=answer_len)
        self.rows = read_rows(file, question_field, answer_field)
        self.file, self.tokenizer_path = os.path.abspath(file), tokenizer
        self.tokenizer = load_tokenizer(tokenizer, trust_remote_code)
        if self.tokenizer.pad_token_id is None:
            raise ValueError(f"the tokenizer at {tokenizer} has no pad token, needed to pad prompts and answers")
        if chat_template and not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"data.chat_template=true, but the tokenizer at {tokenizer} has no chat template; set "
                             "data.chat_template=false (base models) or use the Instruct model's tokenizer")
        self.chat_template = chat_template
        self.question_field, self.answer_field, self.checker = question_field, answer_field, checker
        self.prompt_len, self.answer_len, self.batch_size, self.seed = prompt_len, answer_len, batch_size, seed
        self.val_fraction = val_fraction
        self.tokens = torch.stack([self._layout(q, a) for q, a in self.rows])
        n_val = max(1, int(len(self.rows) * val_fraction))
        order = torch.randperm(len(self.rows), generator=torch.Generator().manual_seed(seed))
        self.val_index, self.train_index = order[:n_val], order[n_val:]
        if len(self.train_index) == 0:
            raise ValueError(f"{file} has {len(self.rows)} usable row(s): none left for training after holding out "
                             "validation rows; add rows or lower data.val_fraction")
        self.answer_mask = (torch.arange(prompt_len + answer_len) >= prompt_len)[None]

    def _layout(self, question: str, answer: str) -> Tensor:
        pad, end = self.tokenizer.pad_token_id, self.end_id
        q = self.tokenizer(self.prompt_text(question), add_special_tokens=False)["input_ids"][-self.prompt_len:]
        a = self.tokenizer(answer, add_special_tokens=False)["input_ids"][: self.answer_len]
        # answers end with end tokens (as LLaDA/Dream pad theirs with EOS), which samplers may draw
        return torch.tensor([pad] * (self.prompt_len - len(q)) + q + a + [end] * (self.answer_len - len(a)))

    def prompt_text(self, question: str) -> str:
        """The text a question is tokenized as: itself, or the chat template's user turn and assistant opening."""
        if not self.chat_template:
            return question
        return self.tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                                  tokenize=False)

    def attention_mask(self, tokens: Tensor) -> Tensor:
        """(B, L) bool: False on the left padding of each row's prompt (what the denoiser must not attend to)."""
        return left_padding_mask(tokens, self.tokenizer.pad_token_id, self.prompt_len)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def end_id(self) -> int:
        """The token answers are padded with (a decoder may stop at it)."""
        return next(i for i in (self.tokenizer.eos_token_id, self.tokenizer.sep_token_id, self.tokenizer.pad_token_id)
                    if i is not None)

    def split_spec(self) -> dict:
        """What fixes the held-out (evaluation) rows: a student trained on this file must be evaluated on them."""
        return {"val_fraction": self.val_fraction, "split_seed": self.seed}

    def references(self) -> dict[tuple, str]:
        """Reference answer text of every row, keyed by the row's prompt tokens."""
        return {tuple(t[: self.prompt_len].tolist()): a for t, (_, a) in zip(self.tokens, self.rows)}

    def check(self, tokens: Tensor) -> Tensor:
        """(K,) bool: the checked value of each decoded answer equals its reference's (rows of this file)."""
        references, check = self.references(), CHECKERS[self.checker]
        answers = self.tokenizer.batch_decode(tokens[:, self.prompt_len:].tolist(), skip_special_tokens=True)
        ok = []
        for prompt, answer in zip(tokens[:, : self.prompt_len].tolist(), answers):
            expected = check(references[tuple(prompt)])
            ok.append(expected is not None and check(answer) == expected)
        return torch.tensor(ok, dtype=torch.bool)

    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.answer_len

    def spec(self) -> dict:
        spec = {"kind": "prompts", "file": self.file, "tokenizer": self.tokenizer_path, "prompt_len": self.prompt_len,
                "answer_len": self.answer_len, "question_field": self.question_field, "answer_field": self.answer_field}
        return {**spec, "chat_template": True} if self.chat_template else spec  # older exports lack the key

    def train_dataloader(self) -> DataLoader:
        return train_loader(self, shuffled_batches(self.tokens[self.train_index], self.seed), self.answer_mask,
                            self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self.rows_loader(self.tokens[self.val_index])

    def rows_loader(self, tokens: Tensor) -> DataLoader:
        """Fixed rows in order (validation)."""
        mask = self.answer_mask.expand_as(tokens)
        return DataLoader([{"tokens": t, "answer_mask": m} for t, m in zip(tokens, mask)], batch_size=self.batch_size)

    def benchmark(self, **_) -> PromptBenchmark:
        held_out = self.tokens[self.val_index]
        references = {tuple(t[: self.prompt_len].tolist()): self.rows[i][1] for t, i in zip(held_out, self.val_index.tolist())}
        return PromptBenchmark(self.tokenizer, held_out, references, self.prompt_len, CHECKERS[self.checker])
