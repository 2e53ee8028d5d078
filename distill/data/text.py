"""Text corpora for transformers teachers: `datasets` files (text, json, parquet) or a hub name,
tokenized with the teacher's tokenizer and packed into fixed-length blocks (cached by datasets).

There is no true distribution for text, so the benchmark scores samples by entropy and, given a
judge causal LM (`eval.judge_path`), generative perplexity; the decoded samples are saved as text.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from distill.evaluation.benchmarks import TextBenchmark
from distill.data.sources import check_sizes
from distill.data.streams import shuffled_batches, train_loader
from teachers.hf import check_local_path

BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """The teacher's tokenizer; a model that ships its own code (LLaDA, Dream) needs trust_remote_code to
    read its config (default in the data configs: ${teacher.trust_remote_code})."""
    from transformers import AutoTokenizer

    if path is None or path == "???":
        raise ValueError("data.tokenizer is not set: give the teacher's path (the default is ${teacher.path})")
    check_local_path(path, "data.tokenizer")
    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def pack_blocks(token_lists: list[list[int]], seq_len: int) -> Tensor:
    """Concatenate every row's tokens and cut the stream into (N, seq_len) blocks (the tail is dropped)."""
    stream = [t for row in token_lists for t in row]
    n = len(stream) // seq_len
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


def _collate(blocks: list[Tensor]) -> dict[str, Tensor]:
    tokens = torch.stack(blocks)
    return {"tokens": tokens, "answer_mask": torch.ones_like(tokens, dtype=torch.bool)}


class TextDataModule(L.LightningDataModule):
    """Args:
        files: local text/json/jsonl/parquet/csv files (one builder per run), or null with `hub_name`.
        tokenizer: the teacher's tokenizer directory or hub id (default in config: ${teacher.path}).
        seq_len: tokens per block (the canvas length samplers generate).
        text_field: the column holding text in json/parquet/csv files.
        val_blocks: blocks held out for validation and the true-data row.
        trust_remote_code: passed to the tokenizer (LLaDA/Dream ship code; default ${teacher.trust_remote_code}).
    """

    def __init__(self, files: list[str] | None = None, tokenizer: str | None = None, seq_len: int = 128,
                 batch_size: int = 32, text_field: str = "text", val_blocks: int = 64, hub_name: str | None = None,
                 hub_config: str | None = None, seed: int = 0, trust_remote_code: bool = False) -> None:
        super().__init__()
        if not files and not hub_name:
            raise ValueError('data=text_files needs "data.files=[a.txt,...]" (or data.hub_name=NAME)')
        files = [str(Path(f).resolve()) for f in files or []]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise FileNotFoundError(f"data.files {missing} do not exist; give existing text/json/parquet files")
        suffixes = {Path(f).suffix for f in files}
        if files and (len(suffixes) != 1 or suffixes.pop() not in BUILDERS):
            raise ValueError(f"data.files must share one of the suffixes {sorted(BUILDERS)}, got {files}")
        if seq_len < 2:
            raise ValueError(f"data.seq_len must be >= 2, got {seq_len}")
        check_sizes(batch_size=batch_size, val_blocks=val_blocks)
        self.files, self.hub_name, self.hub_config = files, hub_name, hub_config
        self.tokenizer_path = tokenizer
        self.tokenizer = load_tokenizer(tokenizer, trust_remote_code)
        self._seq_len, self.batch_size, self.text_field = seq_len, batch_size, text_field
        self.val_blocks, self.seed = val_blocks, seed
        self.answer_mask = torch.ones(1, seq_len, dtype=torch.bool)
        self.blocks = self._load_blocks()
        if len(self.blocks) < 2:
            raise ValueError(f"the corpus {files or hub_name} gives {len(self.blocks)} block(s) of {seq_len} tokens: no "
                             "usable rows for training and validation; add text or lower data.seq_len")
        n_val = min(self.val_blocks, max(1, len(self.blocks) // 10))
        self.train_blocks, self.val = self.blocks[n_val:], self.blocks[:n_val]

    def _load_blocks(self) -> Tensor:
        import datasets

        if self.files:
            builder = BUILDERS[Path(self.files[0]).suffix]
            dataset = datasets.load_dataset(builder, data_files=self.files, split="train")
        else:
            dataset = datasets.load_dataset(self.hub_name, self.hub_config, split="train")
        if self.text_field not in dataset.column_names:
            raise ValueError(f"the corpus has no column {self.text_field!r} (columns: {dataset.column_names}); "
                             "set data.text_field")
        dataset = dataset.filter(lambda row: bool(row[self.text_field] and row[self.text_field].strip()))
        if len(dataset) == 0:
            raise ValueError(f"the corpus {self.files or self.hub_name} has no usable rows (every {self.text_field!r} "
                             "is empty); give files with text")
        tokenizer = self.tokenizer
        tokenized = dataset.map(lambda rows: {"ids": tokenizer(rows[self.text_field], add_special_tokens=False)["input_ids"]},
                                batched=True, remove_columns=dataset.column_names)
        seq_len = self._seq_len  # the whole stream in one batch: blocks cross row boundaries, only the tail is dropped
        packed = tokenized.map(lambda rows: {"block": pack_blocks(rows["ids"], seq_len).tolist()}, batched=True,
                               batch_size=None, remove_columns=["ids"])
        return torch.tensor(packed["block"], dtype=torch.long).view(-1, seq_len)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def seq_len(self) -> int:
        return self._seq_len

    def spec(self) -> dict:
        return {"kind": "text", "files": self.files, "hub_name": self.hub_name, "tokenizer": self.tokenizer_path,
                "seq_len": self._seq_len, "text_field": self.text_field}

    def train_dataloader(self) -> DataLoader:
        return train_loader(self, shuffled_batches(self.train_blocks, self.seed), self.answer_mask, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(list(self.val), batch_size=self.batch_size, collate_fn=_collate)

    def benchmark(self, judge_path: str | None = None, **_) -> TextBenchmark:
        return TextBenchmark(self.tokenizer, self.val, judge_path)
