"""Self-generated distillation data on prompt files (dParallel on GSM8K-style json): a transformers
teacher's own deterministic answers to the training prompts, kept only when the file's checker
accepts them (e.g. the last number equals the reference's).

Three disjoint row sets of the file:

    held out (data.val_fraction, as PromptsDataModule)   evaluation prompts: never decoded here
    selection (data.select_fraction of the rest)          validation: the threshold is chosen on them
    train (the rest)                                      the teacher's verified answers are trained on

On disk (built once under a temporary name, then renamed; reused while the key matches):

    cache_dir/<key>/train/, validation/   datasets.Dataset: row (index in the file), tokens (prompt + answer)
    cache_dir/<key>/provenance.json       teacher path and SHA-256, sampler config, file SHA-256, split,
                                          prompts decoded and answers kept / rejected per split
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict, load_from_disk
from torch import Tensor, nn
from torch.utils.data import DataLoader

from distill.data.prompts import PromptsDataModule
from distill.data.self_generated import report_kept
from distill.data.streams import shuffled_batches, train_loader
from teachers.files import atomic_directory
from teachers.samplers.blockwise import BlockwiseSampler
from teachers.saved import sha256_file

FORMAT = "fewstep-self-generated-prompts/1"


@torch.no_grad()
def decode_rows(teacher: nn.Module, canvases: Tensor, sampler, steps: int, batch_size: int,
                device: torch.device | str = "cpu", attention_mask: Tensor | None = None) -> Tensor:
    """The teacher's completions (K, L) of `canvases` (answer span = mask id), `batch_size` rows at a time;
    `attention_mask` (K, L) marks the prompts' left padding (False), which the teacher must not attend to."""
    masks = attention_mask.split(batch_size) if attention_mask is not None else [None] * len(canvases.split(batch_size))
    outputs = [sampler.sample(teacher, steps, prompt=chunk.to(device),
                              attention_mask=None if mask is None else mask.to(device)).tokens.cpu()
               for chunk, mask in zip(canvases.split(batch_size), masks)]
    return torch.cat(outputs) if outputs else canvases.clone()


class SelfGeneratedPromptsDataModule(PromptsDataModule):
    """Prompt rows whose training answers are the teacher's own verified completions.

    The teacher is handed over with `use_teacher` (fewstep-train does this), so the data are decoded by
    the distillation teacher itself, on the device the trainer runs on, and only once.

    Args (besides PromptsDataModule's):
        cache_dir: where generated data sets are kept and reused.
        select_fraction: share of the non-held-out rows kept for choosing the threshold (validation).
        temperature, order, block_size: the teacher's decoding (0 / left_to_right: argmax, one token per
            step; order=confidence is LLaDA's low-confidence remasking inside blocks).
        decode_batch_size: rows decoded at once.
    """

    def __init__(self, cache_dir: str = "runs/self_generated", select_fraction: float = 0.1, temperature: float = 0.0,
                 order: str = "left_to_right", block_size: int = 32, decode_batch_size: int = 64, **prompts) -> None:
        super().__init__(**prompts)
        n_select = max(1, int(len(self.train_index) * select_fraction))
        if n_select >= len(self.train_index):
            raise ValueError(f"{self.file} has {len(self.train_index)} training row(s): none left after the "
                             f"{n_select} selection row(s); add rows or lower data.select_fraction")
        self.select_index, self.fit_index = self.train_index[:n_select], self.train_index[n_select:]
        self.cache_dir, self.select_fraction = cache_dir, select_fraction
        self.sampler = BlockwiseSampler(temperature=temperature, block_size=block_size, order=order)
        self.decode_batch_size = decode_batch_size
        self.teacher: nn.Module | None = None
        self.data: DatasetDict | None = None
        self.provenance: dict | None = None

    def use_teacher(self, teacher: nn.Module) -> None:
        self.__dict__["teacher"] = teacher  # not a submodule of anything; the objective holds it frozen

    def canvases(self, index: Tensor, mask_id: int) -> Tensor:
        rows = self.tokens[index].clone()
        rows[:, self.prompt_len:] = mask_id
        return rows

    def selection_canvases(self, mask_id: int) -> tuple[Tensor, Tensor]:
        """The validation prompts with their answers masked (K, L), and their weights (K,) (uniform)."""
        return self.canvases(self.select_index, mask_id), torch.ones(len(self.select_index))

    def _provenance(self) -> dict:
        teacher = self.teacher
        return {
            "format": FORMAT,
            "teacher_path": getattr(teacher, "path", None),
            "teacher_sha256": getattr(teacher, "sha256", None),
            "sampler": {"class": type(self.sampler).__name__, "temperature": self.sampler.temperature,
                        "block_size": self.sampler.block_size, "order": self.sampler.order, "steps": self.answer_len},
            "data": self.spec(),
            "file_sha256": sha256_file(self.file),
            "prompt_split": {**self.split_spec(), "select_fraction": self.select_fraction},
            "checker": self.checker,
        }

    def load(self) -> DatasetDict:
        if self.data is not None:
            return self.data
        if self.teacher is None:
            raise ValueError("self-generated prompt data need the teacher: call use_teacher(teacher) first "
                             "(fewstep-train does)")
        provenance = self._provenance()
        keyed = {k: v for k, v in provenance.items() if k != "teacher_path" or provenance["teacher_sha256"] is None}
        path = Path(self.cache_dir) / hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]
        if not (path / "provenance.json").is_file():
            self._generate(path, provenance)
        self.data, self.provenance = load_from_disk(str(path)), json.loads((path / "provenance.json").read_text())
        report_kept(path, self.data, self.provenance, hint=" (check data.checker and the prompt format)")
        return self.data

    def _generate(self, path: Path, provenance: dict) -> None:
        teacher = self.teacher
        trainer = getattr(self, "trainer", None)
        device = trainer.strategy.root_device if trainer is not None else next(teacher.parameters()).device
        teacher.to(device)
        start = time.perf_counter()
        data, counts = {}, {}
        for name, index in (("train", self.fit_index), ("validation", self.select_index)):
            canvases = self.canvases(index, teacher.mask_id)
            tokens = decode_rows(teacher, canvases, self.sampler, self.answer_len, self.decode_batch_size, device,
                                 self.attention_mask(canvases))
            ok = self.check(tokens)
            data[name] = Dataset.from_dict({"row": index[ok].tolist(), "tokens": tokens[ok].tolist()})
            counts[name] = {"prompts": len(index), "kept": int(ok.sum()), "rejected": int((~ok).sum())}
        provenance.update(counts=counts, generation_s=round(time.perf_counter() - start, 3),
                          created=time.strftime("%Y-%m-%dT%H:%M:%S"),
                          note="held-out rows are never decoded; only answers the checker accepts are kept")
        with atomic_directory(path, done_marker="provenance.json") as tmp:  # another writer may finish first
            DatasetDict(data).save_to_disk(str(tmp))
            (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2))

    def prepare_data(self) -> None:
        self.load()

    def setup(self, stage: str | None = None) -> None:
        self.load()

    def _tokens(self, split: str) -> Tensor:
        rows = self.load()[split]
        if len(rows) == 0:
            return torch.empty(0, self.seq_len, dtype=torch.long)
        return torch.tensor(rows["tokens"], dtype=torch.long)

    def train_dataloader(self) -> DataLoader:
        return train_loader(self, shuffled_batches(self._tokens("train"), self.seed), self.answer_mask, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self.rows_loader(self._tokens("validation"))
